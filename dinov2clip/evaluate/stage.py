"""The eval stage from files to files: embeddings + a run's projector in, eval/ reports out."""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import torch

from dinov2clip.config import Config, ConfigError, git_sha, read_run_config, to_dict
from dinov2clip.device import resolve_device
from dinov2clip.evaluate.compute import SetEval
from dinov2clip.evaluate.embeddings import project_pooled
from dinov2clip.evaluate.report import seed_comparison, summary
from dinov2clip.models.projector import Projector
from dinov2clip.store import EmbeddingSet, EvalEmbeddings, load_eval_embeddings, pool

log = logging.getLogger(__name__)
KNOWN_SETS = ("mscoco", "flickr30k", "flickr8k")  # CLIP_benchmark's; any extracted set also works
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.safetensors")


class EvalInputs:
    """Everything an eval needs, checked before any number is computed."""

    def __init__(self, cfg: Config):
        e = cfg.eval
        self.run_name = e.run or cfg.train.run
        self.run_dir = cfg.root / "runs" / self.run_name
        if not self.run_dir.is_dir():
            raise ConfigError(f"run directory not found: {self.run_dir} (train it first, or "
                              "set eval.run)")
        self.train_cfg = read_run_config(self.run_dir).train  # how the projector was trained
        if not (self.run_dir / "model.safetensors").is_file():
            raise ConfigError(f"run {self.run_dir} has no weights: model.safetensors missing "
                              "(did training finish an epoch?)")
        from dinov2clip.store import embeddings_tag

        self.tag = self.train_cfg.tag or embeddings_tag(cfg.extract)
        if not e.sets:
            raise ConfigError("eval.sets is empty: name at least one eval set")
        if not e.ks or min(e.ks) < 1:
            raise ConfigError(f"eval.ks must be positive integers, got {e.ks}")
        self.ks = sorted(set(e.ks))
        self.set_dirs = {name: self._set_dir(cfg, name) for name in e.sets}
        self.device = resolve_device(e.device, "eval.device")  # where the projector runs and ranks

    def projector(self, filename: str = "model.safetensors") -> Projector:
        return Projector.from_pretrained(self.run_dir, filename=filename, device=self.device)

    def _set_dir(self, cfg: Config, name: str) -> Path:
        emb_dir = cfg.root / "embeddings" / name / self.tag
        if emb_dir.is_dir():
            EmbeddingSet(emb_dir).verified_shards()  # every set's files, before any set's work
            return emb_dir
        if name in KNOWN_SETS:
            raise ConfigError(f"eval set {name!r}: no embeddings at {emb_dir} (add "
                              f"'evalsets/{name}' to extract.datasets and run extract)")
        found = sorted(p.parent.name for p in (cfg.root / "embeddings").glob(f"*/{self.tag}"))
        raise ConfigError(f"unknown eval set {name!r}: not one of {', '.join(KNOWN_SETS)} and "
                          f"not extracted with tag {self.tag!r} (found: "
                          f"{', '.join(found) or 'none'})")

    def pooled(self, emb: EvalEmbeddings) -> torch.Tensor:
        return pool(emb.dino_cls, emb.dino_mean, self.train_cfg.pooling,
                    self.train_cfg.num_patch_tokens)  # the count the run trained with


def evaluate_run(cfg: Config) -> dict:
    """results.json's content for the run's chosen projector (model.safetensors)."""
    inp = EvalInputs(cfg)
    projector = inp.projector()
    results = _header(cfg, inp, checkpoint="model.safetensors")
    started = time.perf_counter()
    for name, emb_dir in inp.set_dirs.items():
        set_started = time.perf_counter()
        emb = load_eval_embeddings(emb_dir)
        projected = project_pooled(projector, inp.pooled(emb), inp.train_cfg.pooling)
        ev = SetEval(emb.clip_text, emb.clip_image, emb.caption_to_image, inp.ks, inp.device)
        res = {"n_images": emb.clip_image.shape[0], "n_captions": emb.clip_text.shape[0],
               **ev.rows(projected)}
        res["summary"] = summary(res, inp.ks)
        comparison = seed_comparison(name, res, inp.ks)
        if comparison:
            res["seed_comparison"] = comparison
        results["sets"][name] = res
        log.info("%s: %d images, %d captions, evaluated in %.2fs on %s", name, res["n_images"],
                 res["n_captions"], time.perf_counter() - set_started, inp.device)
    results["run_info"]["eval_seconds"] = round(time.perf_counter() - started, 3)
    return results


def evaluate_epochs(cfg: Config) -> dict:
    """% of CLIP for every checkpoints/epoch_NNN.safetensors; embeddings and CLIP's row once."""
    inp = EvalInputs(cfg)
    checkpoints = sorted((int(m.group(1)), p.name) for p in (inp.run_dir / "checkpoints").glob(
        "epoch_*.safetensors") if (m := _EPOCH_FILE.fullmatch(p.name)))
    if not checkpoints:
        raise ConfigError(f"--all-epochs: no checkpoints/epoch_NNN.safetensors in {inp.run_dir}")
    sets = {}
    for name, emb_dir in inp.set_dirs.items():
        emb = load_eval_embeddings(emb_dir)
        sets[name] = (inp.pooled(emb), SetEval(emb.clip_text, emb.clip_image,
                                               emb.caption_to_image, inp.ks, inp.device))
    out = _header(cfg, inp, checkpoint="checkpoints/epoch_*.safetensors")
    out["epochs"] = [epoch for epoch, _ in checkpoints]
    out["sets"] = {name: {"clip": ev.clip, "per_epoch": []} for name, (_, ev) in sets.items()}
    for epoch, filename in checkpoints:
        projector = inp.projector(f"checkpoints/{filename}")
        for name, (x, ev) in sets.items():
            rows = ev.rows(project_pooled(projector, x, inp.train_cfg.pooling))
            out["sets"][name]["per_epoch"].append(
                {"epoch": epoch, **{k: v for k, v in rows.items() if k != "clip"},
                 "summary": summary(rows, inp.ks)})
        log.info("epoch %d, projected %% of CLIP (mean over k): %s", epoch, "; ".join(
            f"{n} text->image {s['per_epoch'][-1]['summary']['projected_pct_mean']['t2i']:.1f}, "
            f"image->text {s['per_epoch'][-1]['summary']['projected_pct_mean']['i2t']:.1f}"
            for n, s in out["sets"].items()))
    return out


def _header(cfg: Config, inp: EvalInputs, checkpoint: str) -> dict:
    return {
        "run": inp.run_name, "ks": inp.ks, "sets": {}, "note": _note(cfg),
        "config": to_dict(cfg),
        "run_info": {"git_sha": git_sha(), "run_dir": str(inp.run_dir), "tag": inp.tag,
                     "checkpoint": checkpoint, "best_epoch": _best_epoch(inp.run_dir),
                     # The projector runs in float32, scores are float32, on this device.
                     "device": str(inp.device), "compute_dtype": "float32",
                     "train_config": to_dict(inp.train_cfg)},
    }


def _best_epoch(run_dir: Path) -> int | None:
    """The epoch model.safetensors holds, from the last epoch line of metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    best = None
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("kind") == "epoch":
            best = record.get("best_epoch", best)
    return best


def _note(cfg: Config) -> str:
    if Path(cfg.extract.dino_model).name.startswith("tiny") or cfg.data.synthetic.tiny_models:
        return ("These models are tiny and randomly initialised: the numbers show only that the "
                "machinery works, not how well DINOv2 aligns with CLIP.")
    return ""
