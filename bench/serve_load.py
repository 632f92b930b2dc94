"""Latency and throughput of `pipeline serve` under 1, 8 and 32 concurrent clients.

Why: a search service that falls over under load is clip-retrieval's most common complaint.
This starts `pipeline serve` as its own process on 127.0.0.1 over a synthetic 100k-image index
and drives it from this process with closed-loop clients (each sends its next request when the
last one is answered), a bounded number of requests per level. Text search is measured with
the text batcher on (--max-batch 32, the default) and off (--max-batch 1), side by side in one
run; similar-image search (a FAISS search over DINOv2 vectors, no model) alongside.

The text tower is open_clip ViT-B-16's at full size with random weights (no download here):
the compute per query is the real one. The index vectors are random unit vectors (512-d
projected, 768-d DINOv2), searched exactly (IndexFlatIP) as `pipeline index` builds it up to
100k images.

    .venv/bin/python bench/serve_load.py --n 100000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

WORDS = ("red blue green old small large wooden shiny dog cat car house tree boat bird "
         "mountain beach street table chair flower window bicycle sunset snow river").split()


def make_run(root: Path, dino_dim: int) -> Path:
    """A run whose text tower is ViT-B-16 (random weights) and whose projector is random."""
    import torch

    from dinov2clip.config import ProjectorConfig
    from dinov2clip.data.tiny_models import build_tiny_dinov2
    from dinov2clip.io_utils import atomic_write_json
    from dinov2clip.models.projector import Projector

    run = root / "run"
    run.mkdir()
    dino = build_tiny_dinov2(root / "tiny-dinov2", hidden=dino_dim)
    torch.manual_seed(0)
    Projector(ProjectorConfig(kind="linear", in_dim=dino_dim, out_dim=512)).save_pretrained(run)
    atomic_write_json(run / "config.json", {"config": {
        "extract": {"dino_model": str(dino), "clip_model": "ViT-B-16", "clip_pretrained": ""},
        "train": {"pooling": "token_mean", "num_patch_tokens": 256}}})
    return run


def make_index(root: Path, run: Path, n: int, dino_dim: int) -> Path:
    import faiss
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dinov2clip.io_utils import atomic_write_json

    out = root / "index"
    out.mkdir()
    rng = np.random.default_rng(0)
    for name, dim in (("index.faiss", 512), ("dino.faiss", dino_dim)):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        faiss.write_index(index, str(out / name))
    keys = [f"img/{i:06d}.jpg" for i in range(n)]
    pq.write_table(pa.table({"key": keys, "path": [f"/photos/{k}" for k in keys],
                             "url": [""] * n, "caption": [""] * n, "kind": ["file"] * n,
                             "chunk": [f"{i // 4096:05d}" for i in range(n)]}),
                   out / "meta.parquet")
    atomic_write_json(out / "index.json", {"run_dir": str(run), "kind": "flat", "n_images": n,
                                           "dim": 512, "source": "synthetic"})
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(index: Path, max_batch: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    log = open(index.parent / f"server-{max_batch}.log", "w")  # noqa: SIM115 - the server's
    proc = subprocess.Popen([sys.executable, "-m", "dinov2clip.pipeline", "serve", "--index",
                             str(index), "--port", str(port), "--device", "cpu",
                             "--max-batch", str(max_batch)],
                            stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 900  # loading is slow on a busy shared machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {Path(log.name).read_text()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 900 s")


def drive(url: str, path_of, clients: int, requests: int) -> dict:
    """`clients` threads share `requests` requests; each waits for its answer before the next."""
    import httpx

    latencies: list[float] = []
    errors = []
    counter = iter(range(requests))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                t = time.perf_counter()
                r = http.get(path_of(i))
                dt = time.perf_counter() - t
                with lock:
                    latencies.append(dt)
                    if r.status_code != 200:
                        errors.append(r.status_code)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(1000 * x for x in latencies)
    return {"clients": clients, "requests": len(ms), "errors": len(errors),
            "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(ms[min(len(ms) - 1, int(0.99 * len(ms)))], 1),
            "req_per_s": round(len(ms) / wall, 1), "wall_s": round(wall, 2)}


def text_query(i: int) -> str:
    rng = np.random.default_rng(i)
    return "/api/search?k=20&q=a+photo+of+a+" + "+".join(rng.choice(WORDS, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000, help="indexed vectors")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests-per-client", type=int, default=4,
                    help="requests per level = this x clients (at least 24)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/serve_load.json"))
    ap.add_argument("--note", default="", help="conditions of the run (is the machine shared?)")
    args = ap.parse_args()
    load_before = os.getloadavg()
    dino_dim = 768
    model_name = subprocess.run("lscpu | grep 'Model name' | sed 's/.*: *//'", shell=True,
                                capture_output=True, text=True).stdout.strip()
    results: dict = {"text_search": {}, "similar": {}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        root = Path(tmp)
        index = make_index(root, make_run(root, dino_dim), args.n, dino_dim)
        for label, max_batch in (("batched_32", 32), ("unbatched", 1)):
            proc, url = start_server(index, max_batch)
            try:
                drive(url, text_query, 1, 3)  # warm-up: first forward pass, page cache
                rows = []
                for c in args.clients:
                    rows.append(drive(url, lambda i, c=c: text_query(1000 * c + i), c,
                                      max(24, args.requests_per_client * c)))
                    print(label, rows[-1], flush=True)
                results["text_search"][label] = rows
                if max_batch == 32:
                    results["similar"]["flat"] = [
                        drive(url, lambda i, n=args.n: f"/api/similar?k=20&id={(i * 7919) % n}",
                              c, max(24, args.requests_per_client * c)) for c in args.clients]
                    print("similar", results["similar"]["flat"], flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    batched, plain = results["text_search"]["batched_32"], results["text_search"]["unbatched"]
    report = {
        "benchmark": "serve_load", "n_vectors": args.n, "index": "flat (IndexFlatIP), "
        "512-d projected + 768-d DINOv2, random unit vectors", "k": 20,
        "text_tower": "open_clip ViT-B-16 text tower at full size, random weights, fp32 on CPU",
        "machine": f"{model_name}: {os.cpu_count()} cores visible; {platform.platform()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "notes": (args.note + " " if args.note else "") + "Batched and unbatched ran back to "
                 "back in one run. Closed-loop clients in a second process on 127.0.0.1 (httpx, "
                 "one thread each); latency is per request end to end, requests/s = requests / "
                 "wall time of the level.",
        "results": results,
        "speedup_req_per_s_batched_over_unbatched": {
            str(b["clients"]): round(b["req_per_s"] / p["req_per_s"], 2)
            for b, p in zip(batched, plain, strict=True)},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["speedup_req_per_s_batched_over_unbatched"]))


if __name__ == "__main__":
    main()
