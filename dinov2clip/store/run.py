"""The on-disk contract of a training run, runs/<run>/ (what it was trained on: trained_on.py).

    config.json             the resolved config + git sha, and "embeddings": the set the run
                            trained on (tag, dataset, models hash, models): what every user of the
                            run reads, never the config at hand
    projector.json + model.safetensors   the chosen projector
    talk2dino.json + talk2dino.safetensors   the talk2dino dense head (train.dense.head), its
                            best epoch by validation text->image R@1
    talk2dino_state.pt      the head's resume commit point, written last at the end of its epoch
    checkpoints/epoch_NNN.safetensors    every epoch's weights
    train_state.pt          the resume commit point, written last at the end of an epoch
    metrics.jsonl           one JSON line per logged step and per epoch
    loss.png, val.png       training curves
    eval/                   results.json, report.md, recall.png, epochs.json/png, zeroshot.json
    eval/segmentation/      per set and dense head: <set>-<head>.json, _iou.png, _overlays/,
                            _masks/; with PAMR (eval.dense.pamr) <set>-<head>-pamr.json, and so on
    zeroshot/<folder>-<hash of its path>.json   `pipeline zeroshot` results
    segment/<folder>-<hash of its path>/        `pipeline segment` output
    index/<name>/           indexes of image collections (IndexDir)

RunDir is the only place that knows these names; nothing else builds a path inside a run.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from dinov2clip.config import Config, ConfigError, read_resolved, write_resolved
from dinov2clip.io_utils import atomic_write_text, read_json
from dinov2clip.models.projector import CONFIG_NAME, WEIGHTS_NAME
from dinov2clip.store.layout import embeddings_tag
from dinov2clip.store.remote import HUB_PREFIX, download_run
from dinov2clip.store.trained_on import TrainedModels, TrainedOn

_EPOCH_FILE = re.compile(r"epoch_(\d+)\.safetensors")


class RunDir:
    """One runs/<run>/ directory: where each of its files goes."""

    CHECKPOINTS_GLOB = "checkpoints/epoch_*.safetensors"

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def named(cls, root: Path, name: str) -> RunDir:
        return cls(runs_root(root) / name)

    @classmethod
    def resolve(cls, run: str | Path, root: Path | None = None) -> RunDir:
        """--run: a run name (runs/<name> under root), a run directory, or "hf-hub:ORG/NAME"
        (downloaded once into the hub cache)."""
        text = str(run)
        if cls.is_hub(text):
            return cls(download_run(text))
        path = Path(text)
        named = runs_root(root) / text if root is not None and "/" not in text else None
        if named is not None and named.is_dir():
            return cls(named)
        if path.is_dir():
            return cls(path)
        where = f"{named} or {path}" if named is not None else str(path)
        raise ConfigError(f"run not found: {text!r} (no run directory at {where})")

    @staticmethod
    def is_hub(run: str | Path) -> bool:
        """An "hf-hub:ORG/NAME" run, whose files live in the hub cache."""
        return str(run).startswith(HUB_PREFIX)

    @property
    def name(self) -> str:
        return self.path.name

    def __str__(self) -> str:
        return str(self.path)

    # --- files --------------------------------------------------------------------------

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def projector_config(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS_NAME

    def dense_head_config(self, head: str) -> Path:
        """<head>.json: a trained dense head's config (head: "talk2dino")."""
        return self.path / f"{head}.json"

    def dense_head_weights(self, head: str) -> Path:
        return self.path / f"{head}.safetensors"

    def dense_head_state(self, head: str) -> Path:
        """<head>_state.pt: the head's training state after its last finished epoch."""
        return self.path / f"{head}_state.pt"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, epoch: int) -> Path:
        """checkpoints/epoch_NNN.safetensors for a 1-based epoch."""
        return self.checkpoints / f"epoch_{epoch:03d}.safetensors"

    def checkpoint_epochs(self) -> list[tuple[int, Path]]:
        """(epoch, path) of every saved epoch, in epoch order."""
        found = []
        for p in self.path.glob(self.CHECKPOINTS_GLOB):
            m = _EPOCH_FILE.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
        return sorted(found)

    @property
    def state(self) -> Path:
        return self.path / "train_state.pt"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def val_plot(self) -> Path:
        return self.path / "val.png"

    @property
    def average_record(self) -> Path:
        """average.json of a run made by `train --average`: its source run and epochs."""
        return self.path / "average.json"

    @property
    def eval_dir(self) -> Path:
        return self.path / "eval"

    @property
    def results(self) -> Path:
        return self.eval_dir / "results.json"

    @property
    def report(self) -> Path:
        return self.eval_dir / "report.md"

    @property
    def recall_plot(self) -> Path:
        return self.eval_dir / "recall.png"

    @property
    def epochs_results(self) -> Path:
        return self.eval_dir / "epochs.json"

    @property
    def epochs_plot(self) -> Path:
        return self.eval_dir / "epochs.png"

    @property
    def eval_zeroshot(self) -> Path:
        """The eval stage's zero-shot results (eval.zeroshot)."""
        return self.eval_dir / "zeroshot.json"

    @property
    def segmentation_dir(self) -> Path:
        """eval/segmentation/: per set and dense head <set>-<head>.json, <set>-<head>_iou.png,
        <set>-<head>_overlays/, <set>-<head>_masks/ (--save-masks); scored with PAMR, the head's
        part reads <head>-pamr."""
        return self.eval_dir / "segmentation"

    def _segmentation_stem(self, set_name: str, head: str, pamr: bool) -> str:
        return f"{set_name}-{head}" + ("-pamr" if pamr else "")

    def segmentation_results(self, set_name: str, head: str, pamr: bool = False) -> Path:
        """One set scored with one dense head (pamr: its masks refined by PAMR)."""
        return self.segmentation_dir / f"{self._segmentation_stem(set_name, head, pamr)}.json"

    def segmentation_plot(self, set_name: str, head: str, pamr: bool = False) -> Path:
        """The per-class IoU bars of one set under one head."""
        return self.segmentation_dir / f"{self._segmentation_stem(set_name, head, pamr)}_iou.png"

    def segmentation_overlay(self, set_name: str, head: str, key: str,
                             pamr: bool = False) -> Path:
        """image | ground truth | prediction, with a legend, for one image of a set."""
        stem = self._segmentation_stem(set_name, head, pamr)
        return self.segmentation_dir / f"{stem}_overlays" / f"{key}.png"

    def segmentation_mask(self, set_name: str, head: str, key: str, pamr: bool = False) -> Path:
        """A predicted label map: PNG, value = class index, 255 = ignored by the label."""
        stem = self._segmentation_stem(set_name, head, pamr)
        return self.segmentation_dir / f"{stem}_masks" / f"{key}.png"

    def segment_dir(self, images: str | Path) -> Path:
        """`pipeline segment`'s default output for an image folder, named as zeroshot_results
        names its file."""
        return self.path / "segment" / self.zeroshot_results(images).stem

    def zeroshot_results(self, data_dir: str | Path) -> Path:
        """zeroshot/<folder name>-<8 hex>.json: the hex is of the folder's absolute path, so
        /a/val and /b/val keep apart while a re-run on the same folder replaces its own."""
        where = Path(data_dir).resolve()
        digest = hashlib.sha256(str(where).encode()).hexdigest()[:8]
        return self.path / "zeroshot" / f"{where.name}-{digest}.json"

    def index_dir(self, name: str) -> Path:
        return self.path / "index" / name

    # --- contents -----------------------------------------------------------------------

    def is_trained(self) -> bool:
        return self.weights.is_file() and self.projector_config.is_file()

    def require_weights(self) -> None:
        if not self.weights.is_file():
            raise ConfigError(f"run {self.path} has no weights: {self.weights.name} missing "
                              "(did training finish an epoch?)")

    def read_config(self) -> Config:
        if not self.path.is_dir():
            raise ConfigError(f"run directory not found: {self.path}")
        return read_resolved(self.config)

    def write_config(self, cfg: Config, trained_on: TrainedOn) -> None:
        """config.json: the resolved config, the git sha, and the embeddings trained on."""
        write_resolved(cfg, self.path)
        payload = json.loads(self.config.read_text())
        payload["embeddings"] = trained_on.to_dict()
        atomic_write_text(self.config, json.dumps(payload, indent=2) + "\n")

    def trained_on(self) -> TrainedOn:
        """What the run was trained on: as recorded, or for a run from before that record,
        the tag its own config.json implies (never the config at hand)."""
        try:  # the record alone: no strict parse of the whole config for a recorded run
            recorded = read_json(self.config).get("embeddings")
        except (OSError, ValueError, AttributeError):
            recorded = None  # read_config below names what is wrong with the file
        if isinstance(recorded, dict) and recorded.get("tag"):
            return TrainedOn(tag=str(recorded["tag"]), dataset=str(recorded.get("dataset", "")),
                             models_hash=str(recorded.get("models_hash", "")),
                             models=dict(recorded.get("models") or {}))
        cfg = self.read_config()
        return TrainedOn(tag=cfg.train.tag or embeddings_tag(cfg.extract),
                         dataset=cfg.train.dataset)

    def trained_models(self) -> TrainedModels:
        return TrainedModels.of(self)

    def read_metrics(self) -> list[dict]:
        """metrics.jsonl's records; a line cut short by a kill, or not JSON, is left out."""
        if not self.metrics.is_file():
            return []
        out = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out

    def append_metrics(self, fh, record: dict) -> None:
        """One metrics.jsonl line, flushed: a kill loses at most the line being written."""
        fh.write(json.dumps(record) + "\n")
        fh.flush()

    def truncate_metrics(self, epoch: int, kinds: tuple[str, ...]) -> None:
        """Drop the lines of these kinds logged after their last completed epoch, so a resumed
        log has no duplicates; the other kinds' lines stay (the projector's and a dense head's
        lines are resumed apart). Lines are written by append_metrics, so they read back to the
        same text."""
        if self.metrics.exists():
            keep = [r for r in self.read_metrics()
                    if r.get("kind") not in kinds or r.get("epoch", epoch + 1) <= epoch]
            atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in keep))

    def best_epoch(self) -> int | None:
        """The epoch model.safetensors holds, from the last epoch line of metrics.jsonl."""
        best = None
        for record in self.read_metrics():
            if record.get("kind") == "epoch":
                best = record.get("best_epoch", best)
        return best


def runs_root(root: Path) -> Path:
    """artifacts/runs: one folder per run."""
    return Path(root) / "runs"
