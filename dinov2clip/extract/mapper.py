"""The only place models run in extract: the DINO backbone, an optional teacher and an optional
text encoder (at least one of the two); batch in, arrays out."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dinov2clip.cpu_threads import clip_towers, dino_tower, text_encoder_tower
from dinov2clip.dense.attention import ClsAttention, head_pooled
from dinov2clip.device import autocast
from dinov2clip.models.identity import clip_weights, dino_weights, tokenizer_info
from dinov2clip.models.loaders import cls_and_patch_mean, patch_token_count, register_count
from dinov2clip.models.preprocess import PreprocessSpec, normalise
from dinov2clip.store import Embeddings


class Mapper:
    def __init__(self, dino, dino_spec: PreprocessSpec, clip, clip_spec: PreprocessSpec,
                 device: torch.device, dtype: torch.dtype, text_encoder=None,
                 dino_heads: bool = False):
        self.dino, self.clip = dino, clip  # clip: an open_clip model, or None (no teacher)
        self.text_encoder = text_encoder  # a models.text_encoders.TextEncoder, or None
        # extract.dino_heads: the last block's CLS attention, kept by a hook on each forward
        self.cls_attention = ClsAttention(dino) if dino_heads else None
        self.dino_spec, self.clip_spec = dino_spec, clip_spec
        self.device, self.dtype = device, dtype
        self.n_registers = register_count(dino)
        self.n_patch_tokens = patch_token_count(dino, dino_spec.crop)
        self._buffers: dict[str, torch.Tensor] = {}
        self.clip_dim = 0 if clip is None else (
            int(getattr(clip.visual, "output_dim", 0) or 0) or self._probe_clip_dim())

    def _input_buffer(self, tower: str, shape: torch.Size) -> torch.Tensor | None:
        """On CPU, one reused float buffer per tower: a fresh ~40 MB tensor per batch costs
        more in page faults than the tiny test models cost to run. (CUDA's allocator caches.)"""
        if self.device.type != "cpu":
            return None
        b, h, w, _ = shape
        buf = self._buffers.get(tower)
        if buf is None or buf.shape[0] < b or buf.shape[2:] != (h, w):
            buf = self._buffers[tower] = torch.empty((b, 3, h, w))
        return buf[:b]

    def towers(self) -> list[tuple[int, int]]:
        """(weights per token, tokens per image) of each model this runs: cpu_threads' costs."""
        towers = [dino_tower(self.dino, self.dino_spec.crop)]
        if self.clip is not None:
            towers += clip_towers(self.clip, self.clip_spec.crop)
        if self.text_encoder is not None:
            towers.append(text_encoder_tower(self.text_encoder))
        return towers

    def _probe_clip_dim(self) -> int:
        x = torch.zeros(1, 3, self.clip_spec.crop, self.clip_spec.crop, device=self.device)
        with torch.inference_mode():
            return int(self.clip.encode_image(x).shape[-1])

    @property
    def dims(self) -> dict:
        text = {"text": self.text_encoder.dim} if self.text_encoder is not None else {}
        if self.cls_attention is not None:
            text["heads"] = int(self.dino.config.num_attention_heads)
        clip = {"clip": self.clip_dim} if self.clip is not None else {}
        return {"dino": int(self.dino.config.hidden_size), **clip, **text}

    def __call__(self, dino_u8: torch.Tensor, clip_u8: torch.Tensor,
                 tokens: torch.Tensor, captions: list[str] | None = None) -> Embeddings:
        return self.submit(dino_u8, clip_u8, tokens, captions).result()

    @torch.inference_mode()
    def submit(self, dino_u8: torch.Tensor, clip_u8: torch.Tensor,
               tokens: torch.Tensor, captions: list[str] | None = None) -> Pending:
        """Queue one batch on the device; .result() waits for it (GPU work stays queued).
        captions: the batch's caption strings, in tokens' row order (for the text encoder,
        which tokenises with its own tokenizer)."""
        dev = self.device
        dino_x = normalise(dino_u8.to(dev, non_blocking=True), self.dino_spec,
                           out=self._input_buffer("dino", dino_u8.shape))
        with autocast(dev, self.dtype):
            hidden = self.dino(pixel_values=dino_x).last_hidden_state  # (B, 1+R+P, D), post-norm
        cls, patch_mean = cls_and_patch_mean(hidden, self.n_registers)
        out = {"dino_cls": cls, "dino_mean": patch_mean}
        if self.clip is not None:
            clip_x = normalise(clip_u8.to(dev, non_blocking=True), self.clip_spec,
                               out=self._input_buffer("clip", clip_u8.shape))
            with autocast(dev, self.dtype):
                img = self.clip.encode_image(clip_x)  # (B, D_clip)
                txt = self.clip.encode_text(tokens.to(dev, non_blocking=True))  # (m, D_clip)
            out["clip_image"] = F.normalize(img.float(), dim=-1)
            out["clip_text"] = F.normalize(txt.float(), dim=-1)
        if self.text_encoder is not None:
            with autocast(dev, self.dtype):
                out["text_enc"] = self.text_encoder.encode(captions)  # (m, D_text), unit
        if self.cls_attention is not None:  # (B, heads, D): what talk2dino trains against
            out["dino_heads"] = head_pooled(self.cls_attention.take(), hidden, self.n_registers)
        # fp16 on the device halves the copy; non_blocking lands it in pinned host memory.
        host = {k: v.to(torch.float16).to("cpu", non_blocking=True) for k, v in out.items()}
        event = None
        if dev.type == "cuda":
            event = torch.cuda.Event()
            event.record()
        return Pending(host, event)


@dataclass
class Pending:
    host: dict  # name -> float16 CPU tensor, filled once `event` has completed
    event: object | None  # a recorded torch.cuda.Event, or None on CPU

    def result(self) -> Embeddings:
        if self.event is not None:
            self.event.synchronize()
        arrays = {k: v.numpy() for k, v in self.host.items()}
        return Embeddings(**{"clip_image": None, "clip_text": None, **arrays})


def describe(mapper: Mapper, dino_name: str, clip_name: str, clip_pretrained: str,
             tokenizer=None, dino_revision: str = "") -> dict:
    """What identifies the models, weights and preprocessing (hashed into the done-markers).
    The text encoder's entry is there only with one, so the hash of a set without it is as
    before; without a teacher, clip_model is "" (the store reads that as "no teacher arrays")
    and nothing else of the teacher is named."""
    text = {} if mapper.text_encoder is None else {
        "text_encoder": mapper.text_encoder.describe()}  # name, pooling, max length, weights
    heads = {}
    if mapper.cls_attention is not None:  # part of the hash: a set with them is another set
        heads = {"dino_heads": {"layer": "last", "pooling": "per-head CLS attention, softmax "
                                "over patch tokens (registers excluded), of last_hidden_state",
                                "attention": "eager (last block)"}}
    if mapper.clip is None:
        return {
            **heads,
            "dino_model": dino_name,
            "dino_type": str(mapper.dino.config.model_type),
            "dino_registers": mapper.n_registers,
            "dino_patch_tokens": mapper.n_patch_tokens,
            "dino_preprocess": mapper.dino_spec.to_dict(),
            "clip_model": "",
            "dims": mapper.dims,
            "compute_dtype": str(mapper.dtype).replace("torch.", ""),
            "weights": {"dino": dino_weights(mapper.dino, dino_name, dino_revision)},
            **text,
        }
    return {
        **heads,
        "dino_model": dino_name,
        "dino_type": str(mapper.dino.config.model_type),
        "dino_registers": mapper.n_registers,
        "dino_patch_tokens": mapper.n_patch_tokens,  # token_mean pooling weighs the mean by it
        "dino_preprocess": mapper.dino_spec.to_dict(),
        "clip_model": clip_name,
        "clip_pretrained": clip_pretrained,
        "clip_preprocess": mapper.clip_spec.to_dict(),
        "dims": mapper.dims,
        "compute_dtype": str(mapper.dtype).replace("torch.", ""),
        "weights": {"dino": dino_weights(mapper.dino, dino_name, dino_revision),
                    "clip": clip_weights(clip_name, clip_pretrained)},
        "clip_tokenizer": tokenizer_info(tokenizer),  # context length, HF source, cleaning
        **text,
    }


