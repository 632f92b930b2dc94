"""R@k both ways for one eval set and three image embeddings: CLIP, projected, ensemble.

Two engines, one tie rule (score desc, index asc), so the same numbers: exactly wherever both
compute the same scores (tests/test_metrics_oracle.py uses data where every score is exact), and
on float data unless FAISS's float32 rounding flips a near-tie at a top-k boundary (no
difference at the bench's real set sizes, bench/eval_speed.py --faiss):
- "exact": ranks in both directions from one screened product per embedding, with the few
  undecided scores computed exactly (scores.py, screen.py). The fastest on a CPU. Where the
  screen is float32 (CPUs without native bf16) the screens are kept, and the ensemble's comes
  from CLIP's and the projection's by linearity, so a set costs two products, not three.
- "faiss": IndexFlatIP searches, one per direction and embedding, with ties fixed up
  (retrieval.py). On a GPU that FAISS can use it is the fast one.
"auto" picks faiss when GPU FAISS is usable, else exact. CLIP's own row does not depend on the
projector, so a SetEval computes it once and reuses it for every checkpoint (--all-epochs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinov2clip.config import ConfigError
from dinov2clip.device import METRIC_DTYPE
from dinov2clip.evaluate.metrics import percent_of, recalls_percent
from dinov2clip.evaluate.retrieval import faiss_ranks, gpu_faiss_usable
from dinov2clip.evaluate.scores import exact_ranks
from dinov2clip.evaluate.screen import EnsembleScreen, Screen, ensemble_screen, screen_dtype

ENGINES = ("auto", "exact", "faiss")
_KEEP_BYTES = 4 << 30  # float32 screens kept for the ensemble's linearity: 1 GB at COCO size


def resolve_engine(name: str, use_gpu: bool) -> str:
    if name not in ENGINES:
        raise ConfigError(f"eval.search: unknown {name!r} (known: {', '.join(ENGINES)})")
    if name == "auto":
        return "faiss" if use_gpu and gpu_faiss_usable() else "exact"
    return name


class SetEval:
    """One eval set's text side and CLIP images, kept for as many projections as asked."""

    def __init__(self, text: torch.Tensor, clip_image: torch.Tensor,
                 caption_to_image: torch.Tensor, ks: list[int], engine: str = "exact",
                 use_gpu: bool = True, screen: torch.dtype | None = None):
        # (n_captions, D) and (n_images, D): upcast from the cache's fp16, then L2-normalised
        # again as the protocol says: fp16 rounding leaves norms off by up to ~1e-3, enough to
        # reorder near-equal scores.
        _check_finite("CLIP text", text)
        _check_finite("CLIP image", clip_image)
        self.text = _unit(text)
        self.clip_image = _unit(clip_image)
        self.c2i = caption_to_image.long()  # (n_captions,)
        self.ks, self.cap = list(ks), max(ks)
        self.engine, self.use_gpu = engine, use_gpu
        self.screen = screen or screen_dtype()  # the exact engine's screen precision
        self._projected_scores: torch.Tensor | None = None  # reused by every rows() call
        self._clip_screen = self._screen(self.clip_image)
        self.clip = self._recalls(self.clip_image, self._clip_screen)

    def rows(self, projected: torch.Tensor) -> dict[str, dict[str, float]]:
        """{'clip', 'projected', 'ensemble'}: R@k in percent, plus the two % of CLIP rows."""
        _check_finite("projected", projected)
        projected = _unit(projected)
        if projected.shape != self.clip_image.shape:
            raise ConfigError(f"projected embeddings are {tuple(projected.shape)}, CLIP's "
                              f"images {tuple(self.clip_image.shape)}")
        mixed = ensemble(self.clip_image, projected)
        screen = self._screen(projected, reuse=True)
        out = {"clip": self.clip, "projected": self._recalls(projected, screen)}
        if screen is not None:
            screen = ensemble_screen(self._clip_screen, screen, self.text, self.clip_image,
                                     projected, mixed)
        out["ensemble"] = self._recalls(mixed, screen)
        out["projected_pct"] = percent_of(self.clip, out["projected"])
        out["ensemble_pct"] = percent_of(self.clip, out["ensemble"])
        return out

    def _screen(self, image: torch.Tensor, reuse: bool = False) -> Screen | None:
        """A kept float32 screen where the CPU has no native bf16; None otherwise (exact_ranks
        then builds and drops its own: bf16 products cost less to redo than to keep, and a set
        too large to keep two score matrices of is screened block by block). `reuse`: into the
        buffer of the previous projection's scores (--all-epochs calls rows() per epoch)."""
        kept_bytes = 2 * 4 * self.text.shape[0] * image.shape[0]  # CLIP's and the projection's
        if self.engine != "exact" or self.screen != torch.float32 or kept_bytes > _KEEP_BYTES:
            return None
        screen = Screen.build(self.text.cpu(), image.cpu(), torch.float32, keep=True,
                              out=self._projected_scores if reuse else None)
        if reuse:
            self._projected_scores = screen.kept
        return screen

    def _recalls(self, image: torch.Tensor, screen: Screen | EnsembleScreen | None = None,
                 ) -> dict[str, float]:
        if self.engine == "exact":
            t2i, i2t = exact_ranks(self.text, image, self.c2i, self.cap, dtype=self.screen,
                                   screen=screen)
        else:
            t2i, i2t = faiss_ranks(image, self.text, self.c2i, self.cap, self.use_gpu)
        return recalls_percent(t2i, i2t, self.ks)


def ensemble(clip_image: torch.Tensor, projected: torch.Tensor) -> torch.Tensor:
    """normalize(clip + projected): (n_images, D), float32."""
    return F.normalize(clip_image.to(METRIC_DTYPE) + projected.to(METRIC_DTYPE), dim=-1)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.to(METRIC_DTYPE), dim=-1)


def _check_finite(what: str, x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ConfigError(f"{what} embeddings contain NaN or inf; refusing to rank them")
