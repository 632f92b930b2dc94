"""What train checks before it trains: the projector's dims against the cached embeddings, the
patch-token count, the selection metric's direction, the optional eval set used as validation.
Each refusal is one line naming the key to change, before any data is loaded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dinov2clip.config import Config, ConfigError
from dinov2clip.store import (
    MANIFEST,
    EmbeddingSet,
    embeddings_dir,
    load_eval_pairs,
    pooled_dim,
    recorded_patch_tokens,
)
from dinov2clip.train import validate as V


def with_patch_tokens(cfg: Config, emb_dir: Path) -> Config:
    """cfg with train.num_patch_tokens taken from the embeddings' manifest, where extract
    recorded how many patch tokens the backbone gave (256 for DINOv2 at 224, 196 for DINOv3).
    token_mean pooling weighs the patch mean by it; a set value must agree with the manifest."""
    t = cfg.train
    path = emb_dir / MANIFEST
    recorded = recorded_patch_tokens(emb_dir)
    if recorded and t.num_patch_tokens and t.num_patch_tokens != recorded:
        raise ConfigError(f"train.num_patch_tokens = {t.num_patch_tokens} but the backbone gave "
                          f"{recorded} patch tokens per image ({path}); remove the key")
    n = int(recorded or t.num_patch_tokens)
    if not n and t.pooling == "token_mean":
        raise ConfigError(f"{path} does not record the backbone's patch-token count (extracted "
                          "by an older version): set train.num_patch_tokens (256 for DINOv2 at "
                          "224 px) or re-run extract")
    return dataclasses.replace(cfg, train=dataclasses.replace(t, num_patch_tokens=n))


def check_dims(cfg: Config, emb_dir: Path) -> None:
    """The projector's dims against the cached embeddings' npy headers (read, not loaded)."""
    t, p = cfg.train, cfg.train.projector
    store = EmbeddingSet(emb_dir)
    d_dino, d_clip = store.dims()
    d_in = pooled_dim(d_dino, t.pooling)
    if t.kind == "two_tower":  # the shared space's dim is the projectors' own choice
        d_text = store.text_dim()
        if not d_text:
            raise ConfigError(f"train.kind = two_tower needs caption embeddings of a text "
                              f"encoder, but {emb_dir} has none: set extract.text_encoder and "
                              "extract again (under a new extract.tag)")
        for key, want, got in (("projector.in_dim", d_in, p.in_dim),
                               ("text_projector.in_dim", d_text, t.text_projector.in_dim)):
            if want != got:
                raise ConfigError(f"train.{key} = {got} does not match the embeddings in "
                                  f"{emb_dir}, which give {want}-d inputs")
        return
    if not d_clip:
        raise ConfigError(f"train.kind = {t.kind} maps into a teacher's space, but {emb_dir} "
                          'was extracted without one (extract.clip_model = ""): set train.kind '
                          '= "two_tower", or name a teacher and extract again')
    if (p.in_dim, p.out_dim) != (d_in, d_clip):
        raise ConfigError(
            f"train.projector dims {p.in_dim}->{p.out_dim} do not match the embeddings in "
            f"{emb_dir}: {t.pooling} pooling of {d_dino}-d DINOv2 gives {d_in}-d inputs, CLIP "
            f"is {d_clip}-d")


def select_sign(select_metric: str) -> float:
    """+1 if a higher select_metric is better, -1 for the val loss."""
    return -1.0 if select_metric == "val_loss" else 1.0


def load_evalset(cfg: Config, tag: str):
    """(pairs, CLIP's recalls on them) for train.val_evalset, or None."""
    name = cfg.train.val_evalset
    if not name:
        return None
    emb_dir = embeddings_dir(cfg.root, name, tag)
    pairs = load_eval_pairs(emb_dir, cfg.train.pooling, cfg.train.num_patch_tokens)
    p = cfg.train.projector
    if cfg.train.kind == "two_tower" and pairs.text_enc is None:
        raise ConfigError(f"train.val_evalset {name!r}: {emb_dir} has no text encoder "
                          "embeddings for the two-tower run's text side; extract it with the "
                          "run's extract.text_encoder")
    if cfg.train.kind == "two_tower":  # the text side is checked by its own projector
        if pairs.x.shape[1] != p.in_dim:
            raise ConfigError(f"train.val_evalset {name!r}: {emb_dir} gives {pairs.x.shape[1]}"
                              f"-d inputs, the image projector takes {p.in_dim}")
    elif (pairs.x.shape[1], pairs.clip_image.shape[1]) != (p.in_dim, p.out_dim):
        raise ConfigError(f"train.val_evalset {name!r}: {emb_dir} gives {pairs.x.shape[1]}-d "
                          f"inputs and {pairs.clip_image.shape[1]}-d CLIP, the projector is "
                          f"{p.in_dim}->{p.out_dim}")
    return pairs, V.clip_recalls(pairs)
