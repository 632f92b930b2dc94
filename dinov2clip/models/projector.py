"""Projectors from pooled DINOv2 features into CLIP's embedding space.

Each is built from a ProjectorConfig alone, and saves as projector.json + model.safetensors (a
plain state_dict, no pickle); from_pretrained loads strictly, so a mismatch is an error.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes

from dinov2clip.config import ConfigError, ProjectorConfig, parse
from dinov2clip.io_utils import atomic_write, atomic_write_json


class InputNorm(nn.Module):
    """Per-dimension standardisation with statistics fixed from the training split."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class ResidualBlock(nn.Module):
    """x + LN(Linear(GELU(LN(Linear(x))))): the seed project's block (post-norm inside)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1, self.ln1 = nn.Linear(width, width), nn.LayerNorm(width)
        self.fc2, self.ln2 = nn.Linear(width, width), nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.ln2(self.fc2(nn.functional.gelu(self.ln1(self.fc1(x)))))


class PreNormBlock(nn.Module):
    """x + Linear(GELU(Linear(LN(x)))): the pre-norm residual MLP of modern transformers."""

    def __init__(self, width: int):
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.fc1, self.fc2 = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln(x))))


CONFIG_NAME, WEIGHTS_NAME = "projector.json", "model.safetensors"


class Projector(nn.Module):
    def __init__(self, cfg: ProjectorConfig):
        super().__init__()
        self.cfg = cfg
        self.input_norm = InputNorm(cfg.in_dim) if cfg.standardize else None
        self.net = PROJECTORS[cfg.kind](cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_dim) pooled DINOv2 features -> (B, out_dim), not yet L2-normalised."""
        if self.input_norm is not None:
            x = self.input_norm(x)
        return self.net(x)

    def save_pretrained(self, out_dir: str | Path) -> None:
        """CONFIG_NAME + WEIGHTS_NAME in out_dir, the projector's own format."""
        out_dir = Path(out_dir)
        atomic_write_json(out_dir / CONFIG_NAME, asdict(self.cfg))
        save_weights(self, out_dir / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, weights: str | Path | None = None,
                        device: str | torch.device = "cpu") -> Projector:
        """The projector saved in run_dir; weights: another file of its weights (an epoch's)."""
        run_dir = Path(run_dir)
        cfg_path, weights = run_dir / CONFIG_NAME, Path(weights or run_dir / WEIGHTS_NAME)
        for p in (cfg_path, weights):
            if not p.is_file():
                raise ConfigError(f"no projector at {run_dir}: {p.name} missing")
        cfg = parse(ProjectorConfig, json.loads(cfg_path.read_text()), str(cfg_path), "")
        model = cls(cfg)
        model.load_state_dict(load_file(str(weights), device=str(device)), strict=True)
        return model.to(device).eval()


def _seed_residual(cfg: ProjectorConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.in_dim, cfg.width),
        *[ResidualBlock(cfg.width) for _ in range(cfg.depth)],
        nn.LayerNorm(cfg.width),
        nn.Linear(cfg.width, cfg.head_width),
        nn.GELU(),
        nn.Linear(cfg.head_width, cfg.out_dim),
        nn.LayerNorm(cfg.out_dim),
    )


def _prenorm(cfg: ProjectorConfig) -> nn.Module:
    return nn.Sequential(
        nn.Linear(cfg.in_dim, cfg.width),
        *[PreNormBlock(cfg.width) for _ in range(cfg.depth)],
        nn.LayerNorm(cfg.width),
        nn.Linear(cfg.width, cfg.out_dim),
    )


def _linear(cfg: ProjectorConfig) -> nn.Module:
    return nn.Linear(cfg.in_dim, cfg.out_dim)


PROJECTORS = {"residual": _seed_residual, "prenorm": _prenorm, "linear": _linear}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module behind torch.compile, so saved keys carry no `_orig_mod.` prefix."""
    return getattr(model, "_orig_mod", model)


def save_weights(model: nn.Module, path: Path) -> None:
    save_tensors({k: v.detach() for k, v in unwrap(model).state_dict().items()}, path)


def save_tensors(state: dict[str, torch.Tensor], path: Path) -> None:
    """A safetensors file, written by Python so that a full disk raises an OSError
    (safetensors' own save_file reported no error when writing to a full device)."""
    data = safetensors_bytes({k: v.cpu().contiguous() for k, v in state.items()})

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write(path, write)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
