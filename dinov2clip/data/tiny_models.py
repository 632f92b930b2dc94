"""Tiny randomly initialised DINOv2 / DINOv3 and CLIP / SigLIP models, saved like real checkpoints.

The demo and the tests cannot download weights, so they build these, write them to disk and load
them back through exactly the loading code the real models use: transformers `from_pretrained` on a
directory; open_clip with a model-config JSON plus a local checkpoint as `pretrained`; and for the
SigLIP-style teacher, an open_clip "local-dir:" folder laid out like an hf-hub open_clip repo
(open_clip_config.json, weights, and an HF tokenizer built here with the `tokenizers` library).
"""

from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from pathlib import Path

import torch

from dinov2clip.io_utils import follow_umask
from dinov2clip.models.loaders import quiet_model_bars

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
    with quiet_model_bars():
        model.eval().save_pretrained(out_dir)
    BitImageProcessor(**DINO_PROCESSOR).save_pretrained(out_dir)
    follow_umask(out_dir)  # save_pretrained's safetensors file is 0600 otherwise
    return out_dir


# facebook/dinov3-vit*16-pretrain-lvd1689m's preprocessor_config.json: squash to 224 x 224,
# bilinear, no crop, ImageNet mean/std.
DINOV3_PROCESSOR = {
    "do_resize": True,
    "size": {"height": 224, "width": 224},
    "resample": 2,  # bilinear
    "do_center_crop": None,
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
}


def build_tiny_dinov3(out_dir: Path, hidden: int = 48, layers: int = 2, seed: int = 0) -> Path:
    """Save a random DINOv3 ViT: patch 16 and 4 register tokens, as the real ones."""
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    torch.manual_seed(seed)
    model = DINOv3ViTModel(DINOv3ViTConfig(
        hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
        intermediate_size=hidden * 2, image_size=224, patch_size=16, num_register_tokens=4))
    with quiet_model_bars():
        model.eval().save_pretrained(out_dir)
    DINOv3ViTImageProcessor(**DINOV3_PROCESSOR).save_pretrained(out_dir)
    follow_umask(out_dir)
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
    follow_umask(ckpt)  # save_file ignores the umask
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


# SigLIP's eval preprocessing (open_clip's webli tags): squash, bicubic, mean = std = 0.5.
SIGLIP_PREPROCESS = {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                     "interpolation": "bicubic", "resize_mode": "squash"}
TOKENIZER_WORDS = (
    "a an the of on in with and there is picture photo image background against small large "
    "red green blue yellow purple orange black white circle square triangle star itap my one "
    "many good bad bright dark close up drawing painting rendering cropped"
).split()


def tiny_siglip_config(vocab_size: int, embed_dim: int = 32) -> dict:
    """ViT-B-16-SigLIP2's model config, shrunk: a timm test ViT image tower, open_clip's
    non-causal text tower pooled at the last token, an HF tokenizer with "canonicalize"."""
    return {
        "embed_dim": embed_dim,
        "init_logit_bias": -10,
        "custom_text": True,
        "vision_cfg": {"image_size": 160, "timm_model_name": "test_vit",
                       "timm_model_pretrained": False, "timm_pool": "avg", "timm_proj": "linear"},
        "text_cfg": {"context_length": 16, "vocab_size": vocab_size,
                     "hf_tokenizer_name": "tiny-siglip",  # local-dir: the folder's own files
                     "tokenizer_kwargs": {"clean": "canonicalize"},
                     "width": 64, "heads": 4, "layers": 2, "no_causal_mask": True,
                     "proj_bias": True, "pool_type": "last", "norm_kwargs": {"eps": 1e-6},
                     "act_kwargs": {"approximate": "tanh"}},
    }


def build_tiny_tokenizer(out_dir: Path) -> int:
    """A lower-case word-level HF tokenizer (ends every text with </s>, as SigLIP's does);
    returns its vocabulary size. Unknown words map to <unk>, so upper case would show."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *TOKENIZER_WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(out_dir)
    return len(vocab)


def build_tiny_siglip(out_dir: Path, seed: int = 0) -> str:
    """Save a random SigLIP-style open_clip model as a local-dir folder; returns its model id
    ("local-dir:<folder>", used with an empty pretrained tag)."""
    import open_clip
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = tiny_siglip_config(build_tiny_tokenizer(out_dir))
    (out_dir / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": SIGLIP_PREPROCESS}, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{out_dir}", pretrained=None, load_weights=False)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / "open_clip_model.safetensors"))
    follow_umask(out_dir)  # the weights and the tokenizer's files
    return f"local-dir:{out_dir}"


def build_tiny_bert(out_dir: Path, hidden: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Save a random BERT and a WordPiece tokenizer over TOKENIZER_WORDS: a plain transformers
    text encoder (load with AutoModel.from_pretrained, pool it yourself)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = out_dir / "vocab.txt"
    vocab.write_text("\n".join([*special, *TOKENIZER_WORDS]) + "\n")
    BertTokenizerFast(vocab_file=str(vocab), do_lower_case=True,
                      model_max_length=64).save_pretrained(out_dir)
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(special) + len(TOKENIZER_WORDS),
                                 hidden_size=hidden, num_hidden_layers=layers,
                                 num_attention_heads=4, intermediate_size=2 * hidden,
                                 max_position_embeddings=64))
    with quiet_model_bars():
        model.eval().save_pretrained(out_dir)
    follow_umask(out_dir)
    return out_dir


def build_tiny_sentence_transformer(out_dir: Path, seed: int = 0) -> Path:
    """A tiny random BERT saved as a sentence-transformers folder (modules.json: the
    transformer, mean pooling, normalisation), as all-roberta-large-v1 or gte-large are laid out;
    load with SentenceTransformer(path)."""
    import tempfile

    from sentence_transformers import SentenceTransformer

    with tempfile.TemporaryDirectory() as tmp:
        bert = build_tiny_bert(Path(tmp) / "bert", seed=seed)
        # A folder without modules.json gets sentence-transformers' default stack: the
        # transformer and mean pooling; saving writes that stack as the folder's modules.
        with _quiet_root_warning("No sentence-transformers model found"):
            model = SentenceTransformer(str(bert), device="cpu")
        model.save(str(out_dir))
    follow_umask(out_dir)  # its weights go through safetensors' save_file too
    return out_dir
