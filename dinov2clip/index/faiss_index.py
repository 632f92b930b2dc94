"""FAISS inner-product indexes over L2-normalised embeddings (so scores are cosines).

Exact (IndexFlatIP) up to a size threshold; beyond it IVF (IndexIVFFlat, nlist ~ 4 sqrt(n)) or
HNSW. Vectors are added chunk by chunk, so building never holds the whole collection twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from dinov2clip.config import ConfigError

KINDS = ("auto", "flat", "ivf", "hnsw")
_MIN_POINTS_PER_LIST = 39  # below this faiss's k-means warns: too few points per centroid
_TRAIN_POINTS_PER_LIST = 256  # faiss's own cap on k-means training points per centroid
HNSW_M = 32  # graph degree
HNSW_EF_SEARCH = 128


def choose_kind(kind: str, n: int, exact_max: int) -> str:
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "auto":
        return "flat" if n <= exact_max else "ivf"
    return kind


def ivf_lists(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // _MIN_POINTS_PER_LIST))


def default_nprobe(nlist: int) -> int:
    return max(1, min(nlist, max(8, nlist // 16)))


def build(kind: str, dim: int, n: int, chunks: Callable[[], Iterator[np.ndarray]],
          seed: int = 0, reuse=None, reused_info: dict | None = None) -> tuple[object, dict]:
    """An index holding every row of chunks() in order, and what search needs to know about it.

    chunks: called once per pass; yields (rows, dim) float32 L2-normalised arrays.
    reuse: an earlier index of this kind whose training still fits (see index.build): an IVF
    one keeps its centroids and is refilled; an HNSW one holds a prefix of the rows and gets the
    rest appended.
    """
    import faiss

    if reuse is not None and reuse.d == dim:
        return _refill(reuse, kind, n, chunks, reused_info or {})
    info: dict = {"kind": kind}
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efSearch = HNSW_EF_SEARCH
        info.update(hnsw_m=HNSW_M, ef_search=HNSW_EF_SEARCH)
    elif kind == "ivf":
        nlist = ivf_lists(n)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist,
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(_training_sample(chunks, n, nlist * _TRAIN_POINTS_PER_LIST, seed))
        index.nprobe = default_nprobe(nlist)
        info.update(nlist=nlist, nprobe=index.nprobe, trained_n=n)
    else:
        raise ConfigError(f"unknown index kind {kind!r}")
    for x in chunks():
        index.add(np.ascontiguousarray(x, dtype=np.float32))
    if index.ntotal != n:
        raise RuntimeError(f"index holds {index.ntotal} vectors, expected {n}")
    return index, info


def _refill(index, kind: str, n: int, chunks, reused_info: dict) -> tuple[object, dict]:
    if kind == "ivf":
        index.reset()  # drops the vectors, keeps the trained centroids
        skip = 0
        info = {"kind": kind, "nlist": index.nlist, "nprobe": index.nprobe,
                "trained_n": reused_info["trained_n"]}
    elif kind == "hnsw":
        skip = index.ntotal  # rows already in the graph; HNSW cannot remove any
        info = {"kind": kind, "hnsw_m": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    else:
        raise ConfigError(f"a {kind} index is never reused")
    start = 0
    for x in chunks():
        new = x[max(0, skip - start):]
        if len(new):
            index.add(np.ascontiguousarray(new, dtype=np.float32))
        start += len(x)
    if index.ntotal != n:
        raise RuntimeError(f"index holds {index.ntotal} vectors, expected {n}")
    return index, info


def _training_sample(chunks, n: int, want: int, seed: int) -> np.ndarray:
    """Up to `want` rows drawn uniformly from all chunks, for k-means."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(n, size=min(n, want), replace=False))
    parts, start = [], 0
    for x in chunks():
        mine = keep[(keep >= start) & (keep < start + len(x))] - start
        parts.append(np.asarray(x[mine], dtype=np.float32))
        start += len(x)
    return np.ascontiguousarray(np.concatenate(parts))


def configure_search(index, info: dict, nprobe: int = 0) -> None:
    """Search-time knobs, as built or as asked for."""
    if info.get("kind") == "ivf":
        index.nprobe = nprobe or int(info.get("nprobe", 8))
    elif info.get("kind") == "hnsw":
        index.hnsw.efSearch = int(info.get("ef_search", HNSW_EF_SEARCH))
