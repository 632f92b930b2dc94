"""Eval sets by name from a fake Hugging Face hub on 127.0.0.1, and from local directories."""

import hashlib
import http.server
import io
import json
import logging
import re
import tarfile
import threading
import urllib.parse

import pytest
from PIL import Image

from dinov2clip import data
from dinov2clip.config import ConfigError, load_config
from dinov2clip.data.evalsets import local_shards
from dinov2clip.data.synthetic import write_eval_set
from dinov2clip.formats.webdataset import read_shard

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def eval_set_files(tmp_path, name, n_images, seed):
    """{repo path: bytes} of a CLIP_benchmark-style repo: test/N.tar plus files not to fetch."""
    write_eval_set(tmp_path / name, n_images, 3, 64, seed, shard_size=4)
    files = {f"test/{p.name}": p.read_bytes() for p in (tmp_path / name / "test").glob("*.tar")}
    files["test/nshards.txt"] = str(len(files)).encode()
    files["train/0.tar"] = b"not to be fetched"
    files["README.md"] = b"# card"
    return files


class FakeHub:
    """The hub routes snapshot_download uses: repo info, tree listing, HEAD and GET of files.
    The routes are a dataset repo's; a subclass names another kind's in API, RESOLVE, MISSING."""

    API = r"/api/datasets/([^/]+/[^/]+)/(revision|tree)/([^/]+)"
    RESOLVE = r"/datasets/([^/]+/[^/]+)/resolve/([^/]+)/(.+)"
    MISSING: tuple[bytes, dict] = (b'{"error": "not found"}', {})  # body, headers of a 404

    def __init__(self, repos: dict[str, dict[str, bytes]]):
        self.repos, self.requests = repos, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hub.respond(self, body=True)

            def do_HEAD(self):
                hub.respond(self, body=False)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def respond(self, h, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(h.path).path)
        self.requests.append((h.command, path))
        api, resolve = re.fullmatch(self.API, path), re.fullmatch(self.RESOLVE, path)
        repo = self.repos.get((api or resolve)[1]) if (api or resolve) else None
        if repo is None or (resolve and resolve[3] not in repo):
            return self.send(h, 404, *self.MISSING, body)
        if resolve:
            blob = repo[resolve[3]]
            headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(blob).hexdigest()}"'}
            return self.send(h, 200, blob, headers, body)
        if api[2] == "revision":
            info = {"id": api[1], "sha": COMMIT, "siblings": [{"rfilename": p} for p in repo]}
        else:
            info = [{"type": "file", "path": p, "size": len(b), "oid": hashlib.sha1(b).hexdigest()}
                    for p, b in repo.items()]
        self.send(h, 200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    @staticmethod
    def send(h, status: int, payload: bytes, headers: dict, body: bool) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(payload))}.items():
            h.send_header(k, v)
        h.end_headers()
        if body:
            h.wfile.write(payload)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hub(tmp_path, monkeypatch):
    fake = FakeHub({"clip-benchmark/wds_mscoco_captions": eval_set_files(tmp_path, "coco", 6, 1),
                    "clip-benchmark/wds_flickr8k": eval_set_files(tmp_path, "f8k", 3, 2)})
    monkeypatch.setenv("HF_ENDPOINT", fake.url)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield fake
    fake.close()


def config(tmp_path, eval_sets: str, extra: str = ""):
    path = tmp_path / "c.toml"
    path.write_text(f'artifacts = "{tmp_path / "artifacts"}"\n{extra}\n'
                    f"[data.synthetic]\ntiny_models = false\n[data.eval_sets]\n{eval_sets}\n")
    return load_config(path)


def test_known_sets_come_from_the_clip_benchmark_repos(tmp_path, hub, caplog):
    cfg = config(tmp_path, 'mscoco = { source = "hf" }\nflickr8k = {}\n')
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    for name, repo in [("mscoco", "wds_mscoco_captions"), ("flickr8k", "wds_flickr8k")]:
        test = cfg.root / "evalsets" / name / "test"
        files = hub.repos[f"clip-benchmark/{repo}"]
        assert sorted(p.name for p in test.iterdir()) == sorted(
            p.split("/")[1] for p in files if p.startswith("test/"))
        for p in test.glob("*.tar"):
            assert p.read_bytes() == files[f"test/{p.name}"]
        assert not (cfg.root / "evalsets" / name / "train").exists()
        record = json.loads((cfg.root / "evalsets" / name / "source.json").read_text())
        assert record["source"] == {"source": "hf", "repo": f"clip-benchmark/{repo}",
                                    "revision": "main"}
        assert record["commit"] == COMMIT
    fetched = {p for m, p in hub.requests if "/resolve/" in p and m == "GET"}
    base = f"/datasets/clip-benchmark/{{}}/resolve/{COMMIT}/test/"
    assert fetched == {base.format("wds_mscoco_captions") + n for n in ("0.tar", "1.tar",
                                                                        "nshards.txt")} | {
        base.format("wds_flickr8k") + n for n in ("0.tar", "nshards.txt")}
    assert "eval set mscoco: installed, 6 images, 15 captions in 2 shards from " \
           "clip-benchmark/wds_mscoco_captions@0123456789; skipped: none" in caplog.text
    assert "eval set flickr8k: installed, 3 images, 8 captions in 1 shards" in caplog.text

    hub.requests.clear()  # a re-run finds both installed and does not touch the network
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    assert hub.requests == [] and "eval set mscoco: already installed, 6 images" in caplog.text


