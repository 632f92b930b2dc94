"""Extract throughput: this stage against a naive per-model PIL pipeline, side by side, on CPU.

(a) the stage: shards read ahead, each image decoded once in DataLoader workers, both crops and
    the tokens made there, models in the main process, shards written by the writer thread.
(b) the baseline: one process; each image decoded once per model and run through HF's
    AutoImageProcessor and open_clip's own preprocess; same reader, same models, same batches,
    nothing written.
Both read the same local shards (photo-like JPEGs, shortest side 256 px as img2dataset writes
them) with tiny models, so the data path dominates. Runs alternate; medians are reported.

--real-size is the CPU user's case instead: random dinov2-base + open_clip ViT-B-16 built from
their configs (no download; speed does not depend on weight values), where the models dominate.
Side by side, alternating, it times (a) the stage with the cores split by cpu_threads, (b) the
stage with the old split (a core left to each worker), (c) the models alone on ready batches on
the stage's threads, the ceiling; the stage should come within 15 % of (c). Each measurement
also records how many cores other processes kept busy meanwhile, and medians are given over all
repeats and over the quiet ones: on a shared machine a repeat that ran beside other work says
little (--max-repeats goes on until --repeats of them ran alone). A few minutes on 2 cores.

    .venv/bin/python bench/extract_throughput.py   # -> bench/results/extract_throughput.json
    .venv/bin/python bench/extract_throughput.py --real-size  # -> ..._real_cpu.json
    .venv/bin/python bench/extract_throughput.py --real-size --max-repeats 12  # a shared machine
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import shutil
import statistics
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dinov2clip import cpu_threads
from dinov2clip.config import ExtractConfig
from dinov2clip.data.tiny_models import build_tiny_dinov2
from dinov2clip.extract.dataset import ShardJob
from dinov2clip.extract.mapper import Mapper
from dinov2clip.extract.runner import PhaseTimer, extract_shards
from dinov2clip.formats.webdataset import read_shard
from dinov2clip.io_utils import follow_umask
from dinov2clip.models.loaders import load_clip, load_dino
from dinov2clip.store.writer import ShardWriter

RESULTS = Path(__file__).parent / "results" / "extract_throughput.json"
RESULTS_REAL = RESULTS.with_name("extract_throughput_real_cpu.json")


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
    follow_umask(out / "model.safetensors")  # save_file ignores the umask
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


def stage_threads(mapper: Mapper, workers: int) -> int:
    """The torch threads extract_shards gives these models on this CPU."""
    with cpu_threads.threads_for_models(torch.device("cpu"), workers, mapper.towers()) as n:
        return n


def old_split(cores: int, num_workers: int, model_core_s: float) -> int:
    """The split before cpu_threads: a core left to each decoding worker, whatever it costs."""
    return max(1, cores - num_workers) if num_workers else cores


def models_only_rate(mapper: Mapper, tokenizer, batch: int, steps: int) -> float:
    """Both towers on ready uint8 batches on this process's threads, nothing else: the ceiling."""
    g = torch.Generator().manual_seed(0)
    d, c = mapper.dino_spec.crop, mapper.clip_spec.crop
    dino = torch.randint(0, 256, (batch, d, d, 3), dtype=torch.uint8, generator=g)
    clip = torch.randint(0, 256, (batch, c, c, 3), dtype=torch.uint8, generator=g)
    tokens = tokenizer([f"a photo of thing number {i} with 3 colours" for i in range(batch)])
    t = time.perf_counter()
    for _ in range(steps):
        mapper(dino, clip, tokens)
    return steps * batch / (time.perf_counter() - t)


