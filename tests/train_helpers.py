"""Small synthetic embedding directories and configs for the train-stage tests."""

from __future__ import annotations

from pathlib import Path

from dinov2clip.config import load_config
from dinov2clip.train.synthetic_task import AlignmentTask, write_embeddings

D_DINO, D_CLIP = 16, 8


def make_embeddings(art: Path, n: int = 600, shard_size: int = 200, dataset: str = "syn",
                    captions: int = 1, seed: int = 1) -> Path:
    task = AlignmentTask(d_dino=D_DINO, d_clip=D_CLIP, latent=8, seed=0)
    emb = task.sample(n, captions_per_image=captions, seed=seed)
    return write_embeddings(art / "embeddings" / dataset / "t", emb, captions, shard_size,
                            prefix=f"{dataset}-")


def config_text(art: Path) -> str:
    return f"""
artifacts = "{art}"
[extract]
tag = "t"
[train]
dataset = "syn"
run = "r"
pooling = "token_mean"
epochs = 3
batch_size = 64
lr = 3e-3
val_fraction = 0.15
log_every = 2
device = "cpu"
select_metric = "val_cosine"
[train.projector]
kind = "residual"
in_dim = {D_DINO}
out_dim = {D_CLIP}
width = 32
depth = 1
head_width = 16
[eval]
sets = []
"""


def write_config(art: Path, name: str = "c.toml") -> Path:
    path = art.parent / name
    path.write_text(config_text(art))
    return path


def load(art: Path, *overrides: str):
    """The test config with `section.key=value` overrides, as --set gives them."""
    return load_config(write_config(art), list(overrides))


def one_thread():
    """Tiny CPU ops on a shared 2-core box run 10x faster on one thread; restore afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
