"""A uniform average of per-epoch weights: the seed's "ensemble of training stages".

`pipeline train --average last:4` (or `--average 3,5,7`) reads runs/<run>/checkpoints and writes
a sibling run, runs/<run>-avg-last4 (or <run>-avg-3-5-7), with projector.json, model.safetensors,
the source run's config.json and average.json naming the epochs, so `pipeline eval
--set eval.run=<run>-avg-last4` evaluates it like any other run.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import atomic_write_json, atomic_write_text
from dinov2clip.models.projector import save_tensors
from dinov2clip.store import RunDir

log = logging.getLogger(__name__)


def parse_epochs(spec: str, available: list[int]) -> list[int]:
    """'last:K' -> the last K saved epochs; '3,5,7' -> exactly those, each of which must exist."""
    spec = spec.strip()
    if m := re.fullmatch(r"last:(\d+)", spec):
        k = int(m.group(1))
        if not 1 <= k <= len(available):
            raise ConfigError(f"--average {spec}: the run has {len(available)} saved epochs")
        return available[-k:]
    if not re.fullmatch(r"\d+(,\d+)*", spec):
        raise ConfigError(f"--average expects last:K or a list like 3,5,7, got {spec!r}")
    epochs = sorted({int(e) for e in spec.split(",")})
    missing = [e for e in epochs if e not in available]
    if missing:
        raise ConfigError(f"--average {spec}: no checkpoint for epoch(s) "
                          f"{', '.join(map(str, missing))} (saved: {available})")
    return epochs


def average_run(run: RunDir, spec: str) -> Path:
    """Write the averaged run next to run; returns its directory."""
    if not run.projector_config.is_file():
        raise ConfigError(f"no trained run at {run} ({run.projector_config.name} missing)")
    saved = dict(run.checkpoint_epochs())
    epochs = parse_epochs(spec, sorted(saved))
    states = [load_file(str(saved[e])) for e in epochs]
    mean = {k: torch.stack([s[k].double() for s in states]).mean(0).to(v.dtype).contiguous()
            for k, v in states[0].items()}
    label = spec.replace(":", "").replace(",", "-")
    out = RunDir(run.path.parent / f"{run.name}-avg-{label}")
    out.path.mkdir(parents=True, exist_ok=True)
    # copies, atomic as every other write: the averaged run was trained on the same embeddings
    for src, dst in ((run.projector_config, out.projector_config), (run.config, out.config)):
        atomic_write_text(dst, src.read_text())
    save_tensors(mean, out.weights)
    atomic_write_json(out.average_record, {"source_run": str(run), "epochs": epochs})
    log.info("averaged epochs %s of %s into %s", epochs, run, out)
    return out.path
