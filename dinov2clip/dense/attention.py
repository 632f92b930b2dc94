"""The last block's CLS attention, per head, as the backbone computes it; and the patch tokens
pooled by it, what Talk2DINO's head is trained against.

transformers' DINOv2 / DINOv3 attention modules return their softmax weights only under the
"eager" implementation (SDPA and flash never form them). Only the last block's weights are
needed, so only that block is switched to eager (its own copy of the config): the other blocks
keep the model's implementation, and nothing else about the forward changes.
"""

from __future__ import annotations

import copy

import torch

# The modules that compute softmax(q k^T) in each backbone (transformers 5 names; DINOv3's
# also applies RoPE to the patch tokens' q and k).
_ATTENTION_CLASSES = ("Dinov2Attention", "Dinov2WithRegistersAttention", "DINOv3ViTAttention")


def last_attention(dino) -> torch.nn.Module:
    """The self-attention module of the last block (the one returning (output, weights))."""
    found = [m for m in dino.modules() if type(m).__name__ in _ATTENTION_CLASSES]
    if not found:
        raise ValueError(f"{type(dino).__name__} has no attention module this code knows "
                         f"({', '.join(_ATTENTION_CLASSES)})")
    return found[-1]  # modules() walks the blocks in order


class ClsAttention:
    """Hooks the last block so that each forward leaves `weights`: (B, heads, tokens), the CLS
    query's softmax over every token (CLS, registers, patches), float32."""

    def __init__(self, dino):
        module = last_attention(dino)
        if module.config._attn_implementation != "eager":
            module.config = copy.copy(module.config)  # this block alone; the model's is shared
            module.config._attn_implementation = "eager"
        self.weights: torch.Tensor | None = None
        self._hook = module.register_forward_hook(self._keep)

    def _keep(self, module, args, output) -> None:
        weights = output[1]  # (B, heads, N, N), after softmax
        if weights is None:
            raise RuntimeError("the last attention block returned no weights (not eager)")
        self.weights = weights[:, :, 0].float()

    def take(self) -> torch.Tensor:
        """The weights of the last forward, once: a stale batch is never read twice."""
        if self.weights is None:
            raise RuntimeError("no forward ran since the last take()")
        weights, self.weights = self.weights, None
        return weights

    def remove(self) -> None:
        self._hook.remove()


def patch_attention(cls_weights: torch.Tensor, n_registers: int) -> torch.Tensor:
    """(B, heads, 1+R+P) CLS weights -> (B, heads, P) over the patches alone, summing to 1:
    the softmax restricted to patch tokens (CLS and registers carry no place in the image)."""
    w = cls_weights[:, :, 1 + n_registers:]
    return w / w.sum(-1, keepdim=True).clamp_min(1e-12)


def head_pooled(cls_weights: torch.Tensor, hidden: torch.Tensor, n_registers: int
                ) -> torch.Tensor:
    """(B, heads, D): per head, the patch tokens of last_hidden_state (post-norm, the ones
    inference compares with text) averaged with that head's CLS attention."""
    w = patch_attention(cls_weights, n_registers)
    return torch.einsum("bhp,bpd->bhd", w, hidden.float()[:, 1 + n_registers:])
