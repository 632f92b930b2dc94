"""Decoding in DataLoader workers: each image decoded once, both models' inputs cut from it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset

from dinov2clip.extract.preprocess import PreprocessSpec, decode, resize_and_crop
from dinov2clip.extract.reader import RawSample


class DecodedShard(Dataset):
    def __init__(self, samples: list[RawSample], dino_spec: PreprocessSpec,
                 clip_spec: PreprocessSpec, tokenizer):
        self.samples = samples
        self.dino_spec, self.clip_spec = dino_spec, clip_spec
        self.tokenizer = tokenizer

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        try:
            img = decode(s.image)
        except Exception:  # noqa: BLE001 - any undecodable payload is one counted skip
            return {"failure": "corrupt_image"}
        return {
            "dino": resize_and_crop(img, self.dino_spec),
            "clip": resize_and_crop(img, self.clip_spec),
            "tokens": self.tokenizer(s.captions),  # (n_captions, context_length)
            "row": {"key": s.key, "captions": s.captions, "url": s.url,
                    "n_captions": len(s.captions)},
        }


@dataclass
class Batch:
    dino_u8: torch.Tensor | None = None  # (B, H, W, 3) uint8
    clip_u8: torch.Tensor | None = None  # (B, H, W, 3) uint8
    tokens: torch.Tensor | None = None  # (sum of n_captions, context_length)
    rows: list[dict] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


def collate(items: list[dict]) -> Batch:
    ok = [it for it in items if "failure" not in it]
    batch = Batch(failures=[(i, it["failure"]) for i, it in enumerate(items) if "failure" in it])
    if ok:
        batch.dino_u8 = torch.from_numpy(np.stack([it["dino"] for it in ok]))
        batch.clip_u8 = torch.from_numpy(np.stack([it["clip"] for it in ok]))
        batch.tokens = torch.cat([it["tokens"] for it in ok])
        batch.rows = [it["row"] for it in ok]
    return batch
