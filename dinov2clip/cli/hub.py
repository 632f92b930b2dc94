"""`pipeline push`: a run shared on the Hugging Face hub (`hf-hub:ORG/NAME` reads it back)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dinov2clip.cli.app import ArtifactsOpt, RunOpt, guarded


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

    guarded(lambda: typer.echo(push_run(run=run, root=artifacts, repo=repo, private=private)))
