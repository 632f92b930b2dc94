"""Search latency and recall@10 of the index kinds `pipeline index` builds, on clustered vectors.

Why: `--exact-max` decides when an exact IndexFlatIP gives way to IVF. This measures, side by
side in one run, how query time grows with n for each kind and what IVF and HNSW give up in
recall against exact search. Vectors are synthetic (a Gaussian mixture on the unit sphere, 512-d
like CLIP ViT-B/16); real embeddings cluster too, so recall here is indicative, not a guarantee.

    .venv/bin/python bench/index_search.py --sizes 20000 100000 --queries 200
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from dinov2clip.index import faiss_index


def clustered(n: int, dim: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    x = centres[rng.integers(0, len(centres), n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def time_queries(index, q: np.ndarray, k: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median seconds per query batch over repeats, and the ids found."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index.search(q, k)
        times.append(time.perf_counter() - t)
    return statistics.median(times), ids


def recall(truth: np.ndarray, found: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(a) for a, b in zip(truth, found,
                                                                       strict=True)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--machine", default=f"cpu: {os.cpu_count()} cores (busy or quiet: not stated)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/index_search.json"))
    args = ap.parse_args()
    import faiss

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, args.dim))
    q = clustered(args.queries, args.dim, rng, centres)
    rows = []
    for n in args.sizes:
        x = clustered(n, args.dim, rng, centres)
        chunks = lambda x=x: (x[i:i + 50_000] for i in range(0, len(x), 50_000))  # noqa: E731
        truth = None
        for kind in ("flat", "ivf", "hnsw"):
            t = time.perf_counter()
            index, info = faiss_index.build(kind, args.dim, n, chunks)
            build_s = time.perf_counter() - t
            seconds, ids = time_queries(index, q, args.k, args.repeats)
            truth = ids if kind == "flat" else truth
            row = {"n": n, **info, "build_s": round(build_s, 3),
                   "ms_per_query": round(1000 * seconds / args.queries, 4),
                   f"recall@{args.k}_vs_exact": round(recall(truth, ids), 4)}
            rows.append(row)
            print(json.dumps(row))
    result = {"bench": "index_search", "machine": args.machine, "platform": platform.platform(),
              "faiss": faiss.__version__, "faiss_threads": faiss.omp_get_max_threads(),
              "dim": args.dim, "queries": args.queries, "k": args.k, "repeats": args.repeats,
              "statistic": "median over repeats of one batch of queries", "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
