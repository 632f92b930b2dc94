"""`pipeline push` and "hf-hub:ORG/NAME" runs, against a fake hub on 127.0.0.1."""

import base64
import json
import re
import urllib.parse

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dinov2clip.pipeline import app
from tests.helpers import hub_here
from tests.test_data_evalsets import COMMIT, FakeHub


class FakeModelHub(FakeHub):
    """The eval-set fake hub, plus model repos and the routes push uses: create a repo, check
    the card's YAML, preupload (every file goes as a regular blob), commit (ndjson, base64)."""

    API = r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)(/.*)?"
    RESOLVE = r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"
    MISSING = (b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

    def __init__(self):
        super().__init__({})
        hub = self
        self.server.RequestHandlerClass.do_POST = lambda h: hub.post(h)

    def post(self, h) -> None:
        path = urllib.parse.urlsplit(h.path).path
        self.requests.append(("POST", path))
        data = h.rfile.read(int(h.headers.get("Content-Length", 0)))
        ok = {"Content-Type": "application/json"}
        if path == "/api/repos/create":
            req = json.loads(data)
            repo = f"{req['organization']}/{req['name']}"
            self.repos.setdefault(repo, {})
            return self.send(h, 200, json.dumps({"url": f"{self.url}/{repo}"}).encode(), ok, True)
        if path == "/api/validate-yaml":  # the client checks a README's metadata first
            self.validated = json.loads(data)["content"]
            return self.send(h, 200, b'{"errors": [], "warnings": []}', ok, True)
        pre = re.fullmatch(r"/api/models/([^/]+/[^/]+)/preupload/([^/]+)", path)
        if pre:
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                     for f in json.loads(data)["files"]]
            return self.send(h, 200, json.dumps({"files": files}).encode(), ok, True)
        commit = re.fullmatch(r"/api/models/([^/]+/[^/]+)/commit/([^/]+)", path)
        if commit and commit[1] in self.repos:
            for line in data.splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    value = item["value"]
                    self.repos[commit[1]][value["path"]] = base64.b64decode(value["content"])
            reply = {"commitUrl": f"{self.url}/{commit[1]}/commit/{COMMIT}", "commitOid": COMMIT}
            return self.send(h, 200, json.dumps(reply).encode(), ok, True)
        self.send(h, 404, b'{"error": "not found"}', {}, True)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeModelHub()
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # A cache of this test's own, so no snapshot of an earlier session (same fake commit, other
    # paths) is ever found.
    hub_here(monkeypatch, tmp_path / "hf-home" / "hub", fake.url)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    yield fake
    fake.close()


