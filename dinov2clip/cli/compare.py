"""`pipeline compare`: finished runs side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinov2clip.cli.app import guarded


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

    guarded(lambda: typer.echo(compare_runs([str(r) for r in runs or []], runs_glob, out)))
