"""The `pipeline` command line: a thin typer layer over each stage's run(cfg) and the use
commands' functions. Parsed arguments never leave this package.

app.py holds the app, the options several commands share and the one way a command fails (one
`error:` line; exit 2 for bad input, 1 for an OS fault); stages.py, use.py, compare.py and hub.py
hold the commands, registered here in the order `pipeline --help` lists them.
"""

from __future__ import annotations

from dinov2clip.cli import compare, hub, stages, use
from dinov2clip.cli.app import app

for _command in (stages.run, stages.data, stages.extract, stages.train):
    app.command()(_command)
app.command(name="eval")(stages.eval_)
for _command in (use.zeroshot, use.segment, use.index, use.search, compare.compare, use.serve,
                 hub.push):
    app.command()(_command)


def main() -> None:
    app()


__all__ = ["app", "main"]
