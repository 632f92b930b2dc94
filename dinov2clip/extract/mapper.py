"""The only place models run: the DINO backbone and the CLIP-like teacher; batch in, arrays out.

Backbones: transformers DINOv2 (with or without registers) and DINOv3 ViTs. Their
last_hidden_state is [CLS, R registers, P patches] (DINOv3: R = 4, patch 16, so P = 196 at 224).
Teachers: any open_clip model, by registered name and pretrained tag (OpenAI CLIP, SigLIP and
SigLIP 2, MobileCLIP), by "hf-hub:" / "local-dir:" id, or by a model-config JSON path.
"""

from __future__ import annotations

from contextlib import contextmanager
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

DINO_TYPES = ("dinov2", "dinov2_with_registers", "dinov3_vit")
OPEN_CLIP_SCHEMAS = ("hf-hub:", "local-dir:")


def load_dino(name: str, device: torch.device, revision: str = ""):
    """A transformers DINOv2 / DINOv3 ViT and its reference preprocessing.
    revision: a hub branch, tag or commit; empty: the default branch."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel

    # Refuse before loading any weights.
    model_type = _hf_load(AutoConfig, name, revision).model_type
    if model_type == "dinov3_convnext":
        raise ConfigError(f"{name!r} is a DINOv3 ConvNeXt: it has no CLS or patch tokens to "
                          "pool; use a DINOv3 ViT such as facebook/dinov3-vitb16-pretrain-lvd1689m")
    if model_type not in DINO_TYPES:
        raise ConfigError(f"{name!r} is a {model_type!r} model, not DINOv2 or a DINOv3 ViT")
    model = _hf_load(AutoModel, name, revision)
    proc = _hf_load(AutoImageProcessor, name, revision)
    try:
        spec = spec_from_hf_processor(proc.to_dict(), backend=_hf_backend(proc),
                                      rescale_first=type(proc).__name__.startswith("DINOv3"))
    except ValueError as err:
        raise ConfigError(f"{name!r}: {err}") from None
    return model.eval().to(device), spec


def _hf_load(auto_class, name: str, revision: str = ""):
    try:
        with _no_weight_loading_bar():
            return auto_class.from_pretrained(name, revision=revision or None)
    except (OSError, ValueError) as err:
        if _is_gated(err):
            raise ConfigError(
                f"{name!r} is gated on the Hugging Face hub and this account has no access: "
                f"accept its licence at https://huggingface.co/{name} and set HF_TOKEN to a "
                "token of that account") from None
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"cannot load DINO model {name!r}: {first}") from None


def _is_gated(err: BaseException) -> bool:
    """A refused download of a gated repo (huggingface_hub's GatedRepoError, or transformers'
    OSError that wraps it)."""
    from huggingface_hub.errors import GatedRepoError

    seen = err
    while seen is not None:
        if isinstance(seen, GatedRepoError) or "gated repo" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@contextmanager
def _no_weight_loading_bar():
    """Hide transformers' "Loading weights" bar (one per model, nothing to act on); download
    bars stay."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # older transformers: no such bar either
        yield
        return

    def hook(factory, args, kwargs):
        quiet = kwargs.get("desc") == "Loading weights"
        return factory(*args, **{**kwargs, "disable": True} if quiet else kwargs)

    previous = hf_logging.set_tqdm_hook(hook)
    try:
        yield
    finally:
        hf_logging.set_tqdm_hook(previous)


def _hf_backend(proc) -> str:
    """How the processor resizes: "pil", or "torch" (transformers 5's default, and *Fast)."""
    backend = getattr(proc, "backend", None)  # transformers >= 5
    if backend is None:
        backend = "torch" if type(proc).__name__.endswith("Fast") else "pil"
    return "pil" if backend == "pil" else "torch"


def load_clip(name: str, pretrained: str, device: torch.device):
    """An open_clip model by registered name, or by a model-config JSON path (tests, demo)."""
    import open_clip

    schema = name.startswith(OPEN_CLIP_SCHEMAS)  # weights come with the model id, no tag
    if name.endswith(".json"):
        if not Path(name).is_file():
            raise ConfigError(f"open_clip model config not found: {name}")
        open_clip.add_model_config(name)
        name = Path(name).stem
    if not schema and name not in open_clip.list_models():
        raise ConfigError(f"unknown open_clip model {name!r} (see open_clip.list_models())")
    # OpenAI's weights were trained with QuickGELU, which e.g. the plain ViT-B-16 config lacks;
    # open_clip only warns about the mismatch, so follow the tag's own setting.
    quick_gelu = not schema and bool(
        (open_clip.get_pretrained_cfg(name, pretrained) or {}).get("quick_gelu"))
    try:
        model = open_clip.create_model(name, pretrained=None if schema else (pretrained or None),
                                       device=device, force_quick_gelu=quick_gelu,
                                       require_pretrained=schema or bool(pretrained))
        tokenizer = open_clip.get_tokenizer(name)
    except (RuntimeError, OSError, ValueError) as err:
        raise ConfigError(f"cannot load open_clip {name!r} pretrained={pretrained!r}: "
                          f"{str(err).splitlines()[0]}") from None
    try:
        spec = spec_from_open_clip(model)
    except ValueError as err:
        raise ConfigError(f"open_clip {name!r}: {err}") from None
    return model.eval(), tokenizer, spec


@dataclass
class Embeddings:
    dino_cls: np.ndarray  # (n, D_dino) float16
    dino_mean: np.ndarray  # (n, D_dino) float16, patch tokens only (no CLS, no registers)
    clip_image: np.ndarray  # (n, D_clip) float16, L2-normalised
    clip_text: np.ndarray  # (m, D_clip) float16, L2-normalised


