"""The only place models run: DINOv2 and CLIP towers; batch in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.device import autocast
from dinov2clip.extract.preprocess import (
    PreprocessSpec,
    normalise,
    spec_from_hf_processor,
    spec_from_open_clip,
)


def load_dino(name: str, device: torch.device):
    """A transformers DINOv2 (with or without registers) and its reference preprocessing."""
    from transformers import AutoImageProcessor, AutoModel

    try:
        model = AutoModel.from_pretrained(name)
        proc = AutoImageProcessor.from_pretrained(name)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load DINOv2 model {name!r}: {first}") from None
    spec = spec_from_hf_processor(proc.to_dict())
    return model.eval().to(device), spec


def load_clip(name: str, pretrained: str, device: torch.device):
    """An open_clip model by registered name, or by a model-config JSON path (tests, demo)."""
    import open_clip

    if name.endswith(".json"):
        if not Path(name).is_file():
            raise ConfigError(f"open_clip model config not found: {name}")
        open_clip.add_model_config(name)
        name = Path(name).stem
    if name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
    try:
        model = open_clip.create_model(name, pretrained=pretrained or None, device=device)
    except (RuntimeError, OSError, ValueError) as err:
        raise ConfigError(f"cannot load open_clip {name!r} pretrained={pretrained!r}: "
                          f"{str(err).splitlines()[0]}") from None
    return model.eval(), open_clip.get_tokenizer(name), spec_from_open_clip(model)


@dataclass
class Embeddings:
    dino_cls: np.ndarray  # (n, D_dino) float16
    dino_mean: np.ndarray  # (n, D_dino) float16, patch tokens only (no CLS, no registers)
    clip_image: np.ndarray  # (n, D_clip) float16, L2-normalised
    clip_text: np.ndarray  # (m, D_clip) float16, L2-normalised


class Mapper:
    def __init__(self, dino, dino_spec: PreprocessSpec, clip, clip_spec: PreprocessSpec,
                 device: torch.device, dtype: torch.dtype):
        self.dino, self.clip = dino, clip
        self.dino_spec, self.clip_spec = dino_spec, clip_spec
        self.device, self.dtype = device, dtype
        self.n_registers = int(getattr(dino.config, "num_register_tokens", 0) or 0)

    @property
    def dims(self) -> dict:
        return {"dino": int(self.dino.config.hidden_size),
                "clip": int(self.clip.visual.output_dim)}

    @torch.inference_mode()
    def __call__(self, dino_u8: torch.Tensor, clip_u8: torch.Tensor,
                 tokens: torch.Tensor) -> Embeddings:
        dev = self.device
        dino_x = normalise(dino_u8.to(dev, non_blocking=True), self.dino_spec)
        clip_x = normalise(clip_u8.to(dev, non_blocking=True), self.clip_spec)
        with autocast(dev, self.dtype):
            hidden = self.dino(pixel_values=dino_x).last_hidden_state  # (B, 1+R+P, D), post-norm
            img = self.clip.encode_image(clip_x)
            txt = self.clip.encode_text(tokens.to(dev, non_blocking=True))
        hidden = hidden.float()
        cls = hidden[:, 0]
        patch_mean = hidden[:, 1 + self.n_registers:].mean(dim=1)
        return Embeddings(
            dino_cls=_f16(cls),
            dino_mean=_f16(patch_mean),
            clip_image=_f16(F.normalize(img.float(), dim=-1)),
            clip_text=_f16(F.normalize(txt.float(), dim=-1)),
        )


def _f16(x: torch.Tensor) -> np.ndarray:
    return x.to(torch.float16).cpu().numpy()


def describe(mapper: Mapper, dino_name: str, clip_name: str, clip_pretrained: str) -> dict:
    """What the manifest and the done-markers record about the models and preprocessing."""
    return {
        "dino_model": dino_name,
        "dino_registers": mapper.n_registers,
        "dino_preprocess": mapper.dino_spec.to_dict(),
        "clip_model": clip_name,
        "clip_pretrained": clip_pretrained,
        "clip_preprocess": mapper.clip_spec.to_dict(),
        "dims": mapper.dims,
        "compute_dtype": str(mapper.dtype).replace("torch.", ""),
    }


