"""Training throughput over the same cached shards: this trainer against a naive baseline.

(a) the trainer: dinov2clip.train.loop.train(), the whole split as a few tensors, batches as index
    slices of a per-epoch permutation, bf16 autocast on GPU; samples/s is its own per-epoch
    `train_samples_per_s` (training steps only, validation excluded), epochs after the first.
(b) the naive baseline: a map-style Dataset returning single rows from the memory-mapped npy
    files, through a default DataLoader (shuffle, num_workers=0), fp32; windows of steps after a
    warm-up.
The two alternate for --rounds rounds; each reports the median of its rates.

Both run for the seed projector (54.6M params) and a small one (width 256, one block). On a GPU it
also reports model FLOP utilisation: samples/s x 6 x params / the device's peak bf16 FLOP/s.

    .venv/bin/python bench/train_throughput.py            # CPU: 32k pairs
    .venv/bin/python bench/train_throughput.py --n 2000000 --epochs 3   # a GPU box
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from dinov2clip.config import load_config
from dinov2clip.data.synthetic_task import write_embeddings
from dinov2clip.models.projector import Projector, count_parameters
from dinov2clip.store import Embeddings
from dinov2clip.train.loop import train

PROJECTORS = {
    "seed": {"kind": "residual", "width": 2048, "depth": 6, "head_width": 1024},
    "small": {"kind": "residual", "width": 256, "depth": 1, "head_width": 256},
}
GPU_NOTE = ("unmeasured: no GPU in the session that wrote this. On an H100: "
            "bench/train_throughput.py"
            " --n 2000000 --epochs 3 --projectors seed [--compile]; target >= 1,000,000 samples/s."
            " MFU = samples/s x 6 x params / peak dense bf16 FLOP/s (H100 SXM 989e12: at most"
            " 3.0M samples/s for 54.6M params; H100 PCIe 756e12: 2.3M)")
PEAK_BF16 = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense


def random_shards(out: Path, n: int, shard_size: int) -> Path:
    """n random pairs at the real dims (768-d DINOv2, 512-d CLIP) in the extract layout."""
    rng = np.random.default_rng(0)

    def rows(d, unit=False):
        a = rng.standard_normal((n, d), dtype=np.float32)
        return (a / np.linalg.norm(a, axis=1, keepdims=True) if unit else a).astype(np.float16)

    emb = Embeddings(rows(768), rows(768), rows(512, True), rows(512, True))
    return write_embeddings(out / "embeddings" / "bench" / "t", emb, 1, shard_size)


def trainer_rate(art: Path, proj: dict, batch: int, epochs: int, device: str, run: str,
                 compile_: bool) -> list[float]:
    sets = [f"train.projector.{k}={json.dumps(v)}" for k, v in proj.items()]
    cfg_path = art.parent / "bench.toml"
    cfg_path.write_text(f'artifacts = "{art}"\n[extract]\ntag = "t"\n[eval]\nsets = []\n')
    cfg = load_config(cfg_path, [
        'train.dataset="bench"', f'train.run="{run}"', f"train.epochs={epochs}",
        f"train.batch_size={batch}", "train.val_fraction=0.01", "train.val_retrieval_max=1000",
        "train.log_every=1000000", f'train.device="{device}"', 'train.compute_dtype="bf16"',
        f"train.compile={str(compile_).lower()}", *sets])
    run_dir = train(cfg, force=True)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["train_samples_per_s"] for r in map(json.loads, lines) if r["kind"] == "epoch"]


class RowDataset(Dataset):
    """The naive path: one row at a time from memory-mapped npy files, pooled per row."""

    def __init__(self, emb_dir: Path):
        shards = sorted(p.stem for p in (emb_dir / "done").glob("*.json"))
        arrays = ("dino_cls", "dino_mean", "clip_image", "clip_text")
        self.shards = [{a: np.load(emb_dir / a / f"{s}.npy", mmap_mode="r") for a in arrays}
                       for s in shards]
        self.first_caption = [pq.read_table(emb_dir / "meta" / f"{s}.parquet")
                              .column("caption_start").to_pylist() for s in shards]
        sizes = [len(s["dino_cls"]) for s in self.shards]
        self.starts = np.cumsum([0] + sizes[:-1]).tolist()
        self.n = sum(sizes)

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        k = bisect.bisect_right(self.starts, i) - 1
        s, row = self.shards[k], i - self.starts[k]
        cls = torch.tensor(s["dino_cls"][row], dtype=torch.float32)
        mean = torch.tensor(s["dino_mean"][row], dtype=torch.float32)
        img = torch.tensor(s["clip_image"][row], dtype=torch.float32)
        txt = torch.tensor(s["clip_text"][self.first_caption[k][row]], dtype=torch.float32)
        return (cls + 256 * mean) / 257, img, txt


def naive_rate(emb_dir: Path, proj: dict, batch: int, device: str, steps: int) -> list[float]:
    dev = torch.device(device)
    model = Projector(load_config_projector(proj)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    loader = DataLoader(RowDataset(emb_dir), batch_size=batch, shuffle=True)
    rates, t0, seen, window = [], None, 0, max(1, steps // 5)
    done = 0
    while done < steps:
        for x, img, _txt in loader:  # the captions are read, as the trainer reads them
            x, img = x.to(dev), img.to(dev)
            loss = F.mse_loss(F.normalize(model(x), dim=-1), img)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            done += 1
            if done == 2:  # warm-up over: start the clock
                _sync(dev)
                t0, seen = time.perf_counter(), 0
            elif t0 is not None:
                seen += x.shape[0]
                if (done - 2) % window == 0:
                    _sync(dev)
                    rates.append(seen / (time.perf_counter() - t0))
                    t0, seen = time.perf_counter(), 0
            if done >= steps:
                break
    return rates


def load_config_projector(proj: dict):
    from dinov2clip.config import ProjectorConfig

    return ProjectorConfig(in_dim=768, out_dim=512, **proj)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average_1min_at_start": os.getloadavg()[0]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def peak_flops(device: str, override: float) -> float | None:
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(0)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=32768, help="cached pairs")
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--epochs", type=int, default=3, help="trainer epochs (first is warm-up)")
    ap.add_argument("--naive-steps", type=int, default=12)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--projectors", default="small,seed")
    ap.add_argument("--seed-epochs", type=int, default=2, help="trainer epochs, seed projector")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved (a), (b) measurements")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="bf16 peak, for MFU")
    ap.add_argument("--machine-note", default="", help="e.g. 'cpu: 2 cores, shared'")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default). On a CPU shared with other "
                    "jobs one thread avoids OpenMP spin-waits that slow small ops 5x")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result = {"machine": {**machine(args.device), "note": args.machine_note},
              "device": args.device, "n_pairs": args.n, "batch_size": args.batch_size,
              "projectors": {}}
    peak = peak_flops(args.device, args.peak_tflops)
    if not args.device.startswith("cuda"):
        result["gpu"] = GPU_NOTE
    with tempfile.TemporaryDirectory() as tmp:
        art = Path(tmp) / "artifacts"
        emb_dir = random_shards(art, args.n, shard_size=min(args.n, 100_000))
        for name in args.projectors.split(","):
            proj = PROJECTORS[name]
            params = count_parameters(Projector(load_config_projector(proj)))
            epochs = args.seed_epochs if name == "seed" else args.epochs
            ours, naive = [], []
            for _ in range(args.rounds):  # interleaved, so a busy spell hits both paths
                rates = trainer_rate(art, proj, args.batch_size, epochs, args.device, name,
                                     args.compile)
                ours += rates[1:] or rates  # the first epoch is warm-up
                naive += naive_rate(emb_dir, proj, args.batch_size, args.device,
                                    args.naive_steps)
            a = statistics.median(ours)
            b = statistics.median(naive)
            row = {"n_pairs": args.n, "params": params, "flops_per_sample": 6 * params,
                   "trainer_samples_per_s": a, "trainer_epoch_rates": ours,
                   "naive_samples_per_s": b, "naive_window_rates": naive,
                   "ratio_trainer_over_naive": a / b}
            if peak:
                row["trainer_mfu"] = a * 6 * params / peak
                row["peak_flops"] = peak
            if name == "seed":
                row["seed_recipe_minutes_16_epochs_8M"] = 16 * 8e6 / a / 60
            result["projectors"][name] = row
            print(name, json.dumps(row, indent=1))
    out = args.out or Path(__file__).parent / "results" / f"train_throughput_{args.device}.json"
    if out.exists():  # projectors measured in separate runs (the seed one is slow on a CPU)
        kept = json.loads(out.read_text())
        result["projectors"] = {**kept.get("projectors", {}), **result["projectors"]}
        result["machine_earlier_runs"] = kept.get("machine")
    out.write_text(json.dumps(result, indent=2) + "\n")
    print("wrote", out, "| ratio:", {k: round(v["ratio_trainer_over_naive"], 2)
                                    for k, v in result["projectors"].items()})
    assert math.isfinite(sum(v["trainer_samples_per_s"] for v in result["projectors"].values()))


if __name__ == "__main__":
    main()
