"""R@k both ways for one eval set and three image embeddings: CLIP, projected, ensemble.

Every number is ranked by dinov2clip.retrieval, on the eval device. CLIP's own row does not
depend on the projector, so a SetEval computes it once and reuses it for every checkpoint
(--all-epochs). The ensemble's scores come from the two products already made, by linearity:
t . normalize(u + p) = (t . u + t . p) / |u + p|, so an eval costs two products, not three.

A two-tower run brings its own text side (its text encoder's captions through its text
projector), in a space CLIP's images are not in: its row ranks its texts against its images,
and its ensemble is the mean of the two score matrices, (CLIP's + its own) / 2, score fusion of
two dual encoders. "% of CLIP" is against the same CLIP row in both kinds of run. An eval set
extracted without a teacher (a teacher-less two-tower run) has no CLIP row: rows() gives the
projected row alone, with no ensemble and no "% of CLIP".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.retrieval import all_finite, percent_of, recall_of, score_matrix, unit_float32

NORM_EPS = 1e-12  # F.normalize's: a zero vector stays zero rather than dividing by 0


class SetEval:
    """One eval set's text side and CLIP images, kept for as many projections as asked."""

    def __init__(self, text: torch.Tensor | None, clip_image: torch.Tensor | None,
                 caption_to_image: torch.Tensor, ks: list[int],
                 device: torch.device | str = "cpu", n_images: int = 0):
        """text, clip_image: CLIP's, or both None for a set without a teacher (n_images then
        says how many images the projected rows must have)."""
        self.text, self.clip_image = text, clip_image  # (n_captions, D), (n_images, D)
        self.c2i = caption_to_image.long()  # (n_captions,)
        self.ks, self.device = list(ks), device
        self.n_images = n_images if clip_image is None else clip_image.shape[0]
        self.clip_scores = self.clip = None
        if clip_image is not None:
            _check_finite("CLIP text", text)
            _check_finite("CLIP image", clip_image)
            self.clip_scores = score_matrix(text, clip_image, device)  # (n_captions, n_images)
            self.clip = recall_of(self.clip_scores, self.c2i, self.ks)

    def rows(self, projected: torch.Tensor, text: torch.Tensor | None = None
             ) -> dict[str, dict[str, float]]:
        """{'clip', 'projected', 'ensemble'}: R@k in percent, plus the two % of CLIP rows;
        {'projected'} alone without a teacher. text: a two-tower run's projected captions
        (n_captions, D); None: CLIP's."""
        _check_finite("projected", projected)
        if text is not None:
            _check_finite("projected text", text)
        own = text is not None
        if self.clip is None:  # no teacher: only the run's own towers to rank
            if not own or projected.shape[0] != self.n_images:
                raise ConfigError(f"a set without a teacher ranks a two-tower run's own text "
                                  f"against its {self.n_images} images; got "
                                  f"{tuple(projected.shape)} images")
            scores = score_matrix(text, projected, self.device)
            return {"projected": recall_of(scores, self.c2i, self.ks)}
        if projected.shape[0] != self.clip_image.shape[0] or (
                not own and projected.shape != self.clip_image.shape):
            raise ConfigError(f"projected embeddings are {tuple(projected.shape)}, CLIP's "
                              f"images {tuple(self.clip_image.shape)}")
        scores = score_matrix(text if own else self.text, projected, self.device)
        out = {"clip": self.clip, "projected": recall_of(scores, self.c2i, self.ks)}
        scores += self.clip_scores  # in place: COCO's matrix is 500 MB
        if own:
            scores /= 2
        else:
            mixed = unit_float32(self.clip_image, self.device) + unit_float32(projected,
                                                                              self.device)
            scores /= mixed.norm(dim=-1).clamp_min(NORM_EPS)
        out["ensemble"] = recall_of(scores, self.c2i, self.ks)
        out["projected_pct"] = percent_of(self.clip, out["projected"])
        out["ensemble_pct"] = percent_of(self.clip, out["ensemble"])
        return out


def ensemble(clip_image: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """normalize(normalize(clip) + normalize(projected)): (n_images, D), float32. The ensemble's
    definition; rows() ranks its scores without building it (see the module's docstring)."""
    return F.normalize(unit_float32(clip_image) + unit_float32(projected), dim=-1)


def _check_finite(what: str, x: torch.Tensor) -> None:
    if not all_finite(x):
        raise ConfigError(f"{what} embeddings contain NaN or inf; refusing to rank them")