def cpu_name() -> str:
    """The CPU's model name and widest vector unit (a VM's name can be as bare as "Processor")."""
    info = dict(line.split(":", 1) for line in Path("/proc/cpuinfo").read_text().splitlines()
                if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    vector = next((f for f in ("avx512f", "avx2") if f in flags), "no AVX2")
    return f"{info.get('model name', platform.processor() or 'unknown CPU')} ({vector})"


def machine_busy() -> tuple[float, float, float]:
    """(core-seconds the whole machine has been busy, ours with our reaped children, wall)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # less idle and iowait
    return busy / os.sysconf("SC_CLK_TCK"), cpu_seconds(), time.perf_counter()


def others_cores(before: tuple[float, float, float]) -> float:
    """Cores other processes kept busy since before (machine_busy()): on a shared machine, which
    repeats ran alone."""
    busy, own, wall = (now - then for now, then in zip(machine_busy(), before, strict=True))
    return max(0.0, (busy - own) / wall)


def real_size_models(tmp: Path) -> tuple[Mapper, object, str]:
    from gpu_check import build_models  # here, not at the top: gpu_check imports this module

    models = build_models(tmp / "models", smoke=False)
    cpu = torch.device("cpu")
    dino, dino_spec = load_dino(models["dino"], cpu)
    clip, tokenizer, clip_spec = load_clip(models["clip"], models["clip_pretrained"], cpu)
    return Mapper(dino, dino_spec, clip, clip_spec, cpu, torch.float32), tokenizer, models["what"]


def real_size_row(args) -> dict:
    """(a) the stage, (b) the stage with the old split, (c) the models alone; alternating."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-extract-real-"))
    try:
        return measure_real_size(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the saved models alone are 900 MB


def measure_real_size(args, tmp: Path) -> dict:
    paths = make_shards(tmp / "shards", args.shards, args.per_shard)
    mapper, tokenizer, what = real_size_models(tmp)
    cpu = torch.device("cpu")
    e = replace(ExtractConfig(), batch_size=args.batch, num_workers=args.workers, device="cpu")
    n, steps = args.shards * args.per_shard, -(-args.shards * args.per_shard // args.batch)

    def models_only() -> float:
        with cpu_threads.threads_for_models(cpu, args.workers, mapper.towers()):
            return models_only_rate(mapper, tokenizer, args.batch, steps)

    def stage(r: int, split) -> float:
        saved, cpu_threads.model_threads = cpu_threads.model_threads, split
        try:
            seconds, timing = run_stage(paths, mapper, tokenizer, e, tmp / f"{split.__name__}{r}")
        finally:
            cpu_threads.model_threads = saved
        phases[split.__name__].append(timing)
        return n / seconds

    runs = {"stage": lambda r: stage(r, cpu_threads.model_threads),
            "stage_old_split": lambda r: stage(r, old_split),
            "models_only": lambda r: models_only()}
    phases = {"model_threads": [], "old_split": []}
    rates, others = {k: [] for k in runs}, {k: [] for k in runs}
    models_only_rate(mapper, tokenizer, args.batch, 1)  # warm-ups, unmeasured
    run_stage(paths[:1], mapper, tokenizer, e, tmp / "warm")
    names, r = list(runs), 0
    while r < args.repeats or (r < args.max_repeats and len(quiet_repeats(others)) < args.repeats):
        for name in names[r % 3:] + names[:r % 3]:  # rotated: drifting load hits each alike
            before = machine_busy()
            rates[name].append(runs[name](r))
            others[name].append(others_cores(before))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.2f} img/s" for k, v in rates.items())
              + f"; other processes {max(o[-1] for o in others.values()):.2f} cores", flush=True)
        r += 1
    return {"models": what + ", fp32",
            "model_core_seconds_per_image_estimate": round(
                cpu_threads.model_core_seconds(mapper.towers()), 3),
            "torch_threads": {"stage": stage_threads(mapper, args.workers), "stage_old_split":
                              old_split(cpu_threads.available_cores(), args.workers, 0),
                              "models_only": stage_threads(mapper, args.workers)},
            "images_per_run": n, "shards": args.shards, "batch_size": args.batch,
            "num_workers": args.workers, "repeats": len(rates["stage"]),
            **summary(rates, others), "stage_phase_seconds": phases}


QUIET = 0.15  # other processes' cores under which a repeat counts as run alone


def quiet_repeats(others: dict) -> list[int]:
    return [r for r in range(len(others["stage"])) if max(o[r] for o in others.values()) < QUIET]


def summary(rates: dict, others: dict) -> dict:
    """Medians over all repeats, and over the quiet ones (no measurement of the repeat shared
    the machine with more than QUIET cores of other work), each with the two ratios."""
    quiet = quiet_repeats(others)
    out = {"images_per_s": {k: [round(x, 3) for x in v] for k, v in rates.items()},
           "other_processes_cores": {k: [round(x, 2) for x in v] for k, v in others.items()},
           "quiet_repeats": quiet}
    for label, keep in (("all", range(len(rates["stage"]))), ("quiet", quiet)):
        if not keep:
            continue
        med = {k: statistics.median(v[r] for r in keep) for k, v in rates.items()}
        out[f"median_images_per_s_{label}"] = {k: round(v, 3) for k, v in med.items()}
        out[f"stage_over_models_only_{label}"] = round(med["stage"] / med["models_only"], 3)
        out[f"old_split_over_models_only_{label}"] = round(
            med["stage_old_split"] / med["models_only"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-size", action="store_true",
                    help="dinov2-base + ViT-B-16 on the CPU: the stage against the models alone")
    ap.add_argument("--shards", type=int, default=None, help="default: 4, --real-size 2")
    ap.add_argument("--per-shard", type=int, default=None, help="default: 256, --real-size 12")
    ap.add_argument("--repeats", type=int, default=None, help="default: 5, --real-size 3")
    ap.add_argument("--max-repeats", type=int, default=0,
                    help="--real-size: repeat up to this many times until --repeats ran alone "
                         "(on a shared machine); default: --repeats")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=None, help="default: 64, --real-size 8")
    ap.add_argument("--baseline-threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--machine", default=None, help="default: the CPU's name and cores")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    defaults = (2, 12, 3, 8, RESULTS_REAL) if args.real_size else (4, 256, 5, 64, RESULTS)
    for key, value in zip(("shards", "per_shard", "repeats", "batch", "out"), defaults,
                          strict=True):
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.max_repeats = max(args.max_repeats, args.repeats)
    args.machine = args.machine or (f"{cpu_name()}, {cpu_threads.available_cores()} cores "
                                    "(load average at start and end below)")
    if args.real_size:
        return write_real_size(args)
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
        "torch_threads_stage_main": stage_threads(mapper, args.workers),
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


def write_real_size(args) -> None:
    load_at_start = os.getloadavg()[0]
    row = real_size_row(args)
    result = {"benchmark": "extract_throughput --real-size", "machine": args.machine,
              "load_average_1min_at_start_and_end": [round(load_at_start, 2),
                                                     round(os.getloadavg()[0], 2)],
              "platform": platform.platform(), "torch": torch.__version__, **row}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k.startswith(("median", "stage_over",
                                                                      "old_split_over"))}))


if __name__ == "__main__":
    main()
