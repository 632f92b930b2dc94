"""Device, precision and process rank, decided in one place.

The compute dtype (autocast on GPU) is chosen here; no other module calls .cuda() or picks a
compute dtype on its own. Storage is float16 by the store's contract (store/layout.py), and
scores and recalls are float32 by retrieval.py's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings

import torch

from dinov2clip.config import ConfigError

log = logging.getLogger(__name__)

_COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto", key: str = "device") -> torch.device:
    """The torch device for a config's device name; key names the setting in errors."""
    if name == "auto":
        if torch.cuda.is_available():
            # torchrun sets LOCAL_RANK, srun SLURM_LOCALID: one GPU per process on a node.
            local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))
            return torch.device("cuda", int(local))
        _warn_cpu_once()
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"{key} = {name!r} asked for, but CUDA is not available: "
                          f"{why_no_cuda()}")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key}: unknown device {name!r} (auto | cpu | cuda | cuda:N)"
                          ) from None


def why_no_cuda() -> str:
    """Why torch sees no GPU, in words a user can act on."""
    if torch.version.cuda is None:
        return f"this torch {torch.__version__} is a CPU-only build"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    count = getattr(torch._C, "_cuda_getDeviceCount", None)
    if count is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            count()  # torch says here why CUDA failed to start, e.g. a driver too old
        for w in caught:
            text = " ".join(str(w.message).split())
            if text:
                return f"{text} (this torch is built for CUDA {torch.version.cuda})"
    return f"no NVIDIA GPU or driver found (this torch is built for CUDA {torch.version.cuda})"


_warned_cpu = False


def _warn_cpu_once() -> None:
    """device = "auto" ending on the CPU is loud: a GPU box with an old driver would otherwise
    run a multi-day extract on the CPU without a word."""
    global _warned_cpu
    if not _warned_cpu:
        _warned_cpu = True
        log.warning('device "auto" runs on the CPU: %s. Set the device to "cpu" to silence '
                    "this", why_no_cuda())


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: as configured on GPU; float32 on CPU, where bf16 is slow."""
    if name not in _COMPUTE:
        raise ConfigError(f"compute dtype must be one of {sorted(_COMPUTE)}, got {name!r}")
    return _COMPUTE[name] if device.type == "cuda" else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size under torchrun or srun; (0, 1) when alone."""
    for rank_key, world_key in (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_NTASKS")):
        if rank_key in os.environ and world_key in os.environ:
            return int(os.environ[rank_key]), int(os.environ[world_key])
    return 0, 1
