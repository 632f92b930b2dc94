"""Device, precision and process rank, decided in one place.

Three separate dtypes are named choices: compute (autocast on GPU), storage (float16 on disk) and
metrics (float32). No other module calls .cuda() or picks a dtype on its own.
"""

from __future__ import annotations

import contextlib
import os

import torch

STORAGE_DTYPE = "float16"  # embeddings on disk
METRIC_DTYPE = torch.float32  # similarities and recalls
_COMPUTE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            # torchrun sets LOCAL_RANK, srun SLURM_LOCALID: one GPU per process on a node.
            local = os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", 0))
            return torch.device("cuda", int(local))
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return torch.device(name)


def compute_dtype(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype: as configured on GPU; float32 on CPU, where bf16 is slow."""
    if name not in _COMPUTE:
        raise ValueError(f"compute dtype must be one of {sorted(_COMPUTE)}, got {name!r}")
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
