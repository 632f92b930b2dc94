"""The per-head CLS-attention pooling against a forward written out by hand: the last block's
input, its LayerNorm, q and k (with RoPE for DINOv3), softmax over the patches, the weighted mean
of the post-norm patch tokens."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dinov2clip.data.tiny_models import build_tiny_dinov2, build_tiny_dinov3
from dinov2clip.dense.attention import ClsAttention, head_pooled, last_attention
from dinov2clip.models.loaders import load_dino, register_count


def _manual(dino, x: torch.Tensor, n_registers: int) -> torch.Tensor:
    att = last_attention(dino)
    block = [m for m in dino.modules() if hasattr(m, "norm1")][-1]
    seen = {}
    hook = block.norm1.register_forward_hook(lambda m, a, out: seen.update(h=out))
    rope = {}
    if hasattr(dino, "rope_embeddings"):
        hook2 = att.register_forward_pre_hook(
            lambda m, a, kw: rope.update(pos=kw["position_embeddings"]), with_kwargs=True)
    with torch.no_grad():
        last = dino(pixel_values=x).last_hidden_state
    hook.remove()
    h = seen["h"]  # (B, N, D): the last block's input after its first LayerNorm
    b, n, d = h.shape
    heads = dino.config.num_attention_heads
    q_lin, k_lin = (att.q_proj, att.k_proj) if hasattr(att, "q_proj") else (att.query, att.key)
    h = h.detach()
    q = q_lin(h).view(b, n, heads, d // heads).transpose(1, 2)
    k = k_lin(h).view(b, n, heads, d // heads).transpose(1, 2)
    if rope:
        hook2.remove()
        from transformers.models.dinov3_vit.modeling_dinov3_vit import apply_rotary_pos_emb

        q, k = apply_rotary_pos_emb(q, k, *rope["pos"])
    q, k = q.detach(), k.detach()
    logits = (q[:, :, 0:1] @ k.transpose(-1, -2))[:, :, 0] / math.sqrt(d // heads)  # (B, H, N)
    w = logits[:, :, 1 + n_registers:].softmax(-1)  # patches only
    return torch.einsum("bhp,bpd->bhd", w, last[:, 1 + n_registers:])


@pytest.mark.parametrize("kind", ["dinov2", "dinov2-reg", "dinov3"])
def test_head_pooling_equals_a_manual_forward(tmp_path, kind):
    if kind == "dinov3":
        path = build_tiny_dinov3(tmp_path / kind)
    else:
        path = build_tiny_dinov2(tmp_path / kind, registers=2 if kind == "dinov2-reg" else 0)
    dino, spec = load_dino(str(path), torch.device("cpu"))
    assert dino.config._attn_implementation != "eager"  # the hook must switch the block itself
    r = register_count(dino)
    x = torch.randn(2, 3, spec.crop, spec.crop)
    expected = _manual(dino, x, r)
    cls_att = ClsAttention(dino)
    with torch.no_grad():
        out = dino(pixel_values=x).last_hidden_state
    pooled = head_pooled(cls_att.take(), out, r)
    cls_att.remove()
    assert pooled.shape == (2, dino.config.num_attention_heads, dino.config.hidden_size)
    torch.testing.assert_close(pooled, expected, atol=1e-5, rtol=1e-4)
    # the heads differ from each other and from the plain patch mean: attention weighs them
    mean = out[:, 1 + r:].mean(1, keepdim=True)
    assert (pooled - mean).abs().max() > 1e-3
    assert (pooled[:, 0] - pooled[:, 1]).abs().max() > 1e-4
    # the other blocks keep the model's own implementation
    assert dino.config._attn_implementation != "eager"
    with pytest.raises(RuntimeError):
        cls_att.take()  # read once: a stale batch is never reused


def test_mapper_caches_the_pooled_heads_and_leaves_the_other_arrays_alone(tmp_path, tiny_models):
    from dinov2clip.extract.mapper import Mapper, describe
    from dinov2clip.models.loaders import load_clip
    from dinov2clip.models.preprocess import normalise

    cpu = torch.device("cpu")
    clip, tokenizer, clip_spec = load_clip(tiny_models["clip"], tiny_models["clip_pretrained"], cpu)
    dino, spec = load_dino(tiny_models["dino_reg"], cpu)
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8, generator=g)
    tokens = tokenizer(["a red circle", "a blue star"])
    plain = Mapper(dino, spec, clip, clip_spec, cpu, torch.float32)(u8, u8, tokens)
    assert plain.dino_heads is None
    mapper = Mapper(dino, spec, clip, clip_spec, cpu, torch.float32, dino_heads=True)
    emb = mapper(u8, u8, tokens)
    expected = _manual(dino, normalise(u8, spec), 4)
    assert emb.dino_heads.dtype == np.float16 and emb.dino_heads.shape == (2, 4, 48)
    np.testing.assert_allclose(emb.dino_heads, expected.numpy(), atol=2e-3)
    for name in ("dino_cls", "dino_mean", "clip_image", "clip_text"):
        np.testing.assert_allclose(getattr(emb, name), getattr(plain, name), atol=1e-3)
    assert mapper.dims["heads"] == 4
    # a set with heads is another set: its description, so its hash, says so
    assert "dino_heads" in describe(mapper, "d", "c", "p", tokenizer)
    assert "dino_heads" not in describe(
        Mapper(dino, spec, clip, clip_spec, cpu, torch.float32), "d", "c", "p", tokenizer)
