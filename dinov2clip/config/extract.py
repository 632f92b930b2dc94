"""The [extract] section: which models embed which datasets, and how."""

from __future__ import annotations

from dataclasses import dataclass, field

from dinov2clip.config.values import (
    DECODE_MODES,
    TEXT_POOLINGS,
    check_at_least,
    check_device,
    check_dtype,
    check_one_of,
)


@dataclass(frozen=True)
class ExtractConfig:
    datasets: list[str] = field(default_factory=list)  # "shards/<name>" or "evalsets/<name>"
    dino_model: str = "facebook/dinov2-base"  # HF hub id or local directory
    dino_revision: str = ""  # hub branch, tag or commit to pin; empty: the default branch
    # open_clip name, or a path to an open_clip model-config JSON; "": no teacher (a two-tower
    # run over extract.text_encoder alone: no clip_image/clip_text, no "% of CLIP")
    clip_model: str = "ViT-B-16"
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a checkpoint path
    tag: str = ""  # embeddings/<dataset>/<tag>; empty: derived from the model names
    batch_size: int = 256
    num_workers: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compute_dtype: str = "bf16"  # autocast dtype on GPU; CPU always runs float32
    shard_pattern: str = "*.tar"
    # cpu: workers decode and resize | gpu: workers read bytes, JPEGs are decoded and resized in
    # batches on the extract device (also works on a CPU device) | auto: gpu on CUDA, else cpu
    decode: str = "auto"
    # A frozen text-embedding model whose caption embeddings are cached as `text_enc` beside
    # the teacher's (two-tower training): HF hub id or local directory; empty: none.
    text_encoder: str = ""
    text_revision: str = ""  # hub branch, tag or commit to pin; empty: the default branch
    text_pooling: str = "auto"  # auto (sentence-transformers) | mean | cls | last_token
    text_max_length: int = 0  # tokens per caption; 0: the model's own limit
    # Also cache, per image, the last block's per-head CLS-attention-pooled patch tokens
    # (dino_heads, (n, heads, D) float16), what train.dense.head = "talk2dino" trains on. The
    # last block runs its attention eagerly to form the weights; the default tag gains "-heads".
    dino_heads: bool = False

    def __post_init__(self):
        check_device("device", self.device)
        check_dtype("compute_dtype", self.compute_dtype)
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("num_workers", self.num_workers, 0)
        check_one_of("decode", self.decode, DECODE_MODES)
        check_one_of("text_pooling", self.text_pooling, TEXT_POOLINGS)
        check_at_least("text_max_length", self.text_max_length, 0)
