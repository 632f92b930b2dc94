"""The eval stage from files to files: embeddings + a run's projector in, eval/ reports out."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from dinov2clip.config import Config, ConfigError, git_sha, to_dict
from dinov2clip.device import resolve_device
from dinov2clip.evaluate.compute import SetEval
from dinov2clip.evaluate.embeddings import project_pooled
from dinov2clip.evaluate.report import seed_comparison, summary
from dinov2clip.models.projector import Projector
from dinov2clip.store import (
    EmbeddingSet,
    EvalEmbeddings,
    RunDir,
    embeddings_dir,
    embeddings_root,
    load_eval_embeddings,
    pool,
)

log = logging.getLogger(__name__)
KNOWN_SETS = ("mscoco", "flickr30k", "flickr8k")  # CLIP_benchmark's; any extracted set also works


class EvalInputs:
    """Everything an eval needs, checked before any number is computed."""

    def __init__(self, cfg: Config):
        e = cfg.eval
        self.run = RunDir.resolve(e.run or cfg.train.run, cfg.root)
        self.run_name = self.run.name
        self.train_cfg = self.run.read_config().train  # how the projector was trained
        self.run.require_weights()
        self.trained_on = self.run.trained_on()  # the run's embeddings, never the config's
        self.tag = self.trained_on.tag
        self.allow_other = e.allow_other_embeddings
        if not e.sets:  # allowed in a config that only trains
            raise ConfigError("eval.sets is empty: name at least one eval set")
        self.ks = sorted(set(e.ks))
        self.set_dirs = {name: self._set_dir(cfg, name) for name in e.sets}
        self.device = resolve_device(e.device, "eval.device")  # where the projector runs and ranks

    def projector(self, weights: Path | None = None) -> Projector:
        """The run's chosen projector, or the one in another weights file of the run."""
        return Projector.from_pretrained(self.run.path, weights=weights, device=self.device)

    def _set_dir(self, cfg: Config, name: str) -> Path:
        emb_dir = embeddings_dir(cfg.root, name, self.tag)
        if emb_dir.is_dir():
            self._check_models(name, emb_dir)
            EmbeddingSet(emb_dir).verified_shards()  # every set's files, before any set's work
            return emb_dir
        if name in KNOWN_SETS:
            raise ConfigError(f"eval set {name!r}: no embeddings at {emb_dir} (add "
                              f"'evalsets/{name}' to extract.datasets and run extract)")
        found = sorted(p.parent.name for p in embeddings_root(cfg.root).glob(f"*/{self.tag}"))
        raise ConfigError(f"unknown eval set {name!r}: not one of {', '.join(KNOWN_SETS)} and "
                          f"not extracted with tag {self.tag!r} (found: "
                          f"{', '.join(found) or 'none'})")

    def _check_models(self, name: str, emb_dir: Path) -> None:
        """Refuse an eval set embedded by other models than the run's training set."""
        if not self.trained_on.models:  # a run from before the record: nothing to compare
            log.warning("run %s does not record the models of its training embeddings (trained "
                        "by an older version); eval set %s is not checked against them",
                        self.run, name)
            return
        differ = self.trained_on.differences(EmbeddingSet(emb_dir).read_plan() or {})
        if not differ:
            return
        what = (f"eval set {name!r} ({emb_dir}) was embedded by other models than run "
                f"{self.run_name!r} was trained on: " + "; ".join(differ[:4])
                + ("; ..." if len(differ) > 4 else ""))
        if not self.allow_other:
            raise ConfigError(f"{what}; re-extract it with the run's models, or pass "
                              "--allow-other-embeddings to evaluate it anyway")
        log.warning("%s (evaluated anyway: --allow-other-embeddings)", what)

    def pooled(self, emb: EvalEmbeddings) -> torch.Tensor:
        return pool(emb.dino_cls, emb.dino_mean, self.train_cfg.pooling,
                    self.train_cfg.num_patch_tokens)  # the count the run trained with


def evaluate_run(cfg: Config) -> dict:
    """results.json's content for the run's chosen projector (model.safetensors)."""
    inp = EvalInputs(cfg)
    projector = inp.projector()
    results = _header(cfg, inp, checkpoint=inp.run.weights.name)
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
    checkpoints = inp.run.checkpoint_epochs()
    if not checkpoints:
        raise ConfigError(f"--all-epochs: no saved epochs in {inp.run.checkpoints}")
    sets = {}
    for name, emb_dir in inp.set_dirs.items():
        emb = load_eval_embeddings(emb_dir)
        sets[name] = (inp.pooled(emb), SetEval(emb.clip_text, emb.clip_image,
                                               emb.caption_to_image, inp.ks, inp.device))
    out = _header(cfg, inp, checkpoint=RunDir.CHECKPOINTS_GLOB)
    out["epochs"] = [epoch for epoch, _ in checkpoints]
    out["sets"] = {name: {"clip": ev.clip, "per_epoch": []} for name, (_, ev) in sets.items()}
    for epoch, weights in checkpoints:
        projector = inp.projector(weights)
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
        "run_info": {"git_sha": git_sha(), "run_dir": str(inp.run), "tag": inp.tag,
                     "trained_on": inp.trained_on.to_dict(),
                     "allow_other_embeddings": inp.allow_other,
                     "checkpoint": checkpoint, "best_epoch": inp.run.best_epoch(),
                     # The projector runs in float32, scores are float32, on this device.
                     "device": str(inp.device), "compute_dtype": "float32",
                     "train_config": to_dict(inp.train_cfg)},
    }


def _note(cfg: Config) -> str:
    if Path(cfg.extract.dino_model).name.startswith("tiny") or cfg.data.synthetic.tiny_models:
        return ("These models are tiny and randomly initialised: the numbers show only that the "
                "machinery works, not how well DINOv2 aligns with CLIP.")
    return ""
