"""The Talk2DINO head (Barsellotti et al., 2024): the teacher's text mapped into the backbone's
patch space, psi(t) = W2 tanh(W1 t + b1) + b2, so a patch token scores a text by its cosine with
psi(t). The backbone and the teacher stay frozen; only psi is trained (train/dense_head.py).

Training pairs a caption with one image: psi(t) against each of the image's per-head
CLS-attention-pooled patch embeddings (dense/attention.py), the best head scoring the pair, in a
symmetric InfoNCE over the batch. Saved as a JSON config + safetensors, loaded strictly.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import atomic_write_json


@dataclass(frozen=True)
class Talk2DinoConfig:
    text_dim: int  # the teacher's embedding width
    dino_dim: int  # the backbone's width
    hidden: int  # the middle layer's width (Talk2DINO: the backbone's)


class Talk2DinoMap(nn.Module):
    def __init__(self, cfg: Talk2DinoConfig):
        super().__init__()
        self.cfg = cfg
        self.fc1 = nn.Linear(cfg.text_dim, cfg.hidden)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dino_dim)
        # the InfoNCE temperature, learned, initialised at 1/0.07 as CLIP's
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(B, text_dim) teacher text embeddings -> (B, dino_dim), not normalised."""
        return self.fc2(torch.tanh(self.fc1(text)))

    def save(self, config_path: Path, weights_path: Path) -> None:
        from dinov2clip.models.projector import save_weights

        atomic_write_json(config_path, {"kind": "talk2dino", **asdict(self.cfg)})
        save_weights(self, weights_path)

    @classmethod
    def load(cls, config_path: Path, weights_path: Path,
             device: str | torch.device = "cpu") -> Talk2DinoMap:
        for p in (config_path, weights_path):
            if not Path(p).is_file():
                raise ConfigError(f"no talk2dino head: {p} missing (train it with "
                                  "train.dense.head = \"talk2dino\")")
        raw = json.loads(Path(config_path).read_text())
        if raw.pop("kind", None) != "talk2dino":
            raise ConfigError(f"{config_path} is not a talk2dino head config")
        try:
            cfg = Talk2DinoConfig(**{k: int(raw.pop(k)) for k in ("text_dim", "dino_dim",
                                                                     "hidden")})
        except KeyError as err:
            raise ConfigError(f"{config_path} lacks {err}") from None
        if raw:
            raise ConfigError(f"{config_path}: unknown keys {', '.join(sorted(raw))}")
        model = cls(cfg)
        model.load_state_dict(load_file(str(weights_path), device=str(device)), strict=True)
        return model.to(device).eval()


def best_head_similarity(mapped: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """(B_t, D) mapped texts x (B_i, heads, D) pooled heads -> (B_t, B_i): per pair, the cosine
    of the head most similar to the text (Talk2DINO's max over heads)."""
    t = F.normalize(mapped.float(), dim=-1)
    v = F.normalize(heads.float(), dim=-1)
    return torch.einsum("td,ihd->tih", t, v).amax(dim=-1)


def infonce(model: Talk2DinoMap, text: torch.Tensor, heads: torch.Tensor) -> torch.Tensor:
    """The symmetric in-batch InfoNCE of Talk2DINO: caption j belongs to image j."""
    scale = model.log_scale.clamp(max=math.log(100.0)).exp()
    logits = scale * best_head_similarity(model(text), heads)  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def cleaned(logits: torch.Tensor, mapped: torch.Tensor, pooled: torch.Tensor,
            attention: torch.Tensor) -> torch.Tensor:
    """Talk2DINO's background cleaning for one window. logits (C, h, w) patch cosines; mapped
    (C, D) texts; pooled (heads, D); attention (heads, h, w) CLS attention over patches.

    Each class weighs the heads by a softmax of its cosine with each head's pooled embedding;
    the weighted attention map, rescaled to the logits' range, is averaged with the logits, so
    patches the text-relevant heads ignore (background) lose score."""
    sim = F.normalize(mapped.float(), dim=-1) @ F.normalize(pooled.float(), dim=-1).T  # (C, H)
    att = torch.einsum("ch,hyx->cyx", sim.softmax(dim=-1), attention.float())  # (C, h, w)
    lo = att.flatten(1).amin(1)[:, None, None]
    hi = att.flatten(1).amax(1)[:, None, None]
    l_lo = logits.flatten(1).amin(1)[:, None, None]
    l_hi = logits.flatten(1).amax(1)[:, None, None]
    att = (att - lo) / (hi - lo).clamp_min(1e-12) * (l_hi - l_lo) + l_lo
    return 0.5 * (logits + att)


def talk2dino_scorer(tokens, mapped: torch.Tensor, clean: bool = False):
    """The protocol's scorer: a window -> (C, h, w) cosines of its patch tokens with the mapped
    texts (C, D). tokens(window) -> (patches (h, w, D), pooled (heads, D), attention
    (heads, h, w)); clean: Talk2DINO's background cleaning (cleaned above)."""
    text = F.normalize(mapped.float(), dim=-1)

    def score(window: torch.Tensor) -> torch.Tensor:
        patches, pooled, attention = tokens(window)
        logits = torch.einsum("hwd,cd->chw", F.normalize(patches.float(), dim=-1),
                              text.to(patches.device))
        return cleaned(logits, text, pooled, attention) if clean else logits

    return score


def window_tokens(dino, n_registers: int, cls_attention, hidden: torch.Tensor, grid):
    """For one window's forward (last_hidden_state (1, 1+R+h*w, D), with cls_attention, a
    ClsAttention on dino, holding its weights): (patches (h, w, D), per-head pooled
    (heads, D), the CLS attention over patches (heads, h, w)), float32."""
    from dinov2clip.dense.attention import head_pooled, patch_attention
    from dinov2clip.dense.heads import split_tokens

    weights = cls_attention.take()
    _, patches = split_tokens(hidden, n_registers, grid)
    attention = patch_attention(weights, n_registers)[0].reshape(-1, *grid)
    return patches[0], head_pooled(weights, hidden, n_registers)[0], attention