def register_count(dino) -> int:
    """Register tokens the backbone carries after CLS (0 for plain DINOv2, 4 for DINOv3)."""
    return int(getattr(dino.config, "num_register_tokens", 0) or 0)


def patch_token_count(dino, crop: int) -> int:
    """Patch tokens in last_hidden_state for a crop x crop input: 256 for DINOv2 at 224 (patch
    14), 196 for DINOv3 at 224 (patch 16)."""
    patch = dino.config.patch_size
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    return (crop // int(patch)) ** 2


def cls_and_patch_mean(hidden: torch.Tensor, n_registers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """From last_hidden_state (B, 1+R+P, D), post-norm: the CLS token and the mean of the P patch
    tokens, registers excluded; both (B, D) float32."""
    hidden = hidden.float()
    return hidden[:, 0], hidden[:, 1 + n_registers:].mean(dim=1)


class Mapper:
    def __init__(self, dino, dino_spec: PreprocessSpec, clip, clip_spec: PreprocessSpec,
                 device: torch.device, dtype: torch.dtype):
        self.dino, self.clip = dino, clip
        self.dino_spec, self.clip_spec = dino_spec, clip_spec
        self.device, self.dtype = device, dtype
        self.n_registers = register_count(dino)
        self.n_patch_tokens = patch_token_count(dino, dino_spec.crop)
        self._buffers: dict[str, torch.Tensor] = {}
        self.clip_dim = int(getattr(clip.visual, "output_dim", 0) or 0) or self._probe_clip_dim()

    def _input_buffer(self, tower: str, shape: torch.Size) -> torch.Tensor | None:
        """On CPU, one reused float buffer per tower: a fresh ~40 MB tensor per batch costs
        more in page faults than the tiny test models cost to run. (CUDA's allocator caches.)"""
        if self.device.type != "cpu":
            return None
        b, h, w, _ = shape
        buf = self._buffers.get(tower)
        if buf is None or buf.shape[0] < b or buf.shape[2:] != (h, w):
            buf = self._buffers[tower] = torch.empty((b, 3, h, w))
        return buf[:b]

    def _probe_clip_dim(self) -> int:
        x = torch.zeros(1, 3, self.clip_spec.crop, self.clip_spec.crop, device=self.device)
        with torch.inference_mode():
            return int(self.clip.encode_image(x).shape[-1])

    @property
    def dims(self) -> dict:
        return {"dino": int(self.dino.config.hidden_size), "clip": self.clip_dim}

    def __call__(self, dino_u8: torch.Tensor, clip_u8: torch.Tensor,
                 tokens: torch.Tensor) -> Embeddings:
        return self.submit(dino_u8, clip_u8, tokens).result()

    @torch.inference_mode()
    def submit(self, dino_u8: torch.Tensor, clip_u8: torch.Tensor,
               tokens: torch.Tensor) -> Pending:
        """Queue one batch on the device; .result() waits for it (GPU work stays queued)."""
        dev = self.device
        dino_x = normalise(dino_u8.to(dev, non_blocking=True), self.dino_spec,
                           out=self._input_buffer("dino", dino_u8.shape))
        clip_x = normalise(clip_u8.to(dev, non_blocking=True), self.clip_spec,
                           out=self._input_buffer("clip", clip_u8.shape))
        with autocast(dev, self.dtype):
            hidden = self.dino(pixel_values=dino_x).last_hidden_state  # (B, 1+R+P, D), post-norm
            img = self.clip.encode_image(clip_x)  # (B, D_clip)
            txt = self.clip.encode_text(tokens.to(dev, non_blocking=True))  # (m, D_clip)
        cls, patch_mean = cls_and_patch_mean(hidden, self.n_registers)
        out = {
            "dino_cls": cls,
            "dino_mean": patch_mean,
            "clip_image": F.normalize(img.float(), dim=-1),
            "clip_text": F.normalize(txt.float(), dim=-1),
        }
        # fp16 on the device halves the copy; non_blocking lands it in pinned host memory.
        host = {k: v.to(torch.float16).to("cpu", non_blocking=True) for k, v in out.items()}
        event = None
        if dev.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return Pending(host, event)


@dataclass
class Pending:
    host: dict  # name -> float16 CPU tensor, filled once `event` has completed
    event: object | None  # a recorded torch.cuda.Event, or None on CPU

    def result(self) -> Embeddings:
        if self.event is not None:
            self.event.synchronize()
        return Embeddings(**{k: v.numpy() for k, v in self.host.items()})


def describe(mapper: Mapper, dino_name: str, clip_name: str, clip_pretrained: str,
             tokenizer=None, dino_revision: str = "") -> dict:
    """What identifies the models, weights and preprocessing (hashed into the done-markers)."""
    from dinov2clip.extract.identity import clip_weights, dino_weights, tokenizer_info

    return {
        "dino_model": dino_name,
        "dino_type": str(mapper.dino.config.model_type),
        "dino_registers": mapper.n_registers,
        "dino_patch_tokens": mapper.n_patch_tokens,  # token_mean pooling weighs the mean by it
        "dino_preprocess": mapper.dino_spec.to_dict(),
        "clip_model": clip_name,
        "clip_pretrained": clip_pretrained,
        "clip_preprocess": mapper.clip_spec.to_dict(),
        "dims": mapper.dims,
        "compute_dtype": str(mapper.dtype).replace("torch.", ""),
        "weights": {"dino": dino_weights(mapper.dino, dino_name, dino_revision),
                    "clip": clip_weights(clip_name, clip_pretrained)},
        "clip_tokenizer": tokenizer_info(tokenizer),  # context length, HF source, cleaning
    }


