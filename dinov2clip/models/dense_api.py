"""DinoV2Clip's dense side, as a mixin: every patch token in the text space, the segmentation
protocol's scorers for each dense head, heatmaps and label maps. It reads the model's dino,
dino_spec, projector, pooling, n_registers, device, dtype, run and encode_text
(models/inference.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from dinov2clip.config import ConfigError
from dinov2clip.device import autocast
from dinov2clip.models.preprocess import ImageInput, normalise, open_image


class DenseMixin:
    def dense_head(self):
        """The head that maps patch tokens into the text space (the run's projector)."""
        from dinov2clip.dense.heads import ProjectorHead

        return ProjectorHead(self.projector, self.pooling)

    def _patch_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, w, dim) per-patch features in the teacher's space, not normalised, for a
        normalised (B, 3, H, W) input; H and W are cut down to whole patches."""
        from dinov2clip.dense.heads import split_tokens

        hidden, grid = self._hidden_states(x)
        cls, patches = split_tokens(hidden, self.n_registers, grid)
        return self.dense_head()(cls, patches)

    @torch.inference_mode()
    def encode_patches(self, images: ImageInput) -> torch.Tensor:
        """(n, h, w, dim) float32 on CPU, L2-normalised: each patch of DINOv2's crop (as
        encode_image cuts it) in the teacher's space; registers are left out."""
        outs = [F.normalize(self._patch_features(x), dim=-1).cpu()
                for x in self._batches(images, self.dino_spec)]
        return torch.cat(outs) if outs else torch.zeros(0, 0, 0, self.dim)

    def image_tensor(self, image: Image.Image | str | Path) -> torch.Tensor:
        """(1, 3, H, W) float at the image's own size, normalised for DINOv2: what the
        segmentation protocol resizes and slides over."""
        from dinov2clip.models.preprocess import rgb_on_white

        rgb = np.asarray(rgb_on_white(open_image(image)), dtype=np.float32)
        return normalise(torch.from_numpy(rgb)[None], self.dino_spec)

    def dense_scorer(self, text: torch.Tensor, head: str = "projector", bg_clean: bool = False):
        """The protocol's scorer: a window -> (C, h, w) cosines with text (C, dim), teacher
        text embeddings. head: "projector" (the run's projector on every patch token) or
        "talk2dino" (the patch tokens against the text mapped by the run's talk2dino head;
        bg_clean: its background cleaning from the last block's head attention)."""
        from dinov2clip.dense.protocol import patch_scorer
        from dinov2clip.dense.talk2dino import Talk2DinoMap, talk2dino_scorer

        if head == "projector":
            return patch_scorer(lambda x: self._patch_features(x)[0], text.to(self.device))
        if head != "talk2dino":
            raise ConfigError(f"unknown dense head {head!r} (known: projector, talk2dino)")
        if self.run is None:
            raise ConfigError(f"the {head} head is read from a run: load the model with "
                              "DinoV2Clip.from_pretrained")
        if head not in self._dense_maps:  # loaded strictly on first use
            self._dense_maps[head] = Talk2DinoMap.load(
                self.run.dense_head_config(head), self.run.dense_head_weights(head),
                self.device).requires_grad_(False)
        mapped = self._dense_maps[head](text.to(self.device).float())
        return talk2dino_scorer(self._window_tokens, mapped, bg_clean)

    def _window_tokens(self, x: torch.Tensor):
        """One normalised window -> dense.talk2dino.window_tokens' (patches, pooled, attention)."""
        from dinov2clip.dense.attention import ClsAttention
        from dinov2clip.dense.talk2dino import window_tokens

        if self.dino is not None and self._cls_attention is None:  # the last block's weights,
            self._cls_attention = ClsAttention(self.dino)  # kept by a hook
        hidden, grid = self._hidden_states(x)
        return window_tokens(self.dino, self.n_registers, self._cls_attention, hidden, grid)

    def _hidden_states(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The backbone's last hidden states for a normalised (B, 3, H, W) input cut down to
        whole patches, and the (h, w) patch grid."""
        if self.dino is None:
            raise ConfigError("this DinoV2Clip was loaded with image_tower=False")
        p = _patch_size(self.dino)
        h, w = x.shape[-2] // p, x.shape[-1] // p
        with autocast(self.device, self.dtype):
            hidden = self.dino(pixel_values=x[..., :h * p, :w * p].to(self.device)
                               ).last_hidden_state
        return hidden, (h, w)

    @torch.inference_mode()
    def heatmap(self, image: Image.Image | str | Path, text: str, protocol=None,
                head: str = "projector", bg_clean: bool = False,
                pamr: bool = False) -> torch.Tensor:
        """(H, W) float32 cosine between text and each pixel's patch, at the image's size,
        under the segmentation protocol (short side 448, sliding windows, bilinear); pamr: each
        window's map refined by its pixels first (dense/pamr.py), so it follows the edges."""
        from dataclasses import replace

        from dinov2clip.dense.protocol import Protocol, segment_logits

        x = self.image_tensor(image)
        scorer = self.dense_scorer(self.encode_text([text]), head, bg_clean)
        proto = replace(protocol or Protocol(), pamr=pamr)  # the argument decides, as in segment
        return segment_logits(x, scorer, proto, tuple(x.shape[-2:]))[0].cpu()

    @torch.inference_mode()
    def segment(self, image: Image.Image | str | Path, classes: Sequence[str],
                background: float | None = None, protocol=None, head: str = "projector",
                bg_clean: bool = False, pamr: bool = False) -> torch.Tensor:
        """(H, W) int64 label map at the image's size: the index of the best class in classes;
        with background (a cosine threshold), 0 is background and classes[i] is i + 1; pamr:
        each window's class scores refined by its pixels (dense/pamr.py)."""
        from dataclasses import replace

        from dinov2clip.dense.prompts import class_embeddings
        from dinov2clip.dense.protocol import Protocol, predict

        if not classes:
            raise ConfigError("segment: no classes given")
        proto = replace(protocol or Protocol(), bg_threshold=background, pamr=pamr)
        x = self.image_tensor(image)
        text = class_embeddings(self.encode_text, list(classes))
        return predict(x, self.dense_scorer(text, head, bg_clean), proto, tuple(x.shape[-2:]))


def _patch_size(dino) -> int:
    patch = dino.config.patch_size
    return int(patch[0] if isinstance(patch, list | tuple) else patch)
