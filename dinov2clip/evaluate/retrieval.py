"""Exact inner-product search with FAISS (IndexFlatIP), with ties broken like metrics.py.

FAISS returns the k best keys per query, but its order among equal scores is unspecified, and a
key just past its k-th result may have the same score as the k-th and a lower index, so it
should have made the list. tie_safe_topk therefore asks for one more than k, sorts each list by
(score desc, index asc), and asks again, with twice as many, for every query whose last score
still equals its k-th: until the last score is strictly lower (nothing outside the list can tie
its way in) or the list holds every key. The first k are then exactly the first k under the
(score desc, index asc) order that metrics.py and scores.py count with, so recall from these
lists equals the rank-based recall whenever both see the same scores; tests check it on data
made of exact ties.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from dinov2clip.device import METRIC_DTYPE

log = logging.getLogger(__name__)
_MAX_FETCH = 1024  # GPU FAISS caps k (1024 or 2048 by version); longer tie runs sort exactly
_GPU_OK: bool | None = None  # probed once per process
_GPU_RESOURCES = None  # must outlive every GPU index made with it


def gpu_faiss_usable() -> bool:
    """True when GPU FAISS is installed and actually runs here (PyPI's has no sm_90 kernels)."""
    global _GPU_OK
    if _GPU_OK is None:
        import faiss

        _GPU_OK = False
        if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
            try:
                index = faiss.GpuIndexFlatIP(faiss.StandardGpuResources(), 4)
                index.add(np.eye(4, dtype=np.float32))
                index.search(np.eye(4, dtype=np.float32), 1)
                _GPU_OK = True
            except Exception as err:  # noqa: BLE001 - any failure means: use the CPU
                log.warning("GPU FAISS unusable here (%s); searching on the CPU", err)
    return _GPU_OK


def _as_f32(x: torch.Tensor) -> np.ndarray:
    """fp16 (the cache's storage dtype) is upcast before any score is computed."""
    return np.ascontiguousarray(x.detach().to("cpu", METRIC_DTYPE).numpy())


def flat_ip_index(keys: torch.Tensor, use_gpu: bool = True):
    import faiss

    keys_np = _as_f32(keys)
    index = faiss.IndexFlatIP(keys_np.shape[1])
    if use_gpu and gpu_faiss_usable():
        global _GPU_RESOURCES
        _GPU_RESOURCES = _GPU_RESOURCES or faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(_GPU_RESOURCES, 0, index)
    index.add(keys_np)
    return index


def faiss_topk(queries: torch.Tensor, keys: torch.Tensor, k: int,
               use_gpu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores, ids), each (n_queries, k), best first; FAISS's own order among equal scores."""
    index = flat_ip_index(keys, use_gpu)
    scores, ids = index.search(_as_f32(queries), min(k, keys.shape[0]))
    return torch.from_numpy(scores), torch.from_numpy(ids.astype(np.int64))


def _sorted_by_score_then_id(scores: np.ndarray, ids: np.ndarray):
    order = np.lexsort((ids, -scores), axis=-1)
    return np.take_along_axis(scores, order, -1), np.take_along_axis(ids, order, -1)


def tie_safe_topk(queries: torch.Tensor, keys: torch.Tensor, k: int,
                  use_gpu: bool = True) -> torch.Tensor:
    """(n_queries, k) key ids, the first k under (score desc, index asc), searched with FAISS."""
    n_keys = keys.shape[0]
    k = min(k, n_keys)
    index, q = flat_ip_index(keys, use_gpu), _as_f32(queries)
    out = np.empty((q.shape[0], k), dtype=np.int64)
    todo, fetch = np.arange(q.shape[0]), min(k + 1, n_keys)
    while todo.size:
        if fetch > _MAX_FETCH:  # a run of ties longer than FAISS may return: sort whole rows
            out[todo] = _stable_topk(q[todo], _as_f32(keys), k)
            break
        scores, ids = _sorted_by_score_then_id(*index.search(q[todo], fetch))
        ids = ids.astype(np.int64)
        open_tie = (scores[:, -1] == scores[:, k - 1]) if fetch < n_keys else np.zeros(
            len(todo), dtype=bool)
        out[todo[~open_tie]] = ids[~open_tie, :k]
        todo, fetch = todo[open_tie], min(2 * fetch, n_keys)
    return torch.from_numpy(out)


def _stable_topk(queries: np.ndarray, keys: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ keys.T  # (n, n_keys) float32
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def t2i_ranks_from_topk(topk: torch.Tensor, caption_to_image: torch.Tensor,
                        absent: int) -> torch.Tensor:
    """topk: (n_captions, K) image ids -> (n_captions,) position of the own image, or absent."""
    return _first_hit(topk == caption_to_image[:, None], absent)


def i2t_ranks_from_topk(topk: torch.Tensor, caption_to_image: torch.Tensor,
                        absent: int) -> torch.Tensor:
    """topk: (n_images, K) caption ids -> (n_images,) first own caption's position, or absent."""
    owners = caption_to_image[topk]  # (n_images, K) the image each retrieved caption belongs to
    return _first_hit(owners == torch.arange(topk.shape[0])[:, None], absent)


def _first_hit(hit: torch.Tensor, absent: int) -> torch.Tensor:
    if hit.shape[1] == 0:
        return torch.full((hit.shape[0],), absent, dtype=torch.long)
    return torch.where(hit, torch.arange(hit.shape[1]).expand_as(hit), absent).amin(dim=1)


def faiss_ranks(image: torch.Tensor, text: torch.Tensor, caption_to_image: torch.Tensor,
                cap: int, use_gpu: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(t2i, i2t) ranks clipped at cap, like scores.ranks_from_scores, via two FAISS searches."""
    t2i = t2i_ranks_from_topk(tie_safe_topk(text, image, cap, use_gpu), caption_to_image, cap)
    i2t = i2t_ranks_from_topk(tie_safe_topk(image, text, cap, use_gpu), caption_to_image, cap)
    return t2i.clamp(max=cap), i2t.clamp(max=cap)
