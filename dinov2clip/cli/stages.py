"""The stage commands: data, extract, train, eval, and run (one stage or all four in this
process). Each loads the TOML config, applies --set overrides and calls the stage's run(cfg)."""

from __future__ import annotations

import logging
from enum import Enum
from typing import Annotated

import typer

from dinov2clip.cli.app import (
    INTERRUPTED,
    TRAIN_INTERRUPTED,
    ConfigOpt,
    SetOpt,
    WaitOpt,
    guarded,
    load,
)
from dinov2clip.config import REMOVED, RESUME_AND_FORCE, Config, ConfigError


class Stage(str, Enum):
    data = "data"
    extract = "extract"
    train = "train"
    eval = "eval"
    all = "all"


def run_stage(stage: str, cfg: Config, resume: bool = False, force: bool = False,
              all_epochs: bool = False, wait: bool = False) -> None:
    if stage == "data":
        from dinov2clip import data

        data.run(cfg, wait=wait)
    elif stage == "extract":
        from dinov2clip import extract

        extract.run(cfg, wait=wait)
    elif stage == "train":
        from dinov2clip import train

        train.run(cfg, resume=resume, force=force)
    elif stage == "eval":
        from dinov2clip import evaluate

        evaluate.run(cfg, all_epochs=all_epochs)


def run(
    config: ConfigOpt,
    stage: Annotated[Stage, typer.Option(help="One stage, or all four in order.")] = Stage.all,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Train: continue the run's last epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Train: replace an existing run.")] = False,
) -> None:
    """Run one stage, or the whole pipeline in this process (--stage all)."""

    def go() -> None:
        cfg = load(config, overrides)
        stages = ["data", "extract", "train", "eval"] if stage == Stage.all else [stage.value]
        if resume and force:  # before the stages ahead of train do any work
            raise ConfigError(RESUME_AND_FORCE)
        if "extract" in stages and "eval" in stages:
            from dinov2clip.evaluate import check_planned_sets

            check_planned_sets(cfg)
        for s in stages:
            logging.getLogger("dinov2clip").info("=== stage %s ===", s)
            run_stage(s, cfg, resume=resume, force=force)

    guarded(go, TRAIN_INTERRUPTED if stage in (Stage.train, Stage.all) else INTERRUPTED)


def data(config: ConfigOpt, overrides: SetOpt = None, wait: WaitOpt = False) -> None:
    """Download CC12M (img2dataset), install eval sets, link webdatasets, or make the demo set."""
    guarded(lambda: run_stage("data", load(config, overrides), wait=wait))


def extract(config: ConfigOpt, overrides: SetOpt = None, wait: WaitOpt = False) -> None:
    """Embed shards with DINOv2 and CLIP into sharded npy + Parquet (resumable; torchrun-ready)."""
    guarded(lambda: run_stage("extract", load(config, overrides), wait=wait))


def train(
    config: ConfigOpt,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last completed epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Delete an existing run and start over.")] = False,
    average: Annotated[str | None, typer.Option(
        help="Instead of training: average the run's saved epochs uniformly, 'last:4' or "
        "'3,5,7', into runs/<run>-avg-<spec> (evaluate it with --set eval.run=...).")] = None,
) -> None:
    """Fit the projector over cached embeddings; keeps the best epoch by validation."""
    if average is not None:
        from dinov2clip import train as train_stage

        guarded(lambda: train_stage.average(load(config, overrides), average))
        return
    guarded(lambda: run_stage("train", load(config, overrides), resume=resume, force=force),
            TRAIN_INTERRUPTED)


def eval_(
    config: ConfigOpt,
    overrides: SetOpt = None,
    run_name: Annotated[str | None, typer.Option(
        "--run", help="The run to evaluate: a name under the config's runs/, or a run "
                      "directory (default: eval.run, else train.run).")] = None,
    allow_other_embeddings: Annotated[bool, typer.Option(
        "--allow-other-embeddings", help="Evaluate eval sets embedded by other models than the "
        "run's training embeddings (recorded in results.json).")] = False,
    all_epochs: Annotated[bool, typer.Option(
        "--all-epochs", help="Also evaluate every checkpoints/epoch_NNN.safetensors and draw "
        "% of CLIP against epoch (eval/epochs.json, eval/epochs.png).")] = False,
    save_masks: Annotated[bool, typer.Option(
        "--save-masks", help="Segmentation: write the predicted label maps of eval.dense.sets "
        "as PNGs (value = class index, 255 = ignored) beside each set's JSON.")] = False,
    search: Annotated[str | None, typer.Option(hidden=True)] = None,  # removed: a clear error
) -> None:
    """Retrieval R@1/5/10 both ways for CLIP, projected DINOv2 and their ensemble; % of CLIP;
    open-vocabulary segmentation on eval.dense.sets."""
    extra = [f"eval.run={run_name!r}"] if run_name else []
    extra += ["eval.allow_other_embeddings=true"] if allow_other_embeddings else []
    extra += ["eval.dense.save_masks=true"] if save_masks else []

    def go() -> None:
        if search is not None:
            raise ConfigError(f"--search was removed: {REMOVED['eval.search']}")
        cfg = load(config, [*(overrides or []), *extra])
        run_stage("eval", cfg, all_epochs=all_epochs)

    guarded(go)

