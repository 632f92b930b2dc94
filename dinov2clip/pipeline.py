"""The `pipeline` command line: a thin typer layer over each stage's run(cfg).

Parsed arguments never leave this module: each command loads the TOML config, applies --set
overrides and calls the stage function. Bad input ends in one line on stderr and exit code 2,
an OS fault (disk full, permission denied) in one line and exit code 1, Ctrl-C in 130.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from dinov2clip.config import (
    REMOVED,
    RESUME_AND_FORCE,
    Config,
    ConfigError,
    UseOptions,
    load_config,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Align frozen DINOv2 image embeddings with CLIP's image-text space.\n\n"
    "Stages: data -> extract -> train -> eval. Each reads and writes files under the config's "
    "artifacts directory, so any stage can be re-run alone. Start with: "
    "pipeline run --stage all --config configs/demo.toml",
)

ConfigOpt = Annotated[Path, typer.Option("--config", "-c", help="Experiment TOML file.")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a config value: section.key=value (repeatable), "
                 "e.g. --set train.epochs=4."),
]


def _print_version(value: bool) -> None:
    if not value:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed distribution's version: pyproject.toml's, as built
        typer.echo(f"dinov2-clip {version('dinov2-clip')}")
    except PackageNotFoundError:  # run from a source tree that was never installed
        typer.echo("error: dinov2-clip is not installed (make setup): no version to show",
                   err=True)
        raise typer.Exit(2) from None
    raise typer.Exit()


@app.callback()
def _options(
    _version: Annotated[bool | None, typer.Option(
        "--version", callback=_print_version, is_eager=True,  # eager: before any command
        help="Print the package version and exit.")] = None,
) -> None:
    # Only the options before a command; the group's help is the app's.
    pass


class Stage(str, Enum):
    data = "data"
    extract = "extract"
    train = "train"
    eval = "eval"
    all = "all"


def _setup_logging() -> None:
    # Libraries (open_clip, faiss) log chatter at INFO on the root logger: show ours only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("dinov2clip").setLevel(logging.INFO)


INTERRUPTED = "interrupted; completed shards and chunks are kept: re-run the same command to resume"
TRAIN_INTERRUPTED = ("interrupted; completed shards and epochs are kept: re-run the same command "
                     "with --resume to continue training from the last completed epoch")


def _guarded(fn: Callable[[], object], interrupted: str = INTERRUPTED) -> None:
    """Run fn; user errors become one line on stderr and exit code 2, OS faults (disk full,
    permission denied) one line and exit code 1, never a traceback."""
    _setup_logging()
    try:
        fn()
    except ConfigError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(2) from None
    except FloatingPointError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(3) from None
    except OSError as err:
        typer.echo(f"error: {os_fault(err)}", err=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        typer.echo(interrupted, err=True)
        raise typer.Exit(130) from None


def os_fault(err: OSError) -> str:
    """One line: the path, the cause and what to do, e.g. '<path>: No space left on device'."""
    cause = err.strerror or " ".join(str(err).split())
    where = f"{err.filename}: " if err.filename else ""
    not_writable = " (this user may not write there: choose a writable path, e.g. for artifacts)"
    hint = {errno.ENOSPC: " (free some space, or write to another disk)",
            errno.EACCES: not_writable, errno.EPERM: not_writable,
            errno.EROFS: " (a read-only file system: choose a writable path)"}.get(err.errno, "")
    return f"{where}{cause}{hint}"


def _load(config: Path, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])


def _run_stage(stage: str, cfg: Config, resume: bool = False, force: bool = False,
               all_epochs: bool = False, wait: bool = False) -> None:
    if stage == "data":
        from dinov2clip import data

        data.run(cfg)
    elif stage == "extract":
        from dinov2clip import extract

        extract.run(cfg, wait=wait)
    elif stage == "train":
        from dinov2clip import train

        train.run(cfg, resume=resume, force=force)
    elif stage == "eval":
        from dinov2clip import evaluate

        evaluate.run(cfg, all_epochs=all_epochs)


@app.command()
def run(
    config: ConfigOpt,
    stage: Annotated[Stage, typer.Option(help="One stage, or all four in order.")] = Stage.all,
    overrides: SetOpt = None,
    resume: Annotated[bool, typer.Option(help="Train: continue the run's last epoch.")] = False,
    force: Annotated[bool, typer.Option(help="Train: replace an existing run.")] = False,
) -> None:
    """Run one stage, or the whole pipeline in this process (--stage all)."""

    def go() -> None:
        cfg = _load(config, overrides)
        stages = ["data", "extract", "train", "eval"] if stage == Stage.all else [stage.value]
        if resume and force:  # before the stages ahead of train do any work
            raise ConfigError(RESUME_AND_FORCE)
        if "extract" in stages and "eval" in stages:
            from dinov2clip.evaluate import check_planned_sets

            check_planned_sets(cfg)
        for s in stages:
            logging.getLogger("dinov2clip").info("=== stage %s ===", s)
            _run_stage(s, cfg, resume=resume, force=force)

    _guarded(go, TRAIN_INTERRUPTED if stage in (Stage.train, Stage.all) else INTERRUPTED)


@app.command()
def data(config: ConfigOpt, overrides: SetOpt = None) -> None:
    """Download CC12M (img2dataset), install eval sets, link webdatasets, or make the demo set."""
    _guarded(lambda: _run_stage("data", _load(config, overrides)))


WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="If another process is writing the same directory, wait for it to finish "
    "instead of stopping at once.")]


@app.command()
def extract(config: ConfigOpt, overrides: SetOpt = None, wait: WaitOpt = False) -> None:
    """Embed shards with DINOv2 and CLIP into sharded npy + Parquet (resumable; torchrun-ready)."""
    _guarded(lambda: _run_stage("extract", _load(config, overrides), wait=wait))


@app.command()
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

        _guarded(lambda: train_stage.average(_load(config, overrides), average))
        return
    _guarded(lambda: _run_stage("train", _load(config, overrides), resume=resume, force=force),
             TRAIN_INTERRUPTED)


@app.command(name="eval")
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
        cfg = _load(config, [*(overrides or []), *extra])
        _run_stage("eval", cfg, all_epochs=all_epochs)

    _guarded(go)


# --- Use: zero-shot classification, indexing a collection, text search -------------------------

# --run-dir as well: torchrun's own parser reads "--run" as an ambiguous abbreviation of its
# --run-path and stops, even after the script's name.
RUN_HELP = ("A run: its name (looked up as <artifacts>/runs/NAME), its directory, or "
            "hf-hub:ORG/NAME.")
RunOpt = Annotated[str, typer.Option("--run", "--run-dir", help=RUN_HELP)]
ArtifactsOpt = Annotated[Path, typer.Option(
    help="The artifacts directory a run NAME is looked up in (configs' `artifacts`).")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
DtypeOpt = Annotated[str, typer.Option(help="GPU autocast dtype: bf16 | fp16 | fp32 (CPU: fp32).")]
BatchOpt = Annotated[int, typer.Option(help="Images per forward pass.")]
WorkersOpt = Annotated[int, typer.Option(help="DataLoader workers decoding images.")]


@app.command()
def zeroshot(
    run: RunOpt,
    data: Annotated[Path, typer.Option("--data", help="Folder with one sub-folder per class.")],
    classnames: Annotated[Path | None, typer.Option(
        help="Class names: JSON list or {folder: name}, or TXT one per line (sorted folder "
             "order). Default: folder names, _ as spaces.")] = None,
    templates: Annotated[str, typer.Option(help="Prompt set: imagenet80 | short | plain.")
                         ] = "imagenet80",
    out: Annotated[Path | None, typer.Option(
        help="Results JSON. Default: <run>/zeroshot/<data folder name>-<hash of its path>.json"
    )] = None,
    max_per_class: Annotated[int, typer.Option(help="Use at most this many images per class "
                                                    "(0: all).")] = 0,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    batch_size: BatchOpt = 64,
    num_workers: WorkersOpt = 2,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Zero-shot top-1/top-5 for CLIP, projected DINOv2 and their ensemble, with % of CLIP."""
    from dinov2clip.evaluate.zeroshot import run_zeroshot

    _guarded(lambda: run_zeroshot(
        run=run, root=artifacts, data_dir=data, classnames_file=classnames, templates=templates,
        out=out,
        options=UseOptions(device=device, dtype=dtype, batch_size=batch_size,
                           num_workers=num_workers),
        max_per_class=max_per_class))