def test_unknown_set_name_lists_the_known_ones(tmp_path, hub):
    with pytest.raises(ConfigError, match=r"data.eval_sets.coco: unknown eval set 'coco' \(known "
                                          r"on the hub: mscoco, flickr30k, flickr8k\)"):
        data.run(config(tmp_path, "coco = {}"))
    # Any other clip-benchmark-format repo can be named outright.
    cfg = config(tmp_path, 'coco = { repo = "clip-benchmark/wds_mscoco_captions" }')
    data.run(cfg)
    assert len(list((cfg.root / "evalsets" / "coco" / "test").glob("*.tar"))) == 2


@pytest.mark.parametrize("spec, message", [
    ('{ source = "s3" }',
     r"'data.eval_sets.mscoco.source' must be one of hf, local, karpathy, got 's3'"),
    ('{ path = "/x" }', r"data.eval_sets.mscoco.path is not used with source = 'hf' \(it reads: "
                        r"repo, revision\)"),
    ('{ source = "local" }', r"data.eval_sets.mscoco.path is required with source = 'local'"),
    ('{ source = "local", path = "/nowhere" }', r"mscoco.path: /nowhere is not a directory"),
    ('{ source = "karpathy", path = "d.json" }', r"mscoco.image_root is required"),
    ('{ repo = "clip-benchmark/absent" }', r"cannot fetch clip-benchmark/absent@main from the "
                                           r"Hugging Face hub \(.*404"),
])
def test_bad_eval_set_specs_are_one_line_errors(tmp_path, hub, spec, message):
    with pytest.raises(ConfigError, match=message):
        data.run(config(tmp_path, f"mscoco = {spec}"))


def test_unreachable_hub_suggests_a_local_copy(tmp_path, hub, monkeypatch):
    hub.close()
    with pytest.raises(ConfigError, match="cannot fetch clip-benchmark/wds_flickr8k@main .* "
                                          "source = 'local'"):
        data.run(config(tmp_path, "flickr8k = {}"))


def test_local_sets_are_copied_and_checked(tmp_path, caplog):
    write_eval_set(tmp_path / "mine", 5, 2, 64, seed=3, shard_size=2)
    cfg = config(tmp_path, f'mine = {{ source = "local", path = "{tmp_path / "mine"}" }}')
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    test = cfg.root / "evalsets" / "mine" / "test"
    assert sorted(p.name for p in test.glob("*.tar")) == ["0.tar", "1.tar", "2.tar"]
    assert (test / "2.tar").read_bytes() == (tmp_path / "mine" / "test" / "2.tar").read_bytes()
    assert f"eval set mine: installed, 5 images, 8 captions in 3 shards from {tmp_path}/mine" \
        in caplog.text

    # The same name from another source stops rather than mixing two sets in one directory.
    write_eval_set(tmp_path / "other", 2, 2, 64, seed=4)
    other = config(tmp_path, f'mine = {{ source = "local", path = "{tmp_path / "other"}" }}')
    with pytest.raises(ConfigError, match=r"evalsets/mine was built from source local "
                                          r"\(path=.*/mine\); delete it to rebuild"):
        data.run(other)


def test_a_local_dir_in_another_format_is_refused(tmp_path):
    (tmp_path / "wrong").mkdir()
    with tarfile.open(tmp_path / "wrong" / "0.tar", "w") as tar:
        (tmp_path / "a.jpg").write_bytes(b"x")
        tar.add(tmp_path / "a.jpg", arcname="s0.jpg")  # an image with no captions
    with pytest.raises(ConfigError, match=r"no sample in .* has an image .* and a .txt of "
                                          r"captions \(found extensions: jpg\)"):
        data.run(config(tmp_path, f'w = {{ source = "local", path = "{tmp_path / "wrong"}" }}'))


