"""Projectors on the Hugging Face hub: `pipeline push`, and runs named "hf-hub:ORG/NAME".

A pushed repo holds what DinoV2Clip.from_pretrained reads from a run directory (projector.json,
model.safetensors, the resolved config.json), the eval results, and a model card naming the
backbone, teacher, data and recipe. The backbone and teacher themselves are not copied: the
config names them, and they load from wherever they came from (the hub, open_clip).

HF_ENDPOINT is read at call time, so a mirror (or the tests' fake hub) set after import is used.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from dinov2clip.config import Config, ConfigError
from dinov2clip.config.values import TRAINED_DENSE_HEADS
from dinov2clip.io_utils import read_json
from dinov2clip.store import RunDir
from dinov2clip.store.remote import (
    HUB_PREFIX,
    MODEL_CARD,
    hub_endpoint,
    hub_errors,
    hub_reason,
)

log = logging.getLogger(__name__)


def dense_heads(run_dir: RunDir) -> list[Path]:
    """The files of every trained dense head the run holds (config and weights, both)."""
    found = []
    for head in TRAINED_DENSE_HEADS:
        pair = [run_dir.dense_head_config(head), run_dir.dense_head_weights(head)]
        if all(p.is_file() for p in pair):
            found += pair
    return found


def push(*, run: str | Path, repo: str, private: bool = False, root: Path | None = None) -> str:
    """Upload a run's projector, config, eval results and model card to repo; the commit URL.
    run: a run directory, or a run name under root/runs."""
    from huggingface_hub import HfApi

    run_dir = RunDir.resolve(run, root)
    cfg = run_dir.read_config()
    weights = (run_dir.projector_config, run_dir.weights, run_dir.config)
    for path in weights:
        if not path.is_file():
            raise ConfigError(f"{run_dir}: {path.name} missing; train the run before pushing it")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"--repo must be ORG/NAME, got {repo!r}")
    _require_token()
    with tempfile.TemporaryDirectory(prefix="dinov2clip-push-") as tmp:
        stage = Path(tmp)
        pushed = RunDir(stage)  # the repo is laid out as a run directory, for RunDir.resolve
        for path in (*weights, *dense_heads(run_dir)):
            shutil.copyfile(path, pushed.path / path.name)
        pushed.eval_dir.mkdir()
        for path in (run_dir.results, run_dir.report):
            if path.is_file():
                shutil.copyfile(path, pushed.eval_dir / path.name)
        (stage / MODEL_CARD).write_text(model_card(run_dir, repo, cfg))
        api = HfApi(endpoint=hub_endpoint())
        try:
            api.create_repo(repo, private=private, exist_ok=True)
            commit = api.upload_folder(folder_path=stage, repo_id=repo,
                                       commit_message=f"dinov2-clip projector: run {run_dir.name}")
        except hub_errors() as err:
            raise ConfigError(f"cannot push to {repo} on the Hugging Face hub ({hub_reason(err)})"
                              ) from None
    log.info("pushed %s to %s (load it with DinoV2Clip.from_pretrained(%r))", run_dir, repo,
             HUB_PREFIX + repo)
    return str(commit.commit_url)


def _require_token() -> None:
    """Without a token the hub refuses the upload with a confusing error (or a DNS one, offline):
    say what is missing before anything is sent."""
    from huggingface_hub import get_token

    if not get_token():  # HF_TOKEN, else the token `hf auth login` saved
        raise ConfigError("no Hugging Face token: set HF_TOKEN or run `hf auth login` (a token "
                          "with write access) before pushing")


def model_card(run_dir: RunDir, repo: str, cfg: Config) -> str:
    """README.md: what the projector maps from and to, what it was trained on and how, and how
    well it does (the run's eval report, when it was evaluated)."""
    ex, tr = cfg.extract, cfg.train
    proj = read_json(run_dir.projector_config)
    report = run_dir.report
    evaluation = report.read_text() if report.is_file() else "Not evaluated yet.\n"
    base = ex.dino_model if not Path(ex.dino_model).exists() else None
    front = ["---", "library_name: dinov2-clip", "tags: [dinov2, clip, image-text-retrieval]"]
    front += [f"base_model: {base}"] if base else []
    recipe = ", ".join(f"{k} = {getattr(tr, k)}"
                       for k in ("pooling", "loss", "epochs", "batch_size", "lr"))
    return "\n".join([
        *front, "---", "",
        f"# {repo.split('/')[1]}", "",
        "A projector from frozen DINOv2 image embeddings into CLIP's image-text space, trained "
        "with dinov2-clip on cached embeddings: query DINOv2 with CLIP text.", "",
        "| | |", "|---|---|",
        f"| backbone | `{ex.dino_model}` |",
        (f"| teacher | open_clip `{ex.clip_model}`, pretrained `{ex.clip_pretrained}` |"
         if ex.clip_model else "| teacher | none (two towers over a frozen text encoder) |"),
        f"| data | `{tr.dataset}`, embeddings `{run_dir.trained_on().tag}` (extracted: "
        f"{', '.join(ex.datasets)}) |",
        f"| recipe | {recipe} |",
        f"| projector | {proj.get('kind', '')} {proj.get('in_dim')} -> {proj.get('out_dim')}, "
        f"width {proj.get('width', '')}, depth {proj.get('depth', '')} |", "",
        "## Use", "",
        "```python",
        "from dinov2clip import DinoV2Clip",
        f'model = DinoV2Clip.from_pretrained("{HUB_PREFIX}{repo}")',
        'model.similarity(["photo.jpg"], ["a dog", "a cat"])',
        "```", "",
        "or serve a photo collection: `pipeline index --run "
        f"{HUB_PREFIX}{repo} --images photos/ --out index/photos`, then "
        "`pipeline serve --index index/photos`.", "",
        "## Evaluation", "", evaluation])
