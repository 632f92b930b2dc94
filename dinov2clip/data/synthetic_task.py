"""A synthetic alignment task with known structure, written in the extract stage's layout.

A shared latent z drives both "models": DINO-like features are one fixed random non-linear map of
part of z plus noise; CLIP-like image and caption embeddings are another map of all of z, the
captions shifted by a fixed modality offset and each with its own noise. Latent dimensions DINO
never sees cap what any projector can reach, so "% of CLIP" stays below 100, as with real models.
The text-encoder view (sample(with_text=True)) is a third fixed map of all of z, one noisy row per
caption, in its own d_text-d space: what a frozen text encoder would give, for two-tower runs.
Tests and bench/synthetic_alignment.py use it; no weights needed.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dinov2clip.store import Embeddings, ShardWriter


class AlignmentTask:
    def __init__(self, d_dino: int = 64, d_clip: int = 32, latent: int = 24,
                 clip_only_dims: int = 2, noise: float = 0.1, seed: int = 0, d_text: int = 40):
        rng = np.random.default_rng(seed)  # the fixed "world": the same maps for every sample
        self.latent, self.seen, self.noise = latent, latent - clip_only_dims, noise
        self.dino_in = rng.normal(size=(self.seen, 2 * d_dino)) / np.sqrt(self.seen)
        self.dino_cls = rng.normal(size=(2 * d_dino, d_dino)) / np.sqrt(d_dino)
        self.dino_patch = rng.normal(size=(2 * d_dino, d_dino)) / np.sqrt(d_dino)
        self.clip_in = rng.normal(size=(latent, 2 * d_clip)) / np.sqrt(latent)
        self.clip_out = rng.normal(size=(2 * d_clip, d_clip)) / np.sqrt(d_clip)
        self.text_offset = 0.5 * rng.normal(size=d_clip) / np.sqrt(d_clip)  # a modality gap
        # its own stream, so the maps above (and every set drawn before it) stay as they were
        text_rng = np.random.default_rng([seed, 1])
        self.text_in = text_rng.normal(size=(latent, 2 * d_text)) / np.sqrt(latent)
        self.text_out = text_rng.normal(size=(2 * d_text, d_text)) / np.sqrt(d_text)

    def sample(self, n: int, captions_per_image: int = 1, seed: int = 1,
               with_text: bool = False, heads: int = 0) -> Embeddings:
        """n images; clip_text (and with_text, text_enc) holds captions_per_image rows per image,
        image after image. heads > 0: dino_heads too, (n, heads, d_dino), each head the patch
        mean seen through its own noise."""
        rng = np.random.default_rng(seed)
        z = rng.normal(size=(n, self.latent))
        h = np.tanh(3.0 * z[:, :self.seen] @ self.dino_in)  # (n, 2 * d_dino)
        cls = h @ self.dino_cls + self.noise * rng.normal(size=(n, self.dino_cls.shape[1]))
        patch = h @ self.dino_patch + self.noise * rng.normal(size=cls.shape)
        g = np.tanh(2.0 * z @ self.clip_in) @ self.clip_out  # (n, d_clip), CLIP's "concept"
        g /= np.linalg.norm(g, axis=1, keepdims=True)
        image = _unit(g + self.noise * rng.normal(size=g.shape))
        text = np.repeat(g + self.text_offset, captions_per_image, axis=0)
        text = _unit(text + 3 * self.noise * rng.normal(size=text.shape))
        f16 = np.float16
        enc = None
        if with_text:  # drawn last: the arrays above are those of a sample without it
            zc = np.repeat(z, captions_per_image, axis=0)
            t = np.tanh(2.0 * zc @ self.text_in) @ self.text_out
            # as noisy as CLIP's captions: the same noise norm, spread over d_text dims
            spread = 3 * self.noise * np.sqrt(self.clip_out.shape[1] / t.shape[1])
            enc = _unit(_unit(t) + spread * rng.normal(size=t.shape)).astype(f16)
        pooled = None
        if heads:  # drawn last too
            noise = rng.normal(size=(n, heads, patch.shape[1]))
            pooled = (patch[:, None, :] + self.noise * noise).astype(f16)
        return Embeddings(cls.astype(f16), patch.astype(f16), image.astype(f16),
                          text.astype(f16), enc, pooled)


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def write_embeddings(out_dir: Path, emb: Embeddings, captions_per_image: int = 1,
                     shard_size: int = 1000, prefix: str = "k") -> Path:
    """emb as embeddings/<dataset>/<tag>: npy + meta Parquet per shard, done-markers, manifest."""
    writer = ShardWriter(Path(out_dir), models_hash="synthetic-task")
    n, k = emb.dino_cls.shape[0], captions_per_image
    description = {"models": "synthetic alignment task",
                   "dino_patch_tokens": 256,  # token_mean weighs as for DINOv2 at 224
                   "dims": {"dino": emb.dino_cls.shape[1], "clip": emb.clip_image.shape[1]}}
    if emb.text_enc is not None:  # the set then holds text_enc (store/layout.py)
        description["text_encoder"] = {"name": "synthetic text view"}
        description["dims"]["text"] = emb.text_enc.shape[1]
    if emb.dino_heads is not None:  # the set then holds dino_heads
        description["dino_heads"] = {"pooling": "synthetic: the patch mean, noisy per head"}
    starts = range(0, n, shard_size)
    writer.start({f"{i:05d}": "synthetic" for i in range(len(starts))}, description)
    for i, start in enumerate(starts):
        stop = min(n, start + shard_size)
        name = f"{i:05d}"
        part = Embeddings(emb.dino_cls[start:stop], emb.dino_mean[start:stop],
                          emb.clip_image[start:stop], emb.clip_text[start * k:stop * k],
                          None if emb.text_enc is None else emb.text_enc[start * k:stop * k],
                          None if emb.dino_heads is None else emb.dino_heads[start:stop])
        meta = [{"key": f"{prefix}{i:08d}", "captions": [f"caption {j}" for j in range(k)],
                 "url": "", "row": i - start, "caption_start": (i - start) * k, "n_captions": k}
                for i in range(start, stop)]
        writer.write(name, part, meta, Counter(), source="synthetic")
    writer.write_manifest(description)
    return Path(out_dir)