@app.command()
def segment(
    run: RunOpt,
    images: Annotated[Path, typer.Option("--images", help="An image folder (recursive).")],
    classes: Annotated[str, typer.Option(help='Comma-separated class names: "cat,dog,grass".')],
    out: Annotated[Path | None, typer.Option(
        help="Output folder. Default: <run>/segment/<images folder name>")] = None,
    background: Annotated[float | None, typer.Option(
        help="A cosine threshold: pixels whose best class scores below it are background "
             "(label 0). Default: no background class.")] = None,
    pamr: Annotated[bool, typer.Option(
        help="Refine each window's class scores by its pixels (PAMR, as Talk2DINO evaluates)."
    )] = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Open-vocabulary segmentation of a folder: label maps and overlays, the eval's protocol."""
    from dinov2clip.segment import segment_folder

    _guarded(lambda: segment_folder(run=run, images=images, classes=classes, out=out,
                                    background=background, pamr=pamr, root=artifacts,
                                    options=UseOptions(device=device, dtype=dtype)))


@app.command()
def index(
    run: RunOpt,
    images: Annotated[Path, typer.Option(
        "--images", help="An image folder (recursive: jpg png webp gif bmp) or a folder of *.tar "
                         "webdataset shards.")],
    out: Annotated[Path | None, typer.Option(
        help="Index directory. Default: <run>/index/<images folder name>")] = None,
    kind: Annotated[str, typer.Option(
        help="auto (exact up to --exact-max, IVF beyond) | flat | ivf | hnsw")] = "auto",
    exact_max: Annotated[int, typer.Option(help="Largest collection given an exact index.")
                         ] = 100_000,
    chunk_size: Annotated[int, typer.Option(help="Folder images per resumable chunk.")] = 4096,
    force: Annotated[bool, typer.Option(help="Delete an existing index and start over.")] = False,
    wait: WaitOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "bf16",
    batch_size: BatchOpt = 64,
    num_workers: WorkersOpt = 2,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Embed an image collection with projected DINOv2 into a FAISS index (resumable)."""
    from dinov2clip.index import build_index

    _guarded(lambda: build_index(
        run=run, root=artifacts, images=images, out_dir=out, chunk_size=chunk_size,
        exact_max=exact_max,
        kind=kind, options=UseOptions(device=device, dtype=dtype, batch_size=batch_size,
                                      num_workers=num_workers),
        force=force, wait=wait))


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="The text to search for.")],
    index_dir: Annotated[Path, typer.Option("--index", help="A directory `pipeline index` "
                                                           "wrote.")],
    k: Annotated[int, typer.Option("-k", help="Number of results.")] = 10,
    html: Annotated[Path | None, typer.Option(help="Also write a page showing the images.")
                    ] = None,
    run: Annotated[str | None, typer.Option(
        "--run", help="Run whose text tower encodes the query (a name, directory or "
                      "hf-hub:ORG/NAME). Default: the index's run.")] = None,
    nprobe: Annotated[int, typer.Option(help="IVF lists to visit (0: as built).")] = 0,
    as_json: Annotated[bool, typer.Option(
        "--json", help="Print the hits as one JSON document on stdout, and nothing else there "
                       "(for scripts): {\"query\", \"results\": [{\"rank\", \"score\", \"id\", "
                       "\"key\", \"path\", ...}]}.")] = False,
    device: DeviceOpt = "auto",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Search an index with a text query: rank, score, path or URL, caption."""
    from dinov2clip.index import search as search_index

    def find(table: bool) -> list[dict]:
        return search_index(index_dir=index_dir, query=query, k=k, html_out=html, run=run,
                            root=artifacts, options=UseOptions(device=device), nprobe=nprobe,
                            table=table)

    _guarded(lambda: _print_json(query, find) if as_json else find(True))


def _print_json(query: str, search_fn: Callable[[bool], list[dict]]) -> None:
    # Whatever a library prints goes to stderr: a script reads stdout as one JSON document.
    with contextlib.redirect_stdout(sys.stderr):
        hits = search_fn(False)
    typer.echo(json.dumps({"query": query, "results": hits}, ensure_ascii=False))


@app.command()
def compare(
    runs: Annotated[list[Path] | None, typer.Argument(
        help="Run directories (runs/<run>), each evaluated (eval/results.json).")] = None,
    runs_glob: Annotated[str | None, typer.Option(
        "--runs", help="A glob of run directories, e.g. 'artifacts/runs/*'; those without an "
                       "eval are left out.")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Where compare.md, compare.csv and compare.png go. Default: the runs' common "
             "parent.")] = None,
) -> None:
    """Runs side by side: R@1/5/10 and % of each run's own teacher, per set and direction."""
    from dinov2clip.compare import compare as compare_runs

    _guarded(lambda: typer.echo(compare_runs([str(r) for r in runs or []], runs_glob, out)))


@app.command()
def serve(
    index_dir: Annotated[Path, typer.Option("--index", help="A directory `pipeline index` "
                                                           "wrote.")],
    run: Annotated[str | None, typer.Option(
        "--run", help="Run whose towers encode queries (a name, directory or "
                      "hf-hub:ORG/NAME). Default: the index's run.")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface).")
                    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Most text queries encoded in one batch.")
                         ] = 32,
    device: DeviceOpt = "auto",
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Serve an index: a JSON API (text, similar-image and image search) and a web page."""
    from dinov2clip.serve import STOPPED
    from dinov2clip.serve import serve as serve_index

    _guarded(lambda: serve_index(index_dir=index_dir, run=run, root=artifacts, host=host,
                                 port=port, device=device, max_batch=max_batch),
             interrupted=STOPPED)


@app.command()
def push(
    run: RunOpt,
    repo: Annotated[str, typer.Option(help="Hub model repo to create or update: ORG/NAME.")],
    private: Annotated[bool, typer.Option(help="Create the repo private.")] = False,
    artifacts: ArtifactsOpt = Path("artifacts"),
) -> None:
    """Share a run's projector on the Hugging Face hub, with its config and a model card.

    Load it back anywhere with DinoV2Clip.from_pretrained("hf-hub:ORG/NAME"), or pass
    --run hf-hub:ORG/NAME to index and serve.
    """
    from dinov2clip.hub import push as push_run

    _guarded(lambda: typer.echo(push_run(run=run, root=artifacts, repo=repo, private=private)))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
