"""Extract throughput: this stage against a naive per-model PIL pipeline, side by side, on CPU.

(a) the stage: shards read ahead, each image decoded once in DataLoader workers, both crops and
    the tokens made there, models in the main process, shards written by the writer thread.
(b) the baseline: one process; each image decoded once per model and run through HF's
    AutoImageProcessor and open_clip's own preprocess; same reader, same models, same batches,
    nothing written.
Both read the same local shards (photo-like JPEGs, shortest side 256 px as img2dataset writes
them) with tiny models, so the data path dominates. Runs alternate; medians are reported.

    .venv/bin/python bench/extract_throughput.py   # -> bench/results/extract_throughput.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import statistics
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinov2clip.config import ExtractConfig
from dinov2clip.data.tiny_models import build_tiny_dinov2
from dinov2clip.extract.dataset import ShardJob
from dinov2clip.extract.mapper import Mapper
from dinov2clip.extract.runner import PhaseTimer, extract_shards
from dinov2clip.formats.webdataset import read_shard
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.store.writer import ShardWriter

RESULTS = Path(__file__).parent / "results" / "extract_throughput.json"


def photo_jpeg(rng: np.random.Generator) -> bytes:
    """Shortest side 256, long side 256-400, smooth colour fields plus noise, JPEG quality 95."""
    long = int(rng.integers(256, 401))
    w, h = (long, 256) if rng.random() < 0.5 else (256, long)
    coarse = (rng.random((h // 24 + 2, w // 24 + 2, 3)) * 255).astype(np.uint8)
    arr = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC)).astype(np.int16)
    arr += rng.integers(-10, 11, arr.shape, dtype=np.int16)
    buf = io.BytesIO()
    Image.fromarray(arr.clip(0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def make_shards(out: Path, n_shards: int, per_shard: int, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        path = out / f"{s:05d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{s:05d}{i:04d}"
                caption = f"a photo of thing number {i} with {rng.integers(1, 9)} colours"
                for ext, data in (("jpg", photo_jpeg(rng)), ("txt", caption.encode()),
                                  ("json", json.dumps({"url": f"http://x/{key}"}).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def build_tinier_clip(out: Path) -> tuple[Path, Path]:
    """An open_clip config JSON and a random checkpoint, smaller than the tests' tiny CLIP."""
    import open_clip
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    config = out / "bench-clip.json"
    config.write_text(json.dumps({
        "embed_dim": 16,
        "vision_cfg": {"image_size": 224, "layers": 1, "width": 32, "head_width": 16,
                       "patch_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 1}}))
    open_clip.add_model_config(config)
    model = open_clip.create_model("bench-clip")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(out / "model.safetensors"))
    return config, out / "model.safetensors"


def run_stage(paths: list[Path], mapper: Mapper, tokenizer, e: ExtractConfig,
              out: Path) -> tuple[float, dict]:
    writer = ShardWriter(out, "bench")
    writer.start({p.stem: str(p) for p in paths}, {"models": "bench"})
    jobs = [(ShardJob(p, False), writer) for p in paths]
    timer = PhaseTimer()
    cpu = cpu_seconds()
    t = time.perf_counter()
    extract_shards(jobs, mapper, tokenizer, e, timer, out)
    seconds = time.perf_counter() - t
    timing = {k: round(v, 2) for k, v in timer.seconds.items()}
    timing["cpu_s_main_and_workers"] = round(cpu_seconds() - cpu, 2)
    return seconds, timing


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_baseline(paths: list[Path], mapper: Mapper, hf_proc, clip_preprocess, tokenizer,
                 batch_size: int, out: Path) -> float:
    t = time.perf_counter()
    parts: dict[str, list] = {"dino_cls": [], "clip_image": []}
    for path in paths:
        samples = read_shard(path, False).samples
        for start in range(0, len(samples), batch_size):
            chunk = samples[start:start + batch_size]
            # One PIL pipeline per model per image: each decodes the image itself.
            dino_x = hf_proc(images=[_open(s.image) for s in chunk],
                             return_tensors="pt")["pixel_values"]
            clip_x = torch.stack([clip_preprocess(_open(s.image)) for s in chunk])
            tokens = tokenizer([s.captions[0] for s in chunk])
            with torch.inference_mode():
                hidden = mapper.dino(pixel_values=dino_x).last_hidden_state
                img = mapper.clip.encode_image(clip_x)
                mapper.clip.encode_text(tokens)
            parts["dino_cls"].append(hidden[:, 0].numpy())
            parts["clip_image"].append(torch.nn.functional.normalize(img, dim=-1).numpy())
    seconds = time.perf_counter() - t
    for name, arrays in parts.items():
        np.save(out / f"{name}.npy", np.concatenate(arrays))
    return seconds


def _open(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")


def agreement(stage_dir: Path, base_dir: Path, n_shards: int) -> dict:
    """Lowest cosine between the stage's and the baseline's embeddings of the same image."""
    out = {}
    for name in ("dino_cls", "clip_image"):
        ours = np.concatenate([np.load(stage_dir / name / f"{s:05d}.npy") for s in
                               range(n_shards)]).astype(np.float32)
        ref = np.load(base_dir / f"{name}.npy")
        cos = (ours * ref).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(ref, axis=1)
        out[name] = float(cos.min())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--baseline-threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--machine", default=f"cpu: {os.cpu_count()} cores, shared with other jobs")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    load_at_start = os.getloadavg()[0]

    import open_clip
    from transformers import AutoImageProcessor

    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    paths = make_shards(tmp / "shards", args.shards, args.per_shard)
    dino_dir = build_tiny_dinov2(tmp / "models" / "tiny-dinov2", hidden=16, layers=1)
    clip_json, clip_ckpt = build_tinier_clip(tmp / "models" / "bench-clip")
    cpu = torch.device("cpu")
    dino, dino_spec = load_dino(str(dino_dir), cpu)
    clip, tokenizer, clip_spec = load_clip(str(clip_json), str(clip_ckpt), cpu)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, cpu, torch.float32)
    hf_proc = AutoImageProcessor.from_pretrained(dino_dir)
    _, _, clip_preprocess = open_clip.create_model_and_transforms(clip_json.stem,
                                                                  pretrained=str(clip_ckpt))
    e = replace(ExtractConfig(), batch_size=args.batch, num_workers=args.workers)
    n = args.shards * args.per_shard
    stage, base, phases, base_cpu = [], [], [], []

    def measure_stage(r: int) -> None:
        seconds, timing = run_stage(paths, mapper, tokenizer, e, tmp / f"stage{r}")
        stage.append(n / seconds)
        phases.append(timing)

    def measure_baseline(r: int) -> None:
        (tmp / f"base{r}").mkdir()
        threads = torch.get_num_threads()
        torch.set_num_threads(args.baseline_threads or threads)
        cpu = cpu_seconds()
        base.append(n / run_baseline(paths, mapper, hf_proc, clip_preprocess, tokenizer,
                                     args.batch, tmp / f"base{r}"))
        base_cpu.append(round(cpu_seconds() - cpu, 2))
        torch.set_num_threads(threads)

    # Warm-up (lazy imports, first-call set-up) on one shard, not measured.
    run_stage(paths[:1], mapper, tokenizer, e, tmp / "warm-stage")
    run_baseline(paths[:1], mapper, hf_proc, clip_preprocess, tokenizer, args.batch,
                 Path(tempfile.mkdtemp(dir=tmp)))
    for r in range(args.repeats):  # alternate the order, so drifting load hits both alike
        for measure in (measure_stage, measure_baseline)[:: 1 if r % 2 == 0 else -1]:
            measure(r)
        print(f"repeat {r}: stage {stage[-1]:.1f} img/s, baseline {base[-1]:.1f} img/s")
    result = {
        "benchmark": "extract_throughput",
        "machine": args.machine,
        "load_average_1min_at_start_and_end": [round(load_at_start, 2),
                                               round(os.getloadavg()[0], 2)],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads_stage_main": max(1, min(torch.get_num_threads(),
                                               (os.cpu_count() or 1) - args.workers)),
        "torch_threads_baseline": args.baseline_threads or torch.get_num_threads(),
        "models": "random DINOv2 (16-d, 1 layer, 224 px, 256 patches) + open_clip ViT "
                  "(32-d, 1 layer, 224 px) and text tower (32-d, 1 layer)",
        "images": n, "shards": args.shards, "batch_size": args.batch,
        "stage_num_workers": args.workers, "repeats": args.repeats,
        "stage_images_per_s": [round(x, 1) for x in stage],
        "baseline_images_per_s": [round(x, 1) for x in base],
        "stage_phase_seconds": phases,
        "baseline_cpu_seconds": base_cpu,
        "median_stage_images_per_s": round(statistics.median(stage), 1),
        "median_baseline_images_per_s": round(statistics.median(base), 1),
        "ratio_of_medians": round(statistics.median(stage) / statistics.median(base), 2),
        "median_of_paired_ratios": round(statistics.median(
            a / b for a, b in zip(stage, base, strict=True)), 2),
        "min_cosine_stage_vs_baseline": agreement(tmp / "stage0", tmp / "base0", args.shards),
        "gpu": "unmeasured (no GPU in this session)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in (
        "median_stage_images_per_s", "median_baseline_images_per_s", "ratio_of_medians",
        "median_of_paired_ratios", "min_cosine_stage_vs_baseline")}))


if __name__ == "__main__":
    main()