def test_push_then_load_back_gives_the_local_runs_embeddings(demo_run, demo_model, hub, tmp_path):
    from dinov2clip import DinoV2Clip
    from tests.conftest import write_shape_classes

    _, art = demo_run
    run = art / "runs" / "demo"
    result = CliRunner().invoke(app, ["push", "--run", str(run), "--repo", "me/shapes-proj"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"me/shapes-proj/commit/{COMMIT}")
    pushed = hub.repos["me/shapes-proj"]
    assert sorted(pushed) == ["README.md", "config.json", "eval/report.md", "eval/results.json",
                              "model.safetensors", "projector.json"]
    assert pushed["model.safetensors"] == (run / "model.safetensors").read_bytes()
    card = pushed["README.md"].decode()
    assert hub.validated == card and card.startswith("---\nlibrary_name: dinov2-clip\n")
    for text in ("| backbone |", "tiny-dinov2", "| teacher | open_clip", "| data | `shapes`",
                 "| recipe | pooling = token_mean", 'from_pretrained("hf-hub:me/shapes-proj")',
                 "## Evaluation", (run / "eval" / "report.md").read_text().splitlines()[0]):
        assert text in card

    pulled = DinoV2Clip.from_pretrained("hf-hub:me/shapes-proj", device="cpu", clip_image=True)
    images = sorted(write_shape_classes(tmp_path / "imgs", per_class=2).rglob("*.png"))
    torch.testing.assert_close(pulled.encode_image(images), demo_model.encode_image(images))
    texts = ["a red circle", "a square"]
    torch.testing.assert_close(pulled.encode_text(texts), demo_model.encode_text(texts))
    assert ("GET", f"/me/shapes-proj/resolve/{COMMIT}/model.safetensors") in hub.requests


def test_push_takes_a_run_name_and_the_pushed_config_names_its_embeddings(demo_run, hub):
    _, art = demo_run
    result = CliRunner().invoke(app, ["push", "--run", "demo", "--artifacts", str(art),
                                      "--repo", "me/by-name"])
    assert result.exit_code == 0, result.output
    pushed = json.loads(hub.repos["me/by-name"]["config.json"])
    assert pushed["embeddings"]["tag"] == "tiny" and pushed["embeddings"]["models_hash"]
    assert "embeddings `tiny`" in hub.repos["me/by-name"]["README.md"].decode()


def test_index_and_serve_take_a_hub_run(demo_run, hub, tmp_path):
    from dinov2clip.config import UseOptions
    from dinov2clip.hub import push
    from dinov2clip.index import build_index
    from dinov2clip.serve import SearchEngine
    from tests.conftest import write_shape_classes

    _, art = demo_run
    push(run=art / "runs" / "demo", repo="me/p")
    root = write_shape_classes(tmp_path / "imgs", per_class=2)
    summary = build_index(run="hf-hub:me/p", images=root, out_dir=tmp_path / "idx",
                          options=UseOptions(device="cpu", num_workers=0))
    assert summary["run_dir"] == "hf-hub:me/p" and summary["n_images"] == 6
    engine = SearchEngine(tmp_path / "idx", device="cpu")
    try:
        assert engine.info()["run"] == "hf-hub:me/p"
        scores, ids = engine.search_text("a circle", 3).result(timeout=60)
        assert len(ids) == 3 and np.all(np.diff(scores) <= 0)
    finally:
        engine.close()


def test_hub_errors_are_one_line(demo_run, hub, tmp_path):
    from dinov2clip import DinoV2Clip
    from dinov2clip.config import ConfigError

    _, art = demo_run
    with pytest.raises(ConfigError, match=r"cannot fetch me/absent from the Hugging Face hub"):
        DinoV2Clip.from_pretrained("hf-hub:me/absent", device="cpu")
    runner = CliRunner()
    bad_repo = runner.invoke(app, ["push", "--run", str(art / "runs" / "demo"), "--repo", "x"])
    assert bad_repo.exit_code == 2 and "error: --repo must be ORG/NAME, got 'x'" in bad_repo.output
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text(
        (art / "runs" / "demo" / "config.json").read_text())
    half = runner.invoke(app, ["push", "--run", str(tmp_path / "half"), "--repo", "me/h"])
    assert half.exit_code == 2 and "projector.json missing" in half.output
    no_out = runner.invoke(app, ["index", "--run", "hf-hub:me/h", "--images", str(tmp_path)])
    assert no_out.exit_code == 2 and "--out is needed with a hub run" in no_out.output


def test_push_without_a_token_says_so_before_any_upload(demo_run, tmp_path, monkeypatch):
    fake = FakeModelHub()
    try:
        # hub_here: HF_TOKEN empty and a token file that does not exist, so get_token() is None.
        hub_here(monkeypatch, tmp_path / "hf-home" / "hub", fake.url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
        _, art = demo_run
        result = CliRunner().invoke(app, ["push", "--run", str(art / "runs" / "demo"),
                                          "--repo", "me/no-token"])
        assert result.exit_code == 2, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert errors == [result.output.strip()] and "no Hugging Face token" in errors[0]
        assert "HF_TOKEN" in errors[0] and "Traceback" not in result.output
        assert fake.requests == [] and fake.repos == {}  # nothing was sent
    finally:
        fake.close()
