"""The train stage: a projector fitted over cached embedding tensors."""

from __future__ import annotations

from pathlib import Path

from dinov2clip.config import Config


def run(cfg: Config, resume: bool = False, force: bool = False) -> Path:
    from dinov2clip.train.loop import train

    return train(cfg, resume=resume, force=force)


def average(cfg: Config, spec: str) -> Path:
    """runs/<run>-avg-<spec>: the uniform average of the run's chosen epochs."""
    from dinov2clip.store import RunDir
    from dinov2clip.train.weight_average import average_run

    return average_run(RunDir.named(cfg.root, cfg.train.run), spec)
