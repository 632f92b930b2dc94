"""Loading the frozen models: transformers DINOv2 / DINOv3 ViT backbones and open_clip teachers.

Backbones: transformers DINOv2 (with or without registers) and DINOv3 ViTs. Their
last_hidden_state is [CLS, R registers, P patches] (DINOv3: R = 4, patch 16, so P = 196 at 224).
Teachers: any open_clip model, by registered name and pretrained tag (OpenAI CLIP, SigLIP and
SigLIP 2, MobileCLIP), by "hf-hub:" / "local-dir:" id, or by a model-config JSON path.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from dinov2clip.config import ConfigError
from dinov2clip.models.preprocess import spec_from_hf_processor, spec_from_open_clip

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
        with quiet_model_bars():
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
def quiet_model_bars():
    """Hide transformers' "Loading weights" and "Writing model shards" bars (one per model,
    nothing to act on, and \r-redrawn into every log); download bars stay."""
    from transformers.utils import logging as hf_logging

    if not hasattr(hf_logging, "set_tqdm_hook"):  # older transformers: no such bar either
        yield
        return

    def hook(factory, args, kwargs):
        quiet = kwargs.get("desc") in ("Loading weights", "Writing model shards")
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
