"""Exact inner-product search with FAISS, and recall computed from its top-k lists."""

from __future__ import annotations

import logging

import numpy as np
import torch

log = logging.getLogger(__name__)
_GPU_OK: bool | None = None  # probed once per process


def _gpu_usable() -> bool:
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


def faiss_topk(queries: torch.Tensor, keys: torch.Tensor, k: int,
               use_gpu: bool = True) -> torch.Tensor:
    """(n_queries, k) indices of the highest inner products, best first (IndexFlatIP, exact)."""
    import faiss

    keys_np = np.ascontiguousarray(keys.float().cpu().numpy())
    queries_np = np.ascontiguousarray(queries.float().cpu().numpy())
    index = faiss.IndexFlatIP(keys_np.shape[1])
    if use_gpu and _gpu_usable():
        index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
    index.add(keys_np)
    _, idx = index.search(queries_np, min(k, keys_np.shape[0]))
    return torch.from_numpy(idx.astype(np.int64))


def recall_t2i_from_topk(topk: torch.Tensor, caption_to_image: torch.Tensor,
                         ks: list[int]) -> dict[int, float]:
    """topk: (n_captions, K) image ids. Share of captions with their own image in the top k."""
    hit = topk == caption_to_image[:, None]
    return {k: float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def recall_i2t_from_topk(topk: torch.Tensor, caption_to_image: torch.Tensor,
                         ks: list[int]) -> dict[int, float]:
    """topk: (n_images, K) caption ids. Share of images with any own caption in the top k."""
    owners = caption_to_image[topk]  # (n_images, K) image id of each retrieved caption
    hit = owners == torch.arange(topk.shape[0])[:, None]
    return {k: float(hit[:, :k].any(dim=1).float().mean()) for k in ks}


def faiss_recalls(image: torch.Tensor, text: torch.Tensor, caption_to_image: torch.Tensor,
                  ks: list[int], use_gpu: bool = True) -> dict[str, float]:
    """R@k both ways in percent, searched with FAISS; keys match metrics.retrieval_recalls."""
    kmax = max(ks)
    t2i = recall_t2i_from_topk(faiss_topk(text, image, kmax, use_gpu), caption_to_image, ks)
    i2t = recall_i2t_from_topk(faiss_topk(image, text, kmax, use_gpu), caption_to_image, ks)
    out = {f"t2i_R@{k}": 100.0 * v for k, v in t2i.items()}
    out.update({f"i2t_R@{k}": 100.0 * v for k, v in i2t.items()})
    return out
