"""Frozen text-embedding models: the text side of a two-tower run.

Two ways in, one interface (TextEncoder.encode: captions -> (m, D) float32, L2-normalised):
- pooling "auto": a sentence-transformers model (all-roberta-large-v1, gte-large, ...) through
  sentence-transformers itself, so its own modules (pooling, dense layers, normalisation) apply
  exactly as its authors saved them;
- pooling mean | cls | last_token: a plain transformers model, its last hidden state pooled
  over the real tokens (padding masked out); last_token is for decoder-based embedders.
Each tokenises with its own tokenizer, cut at its max length.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from dinov2clip.config import TEXT_POOLINGS, ConfigError
from dinov2clip.models.identity import text_encoder_weights
from dinov2clip.models.loaders import quiet_model_bars


class TextEncoder:
    def __init__(self, name: str, pooling: str, device: torch.device, revision: str = "",
                 max_length: int = 0):
        if pooling not in TEXT_POOLINGS:
            raise ConfigError(f"text pooling must be one of {', '.join(TEXT_POOLINGS)}, "
                              f"got {pooling!r}")
        self.name, self.pooling, self.revision = name, pooling, revision
        self.device = device
        try:
            with quiet_model_bars():
                self._load(max_length)
        except (OSError, ValueError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot load text encoder {name!r}: {first}") from None

    def _load(self, max_length: int) -> None:
        if self.pooling == "auto":
            from sentence_transformers import SentenceTransformer

            self.st = SentenceTransformer(self.name, device=str(self.device),
                                          revision=self.revision or None)
            if max_length:
                self.st.max_seq_length = max_length
            self.max_length = int(self.st.max_seq_length)
            # sentence-transformers 6 renamed it; earlier versions have only the old name
            dim = getattr(self.st, "get_embedding_dimension", None) or \
                self.st.get_sentence_embedding_dimension
            self.dim = int(dim())
            self.st.eval()
            return
        from transformers import AutoModel, AutoTokenizer

        self.st = None
        rev = self.revision or None
        self.tokenizer = AutoTokenizer.from_pretrained(self.name, revision=rev)
        self.model = AutoModel.from_pretrained(self.name, revision=rev).eval().to(self.device)
        limit = int(getattr(self.model.config, "max_position_embeddings", 0) or 512)
        own = int(min(self.tokenizer.model_max_length, limit))  # tokenizers often say 1e30
        self.max_length = min(max_length, own) if max_length else own
        self.dim = int(self.model.config.hidden_size)

    @torch.inference_mode()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(len(texts), dim) float32 on the encoder's device, L2-normalised."""
        if not texts:
            return torch.zeros(0, self.dim, device=self.device)
        if self.st is not None:
            out = self.st.encode(list(texts), batch_size=len(texts), convert_to_tensor=True,
                                 show_progress_bar=False, device=str(self.device))
            return F.normalize(out.float(), dim=-1)
        tok = self.tokenizer(list(texts), padding=True, truncation=True,
                             max_length=self.max_length, return_tensors="pt").to(self.device)
        hidden = self.model(**tok).last_hidden_state.float()  # (m, L, D)
        return F.normalize(pool_tokens(hidden, tok["attention_mask"], self.pooling), dim=-1)

    def describe(self) -> dict:
        """What identifies these caption embeddings (hashed into the set's models hash)."""
        out = {"name": self.name, "pooling": self.pooling, "max_length": self.max_length,
               "dim": self.dim, "library": "sentence-transformers" if self.st is not None
               else "transformers",
               "weights": text_encoder_weights(self.name, self.revision, self._commit())}
        if self.st is not None:  # the modules that turn tokens into the embedding
            out["modules"] = [type(m).__name__ for m in self.st]
        return out

    def _commit(self) -> str | None:
        model = self.model if self.st is None else _first_hf_model(self.st)
        config = getattr(model, "config", None)
        return getattr(config, "_commit_hash", None)


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(m, L, D) hidden states and their (m, L) attention mask -> (m, D). mean: over real
    tokens; cls: the first token; last_token: the last real token, whichever side pads."""
    if pooling == "cls":
        return hidden[:, 0]
    m = mask.to(hidden.dtype).unsqueeze(-1)  # (m, L, 1)
    if pooling == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    if pooling == "last_token":
        positions = torch.arange(mask.shape[1], device=mask.device)
        last = (mask * positions).argmax(dim=1)  # highest real position: right or left padding
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ConfigError(f"text pooling {pooling!r} is not a transformers pooling "
                      f"(known: {', '.join(p for p in TEXT_POOLINGS if p != 'auto')})")


def _first_hf_model(st):
    for module in st.modules():
        if hasattr(module, "config") and hasattr(module.config, "model_type"):
            return module
    return None


def load_text_encoder(description: dict, device: torch.device) -> TextEncoder:
    """The encoder a set's models description names, pinned to the commit it recorded."""
    commit = (description.get("weights") or {}).get("commit") or ""
    name = description["name"]
    return TextEncoder(name, description["pooling"], device,
                       revision="" if Path(name).is_dir() else commit,
                       max_length=int(description.get("max_length") or 0))
