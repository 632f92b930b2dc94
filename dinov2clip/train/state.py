"""What survives a kill: per-epoch weights, the EMA, and train_state.pt for --resume; the same
for a dense head trained after the projector, in <head>_state.pt.

A state is written last at the end of an epoch, by atomic rename: it is the commit point. A run
killed at any moment resumes from the last epoch whose state landed, and replays the rest exactly
(seeded permutations, restored optimiser, scheduler and RNG), so on CPU the final weights are
bitwise those of an uninterrupted run. Both states stay once training is done: a later --resume
reads them to say the run is finished, and to refuse a config that changes it.
"""

from __future__ import annotations

import copy
import logging

import torch
import torch.nn as nn

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import atomic_write
from dinov2clip.models.projector import unwrap
from dinov2clip.store import RunDir, changes

log = logging.getLogger(__name__)

PROJECTOR_LINES = ("step", "epoch")  # metrics.jsonl kinds a projector resume truncates
HEAD_LINES = ("dense_step", "dense_epoch")  # and a dense head's


class EMA:
    """An exponential moving average of the weights: ema += (1 - decay) * (weights - ema)."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.module = copy.deepcopy(unwrap(model)).eval().requires_grad_(False)
        self.params = list(self.module.parameters())
        self.source = list(unwrap(model).parameters())

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.params, self.source, 1.0 - self.decay)


def fingerprint_diff(saved: dict, current: dict) -> list[str]:
    """Names of the parts (architecture, data, ...) that differ between two fingerprints."""
    return sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))


def save_state(run: RunDir, epoch: int, best: dict, fingerprint: dict, model, loss_fn, opt,
               sched, ema: EMA | None) -> None:
    state = {"epoch": epoch, "best": best, "fingerprint": fingerprint,
             "model": unwrap(model).state_dict(), "loss": loss_fn.state_dict(),
             "opt": opt.state_dict(), "sched": sched.state_dict(),
             "ema": ema.module.state_dict() if ema else None}
    _write(run.state, state)


def _write(path, state: dict) -> None:
    def write(tmp: str) -> None:
        # Through a Python file: a full disk is then an OSError naming its cause, where
        # torch.save(state, path) says only "enforce fail at inline_container.cc".
        with open(tmp, "wb") as fh:
            torch.save(state, fh)

    atomic_write(path, write)


def load_state(run: RunDir, fingerprint: dict, model, loss_fn, opt, sched,
               ema: EMA | None) -> tuple[int, dict]:
    """(last completed epoch, best so far); refuses a run whose architecture or data differ."""
    path = run.state
    if not path.exists():  # killed before the first epoch ended: start over in place
        run.truncate_metrics(0, PROJECTOR_LINES)
        return 0, {"epoch": -1, "score": float("-inf")}
    # train_state.pt is written by this trainer for its own resume, never downloaded.
    state = torch.load(path, map_location="cpu", weights_only=False)
    differ = fingerprint_diff(state["fingerprint"], fingerprint)
    if differ:
        raise ConfigError(f"cannot resume {run}: this config changes its "
                          f"{_and(differ)} (use --force to start over, or a new "
                          "train.run)")
    unwrap(model).load_state_dict(state["model"], strict=True)
    loss_fn.load_state_dict(state["loss"], strict=True)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    if ema is not None:
        ema.module.load_state_dict(state["ema"], strict=True)
    run.truncate_metrics(state["epoch"], PROJECTOR_LINES)
    log.info("resuming %s after epoch %d", run, state["epoch"])
    return state["epoch"], state["best"]


def save_head_state(run: RunDir, head: str, epoch: int, best: dict, fingerprint: dict, model,
                    opt, sched) -> None:
    """A dense head's commit point after its (1-based) epoch."""
    _write(run.dense_head_state(head), {
        "epoch": epoch, "best": best, "fingerprint": fingerprint, "model": model.state_dict(),
        "opt": opt.state_dict(), "sched": sched.state_dict(), "rng": torch.get_rng_state()})


def read_head_state(run: RunDir, head: str, fingerprint: dict) -> dict | None:
    """The head's last committed state (None: no epoch of it finished); refuses, naming each
    key, a config that changes what the head was being trained with."""
    path = run.dense_head_state(head)
    if not path.exists():
        return None
    # written by this trainer for its own resume, never downloaded
    state = torch.load(path, map_location="cpu", weights_only=False)
    differ = changes(state["fingerprint"], fingerprint)
    if differ:
        raise ConfigError(f"cannot resume the {head} head of {run}: this config changes "
                          f"{'; '.join(differ)} (use --force to start over, or a new train.run)")
    return state


def restore_head_state(run: RunDir, state: dict | None, model, opt, sched) -> tuple[int, dict]:
    """Put a read_head_state state back (None: start the head over); (last finished head
    epoch, best so far). The head's metrics.jsonl lines after that epoch go."""
    if state is None:
        run.truncate_metrics(0, HEAD_LINES)
        return 0, {"epoch": -1, "val_t2i_R@1": float("-inf")}
    model.load_state_dict(state["model"], strict=True)
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    torch.set_rng_state(state["rng"])
    run.truncate_metrics(state["epoch"], HEAD_LINES)
    log.info("resuming the dense head of %s after its epoch %d", run, state["epoch"])
    return state["epoch"], state["best"]


def _and(words: list[str]) -> str:
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)
