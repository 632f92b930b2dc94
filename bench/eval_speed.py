"""How long the whole eval compute takes on a CPU, at the real eval-set sizes.

Synthetic embeddings shaped like the extract cache (float16, L2-normalised, D=512): MSCOCO 5k
images / 25k captions, Flickr30k 1k / 5k, Flickr8k 1k / 5k. For each set it runs exactly what
`pipeline eval` runs after loading: R@1/5/10 both ways for CLIP, projected and ensemble, and % of
CLIP. Reports the median of several runs; the target is under 2 s on 2 cores.

Where the CPU has native bfloat16, the eval screens scores in bf16; the run then also times the
float32 screen (what CPUs without bf16 run), alternating the two, and reports the ratio.

    .venv/bin/python bench/eval_speed.py [--runs 5] [--threads 2] [--faiss] [--machine TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dinov2clip.evaluate.screen import screen_dtype  # noqa: E402

from dinov2clip.evaluate.compute import SetEval  # noqa: E402

SETS = {"mscoco": (5000, 25000), "flickr30k": (1000, 5000), "flickr8k": (1000, 5000)}
DIM = 512


def synthetic_set(n_images: int, n_captions: int, seed: int):
    """CLIP-like geometry: captions near their image, the projection a noisier copy of CLIP."""
    g = torch.Generator().manual_seed(seed)
    unit = lambda *s: F.normalize(torch.randn(*s, generator=g), dim=-1)  # noqa: E731
    clip = unit(n_images, DIM)
    c2i = torch.arange(n_images).repeat_interleave(n_captions // n_images)
    text = F.normalize(clip[c2i] + 7.0 * unit(n_captions, DIM), dim=-1)
    projected = F.normalize(clip + 0.8 * unit(n_images, DIM), dim=-1)
    # The cache stores float16; the projector's output is float32.
    return text.half(), clip.half(), projected, c2i


def eval_once(data: dict, engine: str, screen: torch.dtype | None = None,
              ) -> tuple[float, float, dict]:
    """(wall seconds, process CPU seconds, results) of one full eval of every set.

    `screen` forces the exact engine's screen precision (default: what `pipeline eval` uses).
    """
    start, cpu = time.perf_counter(), time.process_time()
    out = {}
    for name, (text, clip, projected, c2i) in data.items():
        out[name] = SetEval(text, clip, c2i, [1, 5, 10], engine, use_gpu=False,
                            screen=screen).rows(projected)
    return time.perf_counter() - start, time.process_time() - cpu, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--faiss", action="store_true", help="also time the CPU FAISS engine once")
    ap.add_argument("--machine", default="", help="how to name this machine in the results")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = {name: synthetic_set(ni, nc, seed) for seed, (name, (ni, nc)) in
            enumerate(SETS.items())}
    screen = screen_dtype()
    compare = screen != torch.float32  # side by side with the float32 screen, alternating
    eval_once(data, "exact")  # warm-up: first-touch allocations, BLAS and numpy start-up
    times, cpu_times, fp32_times = [], [], []
    for _ in range(args.runs):
        seconds, cpu, results = eval_once(data, "exact")
        times.append(seconds)
        cpu_times.append(cpu)
        if compare:
            seconds, _, via_fp32 = eval_once(data, "exact", torch.float32)
            fp32_times.append(seconds)
            assert via_fp32 == results, "the float32 screen must give the very same numbers"
    record = {
        "bench": "eval_speed",
        "what": "R@1/5/10 both ways for CLIP, projected, ensemble on 3 sets, from embeddings",
        "sizes": {name: {"images": ni, "captions": nc, "dim": DIM} for name, (ni, nc) in
                  SETS.items()},
        "engine": "exact",
        "screen": str(screen).removeprefix("torch."),
        "median_s": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        # CPU seconds used by this process: on a busy machine wall time also counts waiting for
        # a core; cpu / threads is roughly the wall time the same work takes on idle cores.
        "median_cpu_s": round(statistics.median(cpu_times), 3),
        "target_s": 2.0,
        "threads": args.threads,
        "machine": args.machine or _machine(args.threads),
        "load_average_before": [round(x, 2) for x in load_before],
        "torch": torch.__version__,
        "sanity_mscoco_clip": results["mscoco"]["clip"],
    }
    if compare:
        record["float32_screen_median_s"] = round(statistics.median(fp32_times), 3)
        record["float32_screen_runs_s"] = [round(t, 3) for t in fp32_times]
        record["speedup_vs_float32_screen"] = round(
            statistics.median(fp32_times) / statistics.median(times), 2)
    if args.faiss:
        seconds, _, via_faiss = eval_once(data, "faiss")
        record["faiss_cpu_s"] = round(seconds, 3)
        record["faiss_equals_exact"] = via_faiss == results
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "sizes"}, indent=2))


def _machine(threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"cpu: {cpu} ({torch.backends.cpu.get_cpu_capability()}, native bf16: "
            f"{screen_dtype() == torch.bfloat16}), {os.cpu_count()} cores visible, torch "
            f"on {threads} threads (numpy counting on as many threads); shared with other jobs "
            f"unless stated")


if __name__ == "__main__":
    main()