def test_eval_set_tables_are_checked_and_settable_from_the_command_line(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[data.eval_sets]\nmscoco = { sorce = "hf" }\n')
    with pytest.raises(ConfigError, match=r"unknown key 'data.eval_sets.mscoco.sorce' \(known: "
                                          r"image_root, path, repo, revision, shard_size, "
                                          r"source, split\)"):
        load_config(path)
    path.write_text("")
    cfg = load_config(path, ["data.eval_sets.flickr8k.source=hf",
                             "data.eval_sets.v.source=karpathy", "data.eval_sets.v.split=val"])
    assert cfg.data.eval_sets["flickr8k"].source == "hf"
    assert (cfg.data.eval_sets["v"].source, cfg.data.eval_sets["v"].split) == ("karpathy", "val")


def retar_with_names(src, dest, rename):
    """dest: src's members renamed, as `tar -C dir .` (./s0.jpg) or a dotted folder would."""
    with tarfile.open(src) as tin, tarfile.open(dest, "w") as tout:
        for member in tin:
            data = tin.extractfile(member).read()
            member.name = rename(member.name)
            tout.addfile(member, io.BytesIO(data))


def test_member_names_with_dot_slash_or_dotted_folders_are_read_as_extract_reads_them(tmp_path):
    write_eval_set(tmp_path / "made", 4, 2, 64, seed=5, shard_size=2)
    (tmp_path / "mine" / "test").mkdir(parents=True)
    for tar, rename in [("0.tar", lambda n: f"./{n}"), ("1.tar", lambda n: f"./v1.2/{n}")]:
        retar_with_names(tmp_path / "made" / "test" / tar, tmp_path / "mine" / "test" / tar,
                         rename)
    cfg = config(tmp_path, f'mine = {{ source = "local", path = "{tmp_path / "mine"}" }}')
    data.run(cfg)
    record = json.loads((cfg.root / "evalsets" / "mine" / "source.json").read_text())
    assert (record["n_images"], record["n_captions"]) == (4, 6)
    keys = [s.key for tar in ("0.tar", "1.tar") for s in read_shard(
        cfg.root / "evalsets" / "mine" / "test" / tar, multi_caption=True).samples]
    assert keys == ["s0000000", "s0000001", "v1.2/s0000002", "v1.2/s0000003"]


def test_shards_are_ordered_by_number_as_clip_benchmark_reads_them(tmp_path):
    write_eval_set(tmp_path / "mine", 12, 1, 32, seed=6, shard_size=1)  # 0.tar ... 11.tar
    shards = local_shards("mine", tmp_path / "mine")
    assert [p.stem for p in shards] == [str(i) for i in range(12)]


def test_empty_caption_lines_and_uncaptioned_images_are_counted(tmp_path, caplog):
    (tmp_path / "mine" / "test").mkdir(parents=True)
    jpeg = tmp_path / "x.jpg"
    Image.new("RGB", (8, 8)).save(jpeg)
    members = [("a.jpg", jpeg.read_bytes()), ("a.txt", b"one\n\n  \ntwo\n"),  # 2 empty lines
               ("b.jpg", jpeg.read_bytes()), ("b.txt", b" \n\n"),  # 2 empty: no caption left
               ("c.jpg", jpeg.read_bytes()), ("c.txt", b"three\n\t\n")]  # 1 empty
    with tarfile.open(tmp_path / "mine" / "test" / "0.tar", "w") as tar:
        for name, payload in members:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    cfg = config(tmp_path, f'mine = {{ source = "local", path = "{tmp_path / "mine"}" }}')
    with caplog.at_level(logging.INFO, logger="dinov2clip"):
        data.run(cfg)
    assert "eval set mine: installed, 2 images, 3 captions in 1 shards from " in caplog.text
    assert "; skipped: none; 5 empty caption lines dropped; 1 images with no caption, which " \
           "extract skips" in caplog.text
    record = json.loads((cfg.root / "evalsets" / "mine" / "source.json").read_text())
    assert (record["empty_caption_lines"], record["images_without_captions"]) == (5, 1)
    contents = read_shard(cfg.root / "evalsets" / "mine" / "test" / "0.tar", multi_caption=True)
    assert contents.dropped == {"empty_caption_lines": 5}  # extract counts the same lines
    assert contents.skipped == {"empty_caption": 1}
    assert [s.captions for s in contents.samples] == [["one", "two"], ["three"]]
