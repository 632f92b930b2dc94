"""How long the whole eval compute takes, at the real eval-set sizes.

Synthetic embeddings shaped like the extract cache (float16, L2-normalised, D=512): MSCOCO 5k
images / 25k captions, Flickr30k 1k / 5k, Flickr8k 1k / 5k. For each set it runs exactly what
`pipeline eval` runs after loading: R@1/5/10 both ways for CLIP, projected and ensemble, and % of
CLIP (dinov2clip.evaluate.compute.SetEval). Reports the median of several runs, each in a fresh
process (as `pipeline eval` is) after one warm-up; the budget is 4 s on 2 CPU cores and 0.5 s on
a GPU.

--against REF also times the SetEval of git commit REF (e.g. main), checked out into a temporary
directory, on the very same embeddings, alternating with this checkout's runs so both see the
same machine load; it also checks that both give the same numbers, every row of every set.

    .venv/bin/python bench/eval_speed.py [--runs 5] [--threads 2] [--device cpu]
                                         [--against main] [--machine TEXT]
"""

from __future__ import annotations

import argparse
import inspect
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


def time_engine(root: str, data_file: str, device: str, threads: int) -> dict:
    """One warm-up and one timed eval of every set with root's SetEval (this process's own)."""
    sys.path.insert(0, root)
    from dinov2clip.evaluate.compute import SetEval

    torch.set_num_threads(threads)
    data = torch.load(data_file)

    # Engines before the one ranking function took no device (they chose one themselves).
    where = {"device": device} if "device" in inspect.signature(SetEval).parameters else {}

    def once() -> dict:
        return {name: SetEval(text, clip, c2i, [1, 5, 10], **where).rows(projected)
                for name, (text, clip, projected, c2i) in data.items()}

    once()  # warm-up: BLAS and thread start-up, first-touch allocations
    start, cpu = time.perf_counter(), time.process_time()
    results = once()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "results": results}


def run_engine(root: Path, data_file: Path, args) -> dict:
    """time_engine in a fresh interpreter, as `pipeline eval` runs in one."""
    out = subprocess.run(
        [sys.executable, __file__, "--time-engine", str(root), "--data", str(data_file),
         "--device", args.device, "--threads", str(args.threads)],
        check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--against", default="", help="also time this git commit's eval engine")
    ap.add_argument("--machine", default="", help="how to name this machine in the results")
    ap.add_argument("--note", default="", help="conditions of the run, kept in the results")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "eval_speed.json"))
    ap.add_argument("--time-engine", help=argparse.SUPPRESS)  # internal: one timed child run
    ap.add_argument("--data", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.time_engine:
        print(json.dumps(time_engine(args.time_engine, args.data, args.device, args.threads)))
        return
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        data_file, old_root = Path(tmp) / "sets.pt", Path(tmp) / "against"
        torch.save({name: synthetic_set(ni, nc, seed) for seed, (name, (ni, nc)) in
                    enumerate(SETS.items())}, data_file)
        if args.against:
            old_root.mkdir()
            subprocess.run(f"git -C {ROOT} archive {args.against} dinov2clip | tar -x -C "
                           f"{old_root}", shell=True, check=True)
        new, old = [], []
        for _ in range(args.runs):
            new.append(run_engine(ROOT, data_file, args))
            if args.against:
                old.append(run_engine(old_root, data_file, args))
    record = {
        "bench": "eval_speed",
        "what": "R@1/5/10 both ways for CLIP, projected, ensemble on 3 sets, from embeddings",
        "sizes": {name: {"images": ni, "captions": nc, "dim": DIM} for name, (ni, nc) in
                  SETS.items()},
        "engine": "dinov2clip.evaluate.compute.SetEval: two float32 products per set (CLIP and "
                  "projected), the ensemble's scores by linearity",
        "device": args.device,
        **_summary(new),
        "budget_s": 4.0 if args.device == "cpu" else 0.5,
        "threads": args.threads,
        "machine": args.machine or _machine(args.threads),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "torch": torch.__version__,
        "note": args.note,
        "sanity_mscoco": new[-1]["results"]["mscoco"],
    }
    if old:
        record["against"] = {
            "ref": args.against, **_summary(old),
            "new_over_old": round(statistics.median(r["seconds"] for r in new)
                                  / statistics.median(r["seconds"] for r in old), 2),
            "same_numbers": all(r["results"] == new[0]["results"] for r in new + old),
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("sizes", "sanity_mscoco")},
                     indent=2))


def _summary(runs: list[dict]) -> dict:
    return {
        "median_s": round(statistics.median(r["seconds"] for r in runs), 3),
        "runs_s": [round(r["seconds"], 3) for r in runs],
        # CPU seconds used by the process: on a busy machine wall time also counts waiting for
        # a core; cpu / threads is roughly the wall time the same work takes on idle cores.
        "median_cpu_s": round(statistics.median(r["cpu_seconds"] for r in runs), 3),
    }


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
