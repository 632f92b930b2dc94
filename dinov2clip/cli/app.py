"""The typer app every command hangs on, the options several commands share, and the one way a
command fails: bad input ends in one line on stderr and exit code 2, an OS fault (disk full,
permission denied) in one line and exit code 1, a non-finite loss in 3, Ctrl-C in 130."""

from __future__ import annotations

import errno
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from dinov2clip.config import Config, ConfigError, load_config

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
WaitOpt = Annotated[bool, typer.Option(
    "--wait", help="If another process is writing the same directory, wait for it to finish "
    "instead of stopping at once.")]

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


def _setup_logging() -> None:
    # Libraries (open_clip, faiss) log chatter at INFO on the root logger: show ours only.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    logging.getLogger("dinov2clip").setLevel(logging.INFO)


INTERRUPTED = "interrupted; completed shards and chunks are kept: re-run the same command to resume"
TRAIN_INTERRUPTED = ("interrupted; completed shards and epochs are kept: re-run the same command "
                     "with --resume to continue training from the last completed epoch")


def guarded(fn: Callable[[], object], interrupted: str = INTERRUPTED) -> None:
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


def load(config: Path, overrides: list[str] | None) -> Config:
    return load_config(config, overrides or [])
