"""Runs on the Hugging Face hub: the address "hf-hub:ORG/NAME[@REV]" of a pushed run, and its
download into the hub cache as a run directory (what `pipeline push` uploads).

HF_ENDPOINT is read at call time, so a mirror (or the tests' fake hub) set after import is used.
"""

from __future__ import annotations

import os
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.config.values import TRAINED_DENSE_HEADS

HUB_PREFIX = "hf-hub:"
MODEL_CARD = "README.md"


def download_run(run: str) -> Path:
    """The local snapshot of "hf-hub:ORG/NAME[@REV]": a run directory."""
    from huggingface_hub import snapshot_download

    from dinov2clip.store.run import RunDir  # (a cycle at import time: run.py imports this)

    layout = RunDir(".")  # what a pushed run holds: projector, config, model card, eval
    heads = [p.name for h in TRAINED_DENSE_HEADS
             for p in (layout.dense_head_config(h), layout.dense_head_weights(h))]
    pulled = [*(p.name for p in (layout.projector_config, layout.weights, layout.config)),
              *heads, MODEL_CARD, f"{layout.eval_dir.name}/*"]
    repo, _, revision = str(run)[len(HUB_PREFIX):].partition("@")
    try:
        path = snapshot_download(repo_id=repo, revision=revision or None, allow_patterns=pulled,
                                 endpoint=hub_endpoint())
    except hub_errors() as err:
        raise ConfigError(f"cannot fetch {repo} from the Hugging Face hub ({hub_reason(err)})"
                          ) from None
    return Path(path)


def hub_endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def hub_errors() -> tuple[type[BaseException], ...]:
    try:  # the hub client's HTTP library raises its own connection errors
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover - another huggingface_hub major version
        from httpx import TransportError
    return (OSError, TransportError)  # the hub's own errors (not found, HTTP) are OSErrors


def hub_reason(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
