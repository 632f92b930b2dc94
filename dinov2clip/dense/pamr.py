"""Pixel-Adaptive Mask Refinement (PAMR; Araslanov & Roth, CVPR 2020), as TCL and Talk2DINO
apply it to each sliding window's class scores.

Each pixel i has 8 neighbours j at every dilation d: the 3 x 3 ring at distance d, the image's
edge replicated. Per colour channel, its affinity to j is -|x_i - x_j| / (1e-8 + 0.1 sigma_i),
sigma_i the standard deviation (unbiased) of the channel over i's 3 x 3 neighbourhoods at every
dilation together (the centre counted once per dilation, as the reference code stacks them);
the affinities are averaged over the channels and softmaxed over all neighbours of all
dilations. The scores are then replaced `iterations` times by their affinity-weighted mean over
the neighbours. Classes never mix, so refining them in chunks gives the same result.

A channel changed as a x + b (a != 0) scales |x_i - x_j| and sigma_i by the same |a|, so the
affinities of a window normalised for the backbone, (x - mean) / std per channel, are those of
its raw pixels (but for the 1e-8): the protocol refines with the very window it scored.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ITERATIONS = 10
DILATIONS = (1, 2, 4, 8, 12, 24)
_RING = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0))


def settings(iterations: int = ITERATIONS, dilations: tuple[int, ...] = DILATIONS) -> dict:
    """What a result records about the refinement it used."""
    return {"iterations": iterations, "dilations": list(dilations), "neighbourhood": "3x3 ring",
            "padding": "replicate", "applied_to": "each window's class scores at its pixels, "
            "before the background channel"}


def _shifted(x: torch.Tensor, d: int) -> list[torch.Tensor]:
    """x (N, C, H, W) seen from each of the 8 ring offsets at dilation d: element [.., y, x] of
    the k-th view is x[.., y + dy d, x + dx d], coordinates clamped to the edge."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (d, d, d, d), mode="replicate")
    return [padded[..., (1 + dy) * d:(1 + dy) * d + h, (1 + dx) * d:(1 + dx) * d + w]
            for dy, dx in _RING]


def affinity(image: torch.Tensor, dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """(8 * len(dilations), H, W) float32 weights, summing to 1 over dim 0, of each pixel's
    neighbours in the order _shifted gives them, dilation by dilation. image: (1, K, H, W)."""
    x = image.float()
    ring = torch.stack([v for d in dilations for v in _shifted(x, d)])  # (8D, 1, K, H, W)
    # the 3 x 3 neighbourhood at each dilation, centre included: 9D values per pixel and channel
    sigma = torch.cat([ring, x[None].expand(len(dilations), *x.shape)]).std(0)  # (1, K, H, W)
    logits = -(ring - x).abs_().div_(1e-8 + 0.1 * sigma)  # (8D, 1, K, H, W)
    return torch.softmax(logits.mean(2)[:, 0], dim=0)


def pamr(image: torch.Tensor, scores: torch.Tensor, iterations: int = ITERATIONS,
         dilations: tuple[int, ...] = DILATIONS) -> torch.Tensor:
    """(C, H, W) float32: scores (C, H, W) refined by image (1, K, h, w), which is first resized
    to the scores' size (bilinear, corners aligned, as Talk2DINO does)."""
    image = image.to(scores.device, torch.float32)
    if tuple(image.shape[-2:]) != tuple(scores.shape[-2:]):
        image = F.interpolate(image, size=tuple(scores.shape[-2:]), mode="bilinear",
                              align_corners=True)
    weights = affinity(image, dilations)  # (8D, H, W)
    mask = scores.float()[None]  # (1, C, H, W)
    for _ in range(iterations):
        # one neighbour offset at a time: memory stays a few copies of the scores, however many
        # classes and dilations
        out = torch.zeros_like(mask)
        views = (v for d in dilations for v in _shifted(mask, d))
        for weight, view in zip(weights, views, strict=True):
            out.addcmul_(weight, view)
        mask = out
    return mask[0]
