"""Tiny randomly initialised DINOv2 and CLIP models, saved like real checkpoints.

The demo and the tests cannot download weights, so they build these, write them to disk and load
them back through exactly the loading code the real models use: transformers `from_pretrained` on a
directory, and open_clip with a model-config JSON plus a local checkpoint as `pretrained`.
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

# dinov2-base's reference preprocessing (its preprocessor_config.json on the hub).
DINO_PROCESSOR = {
    "do_resize": True,
    "size": {"shortest_edge": 256},
    "resample": 3,  # bicubic
    "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224},
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "do_convert_rgb": True,
}


def build_tiny_dinov2(out_dir: Path, hidden: int = 48, layers: int = 2, registers: int = 0,
                      seed: int = 0) -> Path:
    """Save a random DINOv2 (patch 14, 224 px, so 256 patch tokens as in the real model)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(seed)
    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                  intermediate_size=hidden * 2, image_size=224, patch_size=14)
    if registers:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

        model = Dinov2WithRegistersModel(
            Dinov2WithRegistersConfig(num_register_tokens=registers, **common))
    else:
        model = Dinov2Model(Dinov2Config(**common))
    model.eval().save_pretrained(out_dir)
    BitImageProcessor(**DINO_PROCESSOR).save_pretrained(out_dir)
    return out_dir


def tiny_clip_config(embed_dim: int = 32) -> dict:
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 4,
                     "layers": 2},
    }


def build_tiny_clip(out_dir: Path, name: str = "tiny-clip", seed: int = 0) -> tuple[Path, Path]:
    """Save an open_clip model config JSON and a random safetensors checkpoint for it."""
    import open_clip
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    config_path = out_dir / f"{name}.json"
    config_path.write_text(json.dumps(tiny_clip_config(), indent=2))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    with _quiet_root_warning("initialized randomly"):  # random on purpose
        model = open_clip.create_model(name, pretrained=None)
    # A random CLIP's towers are unrelated; pulling the text projection towards the image side
    # would be cosmetic, so the demo says plainly that its numbers show only the machinery.
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    ckpt = out_dir / "open_clip_model.safetensors"
    save_file(state, str(ckpt))
    return config_path, ckpt


@contextmanager
def _quiet_root_warning(text: str):
    """Drop root-logger records containing text (open_clip logs through the root logger)."""
    def keep(record: logging.LogRecord) -> bool:
        return text not in record.getMessage()

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)
