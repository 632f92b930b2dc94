"""How long the whole eval compute takes, at the real eval-set sizes.

Synthetic embeddings shaped like the extract cache (float16, L2-normalised, D=512): MSCOCO 5k
images / 25k captions, Flickr30k 1k / 5k, Flickr8k 1k / 5k. For each set it runs exactly what
`pipeline eval` runs after loading: R@1/5/10 both ways for CLIP, projected and ensemble, and % of
CLIP, through dinov2clip.retrieval. Reports the median of several runs; the budget is 4 s on
2 CPU cores and 0.5 s on a GPU.

--against REF also times the eval engine of git commit REF (e.g. main), checked out into a
temporary directory and run as its own bench/eval_speed.py in a subprocess, alternating with this
one's runs so both see the same machine load; it also checks both give the same numbers.

    .venv/bin/python bench/eval_speed.py [--runs 5] [--threads 2] [--device cpu]
                                         [--against main] [--machine TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


def eval_once(data: dict, device: str) -> tuple[float, float, dict]:
    """(wall seconds, process CPU seconds, results) of one full eval of every set."""
    start, cpu = time.perf_counter(), time.process_time()
    out = {name: SetEval(text, clip, c2i, [1, 5, 10], device).rows(projected)
           for name, (text, clip, projected, c2i) in data.items()}
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, time.process_time() - cpu, out


def old_engine(ref: str, tmp: Path):
    """A function that runs REF's own bench once (warm-up + 1 run) and returns its record."""
    subprocess.run(f"git -C {ROOT} archive {ref} dinov2clip bench | tar -x -C {tmp}",
                   shell=True, check=True)

    def run_once(threads: int) -> dict:
        out = tmp / "out.json"
        subprocess.run([sys.executable, "bench/eval_speed.py", "--runs", "1", "--threads",
                        str(threads), "--out", str(out)], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())

    return run_once


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against", default="", help="also time this git commit's eval engine")
    ap.add_argument("--machine", default="", help="how to name this machine in the results")
    ap.add_argument("--note", default="", help="conditions of the run, kept in the results")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    data = {name: synthetic_set(ni, nc, seed) for seed, (name, (ni, nc)) in
            enumerate(SETS.items())}
    eval_once(data, args.device)  # warm-up: first-touch allocations, BLAS start-up
    times, cpu_times, old_records = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        old = old_engine(args.against, Path(tmp)) if args.against else None
        for _ in range(args.runs):
            seconds, cpu, results = eval_once(data, args.device)
            times.append(seconds)
            cpu_times.append(cpu)
            if old:
                old_records.append(old(args.threads))
    record = {
        "bench": "eval_speed",
        "what": "R@1/5/10 both ways for CLIP, projected, ensemble on 3 sets, from embeddings",
        "sizes": {name: {"images": ni, "captions": nc, "dim": DIM} for name, (ni, nc) in
                  SETS.items()},
        "engine": "dinov2clip.retrieval.recall_at_k (one float32 product per embedding)",
        "device": args.device,
        "median_s": round(statistics.median(times), 3),
        "runs_s": [round(t, 3) for t in times],
        # CPU seconds used by this process: on a busy machine wall time also counts waiting for
        # a core; cpu / threads is roughly the wall time the same work takes on idle cores.
        "median_cpu_s": round(statistics.median(cpu_times), 3),
        "budget_s": 4.0 if args.device == "cpu" else 0.5,
        "threads": args.threads,
        "machine": args.machine or _machine(args.threads),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "note": args.note,
        "sanity_mscoco_clip": results["mscoco"]["clip"],
    }
    if old_records:
        old_times = [r["median_s"] for r in old_records]
        record["against"] = {
            "ref": args.against, "engine": f"{old_records[0]['engine']}, "
                                            f"{old_records[0].get('screen')} screen",
            "median_s": round(statistics.median(old_times), 3),
            "runs_s": old_times,
            "median_cpu_s": round(statistics.median(r["median_cpu_s"] for r in old_records), 3),
            "new_over_old": round(statistics.median(times) / statistics.median(old_times), 2),
            "same_mscoco_clip_numbers": all(r["sanity_mscoco_clip"] == record[
                "sanity_mscoco_clip"] for r in old_records),
        }
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
    return (f"cpu: {cpu} ({torch.backends.cpu.get_cpu_capability()}), {os.cpu_count()} cores "
            f"visible, torch on {threads} threads; shared with other jobs unless stated")


if __name__ == "__main__":
    main()
