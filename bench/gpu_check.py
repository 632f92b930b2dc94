"""The one-shot acceptance check for a lent GPU: extract, train, agreement, eval, FAISS; one JSON.

Needs no weights and no downloads: real-size dinov2-base and open_clip ViT-B-16 are built from
their configs with random weights (the same FLOPs; throughput does not depend on weight values),
saved, and loaded through the real loading code. Every section catches its own failure, and the
JSON is rewritten after each, so a crash or a timeout still leaves what was measured.

- extract: ~20k photo-like 256 px JPEGs through the real extract stage (extract_shards), with
  extract.decode=cpu and =gpu: images/s end to end, seconds waiting for batches / in the models /
  writing / decoding on the device, GPU utilisation, CPU cores used; the models alone on ready
  batches (the ceiling); the two decode paths' embeddings against each other (min cosine); and
  grey and CMYK JPEGs from the device decoder against PIL (largest pixel difference).
- train: the seed projector (54.6M params) in bf16 over 8M-row cached tensors on the device,
  through the trainer's own Feed; samples/s and MFU, with and without torch.compile.
- agreement: bf16 autocast against fp32 on one batch: min cosine of each stored array, and the
  eval's recalls from both.
- eval: the three real-size sets (synthetic vectors), as `pipeline eval` ranks them here.
- faiss: whether GPU FAISS runs on this device, or the CPU fallback did.
- dense: open-vocabulary segmentation under the eval's protocol (short side 448, windows of 448
  every 224, averaged, bilinear, argmax) with the `projector` head (the seed projector on every
  patch token of dinov2-base): images/s at VOC's 500 x 375 (2 windows an image), windows/s, the
  GPU memory it peaks at; and images/s with PAMR on each window (eval.dense.pamr).

    python bench/gpu_check.py          # the GPU box, < 8 min: bench/results/gpu_check-<gpu>.json
    python bench/gpu_check.py --smoke  # CPU, tiny models, a few hundred images, < 3 min
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the package, and the sibling benchmarks
from extract_throughput import cpu_seconds, make_shards, run_stage  # noqa: E402
from train_throughput import PROJECTORS, load_config_projector, peak_flops  # noqa: E402

from dinov2clip.config import ExtractConfig  # noqa: E402
from dinov2clip.extract.mapper import Mapper  # noqa: E402
from dinov2clip.io_utils import follow_umask  # noqa: E402
from dinov2clip.models.loaders import load_clip, load_dino  # noqa: E402

SIZES = {  # what each mode runs
    "full": dict(distinct_shards=4, per_shard=1000, copies=5, batch=256, rows=8_000_000,
                 train_batch=4096, train_steps=150, projector="seed", eval_scale=1,
                 agree_batch=256, dense_images=48, dense_classes=21,
                 compile_backend="inductor"),
    "smoke": dict(distinct_shards=2, per_shard=100, copies=1, batch=32, rows=4096,
                  train_batch=512, train_steps=4, projector="small", eval_scale=10,
                  agree_batch=32, dense_images=2, dense_classes=5,
                  # dynamo's tracing without inductor's C++ build, which takes minutes on a CPU
                  compile_backend="eager"),
}
EVAL_SETS = {"mscoco": (5000, 25000), "flickr30k": (1000, 5000), "flickr8k": (1000, 5000)}


def build_models(out: Path, smoke: bool) -> dict:
    """Saved random models: dinov2-base's and ViT-B-16's architectures, or the tests' tiny ones."""
    from dinov2clip.data.tiny_models import DINO_PROCESSOR, build_tiny_clip, build_tiny_dinov2

    if smoke:
        clip_json, ckpt = build_tiny_clip(out / "tiny-clip")
        return {"dino": str(build_tiny_dinov2(out / "tiny-dinov2")), "clip": str(clip_json),
                "clip_pretrained": str(ckpt), "what": "tiny random DINOv2 and CLIP (tests')"}
    import open_clip
    from safetensors.torch import save_file
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    # facebook/dinov2-base's config.json: ViT-B/14, 768-d, 12 layers, 12 heads.
    dino = Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                    mlp_ratio=4, image_size=518, patch_size=14,
                                    layerscale_value=1.0))
    dino.save_pretrained(out / "dinov2-base")
    BitImageProcessor(**DINO_PROCESSOR).save_pretrained(out / "dinov2-base")
    clip = open_clip.create_model("ViT-B-16", pretrained=None)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()},
              str(out / "vit-b-16.safetensors"))
    follow_umask(out)  # save_file and save_pretrained ignore the umask
    return {"dino": str(out / "dinov2-base"), "clip": "ViT-B-16",
            "clip_pretrained": str(out / "vit-b-16.safetensors"),
            "what": "random dinov2-base (86.6M) and open_clip ViT-B-16 (149.6M), real sizes"}


class GpuSampler:
    """GPU utilisation (%) sampled every 0.2 s in a thread: pynvml via torch, else nvidia-smi."""

    def __init__(self, device: torch.device):
        self.device, self.samples, self.source = device, [], None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _read(self) -> float | None:
        if self.source in (None, "nvml"):
            try:
                value, self.source = float(torch.cuda.utilization(self.device)), "nvml"
                return value
            except Exception:  # noqa: BLE001 - no pynvml: try nvidia-smi
                self.source = "nvidia-smi" if shutil.which("nvidia-smi") else "none"
        if self.source == "nvidia-smi":
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits",
                                  f"--id={self.device.index or 0}"],
                                 capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip()) if out.returncode == 0 else None
        return None

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            value = self._read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self):
        if self.device.type == "cuda":
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def summary(self) -> dict:
        if not self.samples:
            return {"source": self.source or "cpu device: none"}
        return {"source": self.source, "mean_pct": round(statistics.mean(self.samples), 1),
                "median_pct": statistics.median(self.samples), "samples": len(self.samples)}


def check_extract(tmp: Path, models: dict, device: torch.device, size: dict, out: dict) -> None:
    distinct = make_shards(tmp / "distinct", size["distinct_shards"], size["per_shard"])
    paths = []  # decode cost does not depend on images being unique: repeat the generated shards
    for _ in range(size["copies"]):
        for p in distinct:
            paths.append(tmp / "shards" / f"{len(paths):05d}.tar")
            paths[-1].parent.mkdir(exist_ok=True)
            shutil.copy(p, paths[-1])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    t = time.perf_counter()
    dino, dino_spec = load_dino(models["dino"], device)
    clip, tokenizer, clip_spec = load_clip(models["clip"], models["clip_pretrained"], device)
    mapper = Mapper(dino, dino_spec, clip, clip_spec, device, dtype)
    out["models_load_s"] = round(time.perf_counter() - t, 2)
    workers = max(1, min(16, (os.cpu_count() or 2) - 2))
    out.update(images=len(paths) * size["per_shard"], shards=len(paths),
               batch_size=size["batch"], num_workers=workers, compute_dtype=str(dtype))
    out["models_only_images_per_s"] = models_only_rate(mapper, tokenizer, size["batch"], device)
    runs = {}
    for decode in ("cpu", "gpu"):
        e = replace(ExtractConfig(), batch_size=size["batch"], num_workers=workers, decode=decode)
        run_stage(paths[:1], mapper, tokenizer, e, tmp / f"warm-{decode}")  # warm-up, unmeasured
        with GpuSampler(device) as gpu:
            cpu = cpu_seconds()
            seconds, timing = run_stage(paths, mapper, tokenizer, e, tmp / f"out-{decode}")
            used = cpu_seconds() - cpu
        runs[decode] = {"images_per_s": round(out["images"] / seconds, 1),
                        "seconds": round(seconds, 2), "phase_seconds": timing,
                        "cpu_cores_used": round(used / seconds, 2),
                        "gpu_utilisation": gpu.summary()}
    out["decode"] = runs
    out["decode_gpu_vs_cpu_min_cosine"] = min_cosines(tmp / "out-cpu", tmp / "out-gpu",
                                                      [p.stem for p in paths[:2]])
    out["decode_modes_vs_pil"] = decode_modes_vs_pil(device)


def decode_modes_vs_pil(device: torch.device) -> dict:
    """Grey and CMYK JPEGs through the device decoder against PIL's RGB (the CPU path's): the
    largest pixel difference, or why the decoder refused (extract then decodes it with PIL)."""
    import io

    import numpy as np
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    rng = np.random.default_rng(0)
    rgb = Image.fromarray((rng.random((24, 32, 3)) * 255).astype(np.uint8)).resize((256, 192))
    found = {}
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, "JPEG", quality=90)
        data = buf.getvalue()
        try:
            got = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8),
                              mode=ImageReadMode.RGB, device=device).cpu()
        except RuntimeError as err:
            found[mode] = f"refused: {str(err).splitlines()[0]}"
            continue
        want = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB")))
        found[mode] = int((got.permute(1, 2, 0).int() - want.int()).abs().max())
    return found


def models_only_rate(mapper: Mapper, tokenizer, batch: int, device: torch.device) -> float:
    """The ceiling: both towers on ready uint8 batches already on the device, nothing else."""
    g = torch.Generator().manual_seed(0)
    d, c = mapper.dino_spec.crop, mapper.clip_spec.crop
    dino = torch.randint(0, 256, (batch, d, d, 3), dtype=torch.uint8, generator=g).to(device)
    clip = torch.randint(0, 256, (batch, c, c, 3), dtype=torch.uint8, generator=g).to(device)
    tokens = tokenizer([f"a photo of thing {i}" for i in range(batch)])
    steps = 3 if device.type == "cpu" else 20
    mapper(dino, clip, tokens)  # warm-up
    t = time.perf_counter()
    pending = [mapper.submit(dino, clip, tokens) for _ in range(steps)]
    for p in pending:
        p.result()
    return round(steps * batch / (time.perf_counter() - t), 1)


def min_cosines(a: Path, b: Path, shards: list[str]) -> dict:
    out = {}
    for name in ("dino_cls", "dino_mean", "clip_image", "clip_text"):
        x, y = (np.concatenate([np.load(d / name / f"{s}.npy") for s in shards]).astype(np.float32)
                for d in (a, b))
        out[name] = round(float(cosine(torch.from_numpy(x), torch.from_numpy(y)).min()), 6)
    return out


def cosine(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cosine_similarity(x.float(), y.float(), dim=-1)


def check_agreement(tmp: Path, models: dict, device: torch.device, size: dict,
                    out: dict) -> None:
    """bf16 autocast against fp32 on the same batch of real (generated) images."""
    from dinov2clip.evaluate.compute import SetEval
    from dinov2clip.formats.webdataset import read_shard
    from dinov2clip.models.preprocess import decode, resize_and_crop
    from dinov2clip.models.projector import Projector

    dino, dino_spec = load_dino(models["dino"], device)
    clip, tokenizer, clip_spec = load_clip(models["clip"], models["clip_pretrained"], device)
    if not (tmp / "distinct").is_dir():  # the extract section was not run
        make_shards(tmp / "distinct", 1, size["agree_batch"])
    samples = read_shard(next((tmp / "distinct").glob("*.tar")), False).samples
    samples = samples[:size["agree_batch"]]
    imgs = [decode(s.image) for s in samples]
    batch = (torch.from_numpy(np.stack([resize_and_crop(i, dino_spec) for i in imgs])),
             torch.from_numpy(np.stack([resize_and_crop(i, clip_spec) for i in imgs])),
             tokenizer([s.captions[0] for s in samples]))
    low = Mapper(dino, dino_spec, clip, clip_spec, device, torch.bfloat16)(*batch)
    ref = Mapper(dino, dino_spec, clip, clip_spec, device, torch.float32)(*batch)
    out["images"] = len(samples)
    out["min_cosine_bf16_vs_fp32"] = {
        name: round(float(cosine(torch.from_numpy(getattr(low, name)),
                                 torch.from_numpy(getattr(ref, name))).min()), 6)
        for name in ("dino_cls", "dino_mean", "clip_image", "clip_text")}
    torch.manual_seed(0)  # one random projector, applied to both, as eval applies a trained one
    proj = Projector(replace(load_config_projector(PROJECTORS["small"]),
                             in_dim=low.dino_cls.shape[1], out_dim=low.clip_image.shape[1]))
    recalls = {}
    for name, emb in (("bf16", low), ("fp32", ref)):
        x = (torch.from_numpy(emb.dino_cls).float() + 256 * torch.from_numpy(emb.dino_mean).float()
             ) / 257
        with torch.inference_mode():
            projected = proj(x)
        recalls[name] = SetEval(torch.from_numpy(emb.clip_text), torch.from_numpy(emb.clip_image),
                                torch.arange(len(samples)), [1, 5, 10], device).rows(projected)
    out["recalls"] = {k: {row: recalls[k][row] for row in ("clip", "projected")}
                      for k in recalls}
    out["max_recall_difference_points"] = max(
        abs(recalls["bf16"][row][m] - recalls["fp32"][row][m])
        for row in ("clip", "projected") for m in recalls["fp32"][row])
    out["note"] = "random weights: recalls are near chance; what matters is that they agree"


def check_train(device: torch.device, size: dict, out: dict) -> None:
    """The trainer's step (loop.py) over its own Feed of an 8M-row split held on the device."""
    from dinov2clip.models.projector import Projector, count_parameters
    from dinov2clip.store import Split
    from dinov2clip.train.feed import Feed
    from dinov2clip.train.losses import WeightedLoss

    n, batch = size["rows"], size["train_batch"]
    g = torch.Generator(device=device).manual_seed(0)

    def rows(d: int, unit: bool) -> torch.Tensor:  # chunked: no float32 copy of all 8M rows
        parts = []
        for start in range(0, n, 1 << 20):
            a = torch.randn(min(1 << 20, n - start), d, device=device, generator=g)
            parts.append((F.normalize(a, dim=-1) if unit else a).half())
        return torch.cat(parts)

    split = Split(rows(768, False), rows(512, True), rows(512, True))
    out.update(rows=n, batch_size=batch, projector=size["projector"],
               cached_gb=round(sum(getattr(split, f).numel() * 2 for f in split.fields()) / 1e9,
                                2))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_flops(str(device), 0.0)
    for compile_ in (False, True):
        torch.manual_seed(0)
        model = Projector(load_config_projector(PROJECTORS[size["projector"]])).to(device)
        params = count_parameters(model)
        step_model = (torch.compile(model, backend=size["compile_backend"]) if compile_
                      else model)
        loss_fn = WeightedLoss({"unit_mse": 1.0}).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01,
                                fused=device.type == "cuda")
        feed = Feed(split, batch, device, seed=0)
        steps, warm = size["train_steps"], max(2, size["train_steps"] // 10)
        batches = (b for epoch in range(1 << 20) for b in feed.epoch(epoch))
        for i in range(warm + steps):
            if i == warm:  # compile and the first steps are over: start the clock
                _sync(device)
                t0 = time.perf_counter()
            x, img, txt = next(batches)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                pred = step_model(x)
            loss, _ = loss_fn(pred.float(), img, txt)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
        _sync(device)
        rate = steps * batch / (time.perf_counter() - t0)
        row = {"samples_per_s": round(rate), "params": params, "steps_timed": steps,
               "backend": size["compile_backend"] if compile_ else "eager",
               "final_loss": round(loss.item(), 5)}
        if peak:
            row.update(mfu=round(rate * 6 * params / peak, 4), peak_bf16_flops=peak)
        out["compile" if compile_ else "eager"] = row
    out["target_samples_per_s"] = 1_500_000


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_eval(device: torch.device, size: dict, out: dict) -> None:
    """The three sets at real size (smoke: a tenth), ranked as `pipeline eval` ranks them here."""
    from eval_speed import synthetic_set

    from dinov2clip.evaluate.compute import SetEval

    out["device"] = str(device)
    text, clip, projected, c2i = synthetic_set(100, 500, 0)
    SetEval(text, clip, c2i, [1, 5, 10], device).rows(projected)  # warm-up: CUDA, cuBLAS
    for seed, (name, (ni, nc)) in enumerate(EVAL_SETS.items()):
        ni, nc = ni // size["eval_scale"], nc // size["eval_scale"]
        text, clip, projected, c2i = synthetic_set(ni, nc, seed)
        t = time.perf_counter()
        rows = SetEval(text, clip, c2i, [1, 5, 10], device).rows(projected)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        out[name] = {"images": ni, "captions": nc, "seconds": round(time.perf_counter() - t, 3),
                     "clip_t2i_R@1": rows["clip"]["t2i_R@1"]}
    out["total_seconds"] = round(sum(v["seconds"] for k, v in out.items()
                                     if isinstance(v, dict)), 3)
    out["budget_seconds"] = 0.5 if device.type == "cuda" else 4.0


def check_faiss(device: torch.device, out: dict) -> None:
    """An exact inner-product search on the GPU when this faiss build can run there (PyPI's
    faiss-gpu-cu12 has no sm_90 kernels), else on the CPU, as `pipeline search` would."""
    import faiss

    out["faiss_version"] = getattr(faiss, "__version__", "?")
    keys = F.normalize(torch.randn(20000, 512), dim=-1).numpy()
    index = faiss.IndexFlatIP(keys.shape[1])
    index.add(keys)
    out["gpu_faiss_usable"] = False
    if device.type == "cuda" and hasattr(faiss, "StandardGpuResources"):
        try:
            gpu = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), device.index or 0, index)
            gpu.search(keys[:10], 1)  # a missing kernel fails here, not at the copy
            index, out["gpu_faiss_usable"] = gpu, True
        except Exception as err:  # noqa: BLE001 - any failure means: fall back to the CPU
            out["gpu_faiss_error"] = str(err).splitlines()[0][:300]
    t = time.perf_counter()
    _, ids = index.search(keys[:1000], 10)
    ids = torch.from_numpy(ids)
    out["search_1000x20000_s"] = round(time.perf_counter() - t, 3)
    out["ran_on"] = "gpu" if out["gpu_faiss_usable"] else "cpu (fallback)"
    out["self_is_top1"] = bool((ids[:, 0] == torch.arange(1000)).all())


def check_dense(models: dict, device: torch.device, size: dict, out: dict) -> None:
    """Sliding-window segmentation as `pipeline eval` runs it (DinoV2Clip.dense_scorer and
    dense/protocol.py's predict), the projector head on the seed projector (smoke: the small
    one), over random VOC-sized images against random class embeddings (VOC21: 21 classes)."""
    from dinov2clip.dense.protocol import Protocol, predict, window_boxes
    from dinov2clip.models.inference import DinoV2Clip
    from dinov2clip.models.preprocess import normalise
    from dinov2clip.models.projector import Projector, count_parameters

    dino, dino_spec = load_dino(models["dino"], device)
    dim = int(dino.config.hidden_size)
    torch.manual_seed(0)
    name = size["projector"]
    projector = Projector(replace(load_config_projector(PROJECTORS[name]), in_dim=dim))
    projector = projector.to(device).eval().requires_grad_(False)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = DinoV2Clip(projector=projector, clip=None, tokenizer=None, clip_spec=None,
                       dino=dino, dino_spec=dino_spec, device=device, dtype=dtype)
    text = F.normalize(torch.randn(size["dense_classes"], projector.cfg.out_dim), dim=-1)
    scorer = model.dense_scorer(text, "projector")
    protocol = Protocol(bg_threshold=0.5)
    g = torch.Generator().manual_seed(0)
    h, w = 375, 500  # a VOC image, resized to 448 x 597: 2 windows
    images = [normalise(torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, generator=g),
                        dino_spec) for _ in range(size["dense_images"] + 1)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        predict(images[0], scorer, protocol, (h, w))  # warm-up: kernels, cuBLAS
        _sync(device)
        t = time.perf_counter()
        for x in images[1:]:
            labels = predict(x, scorer, protocol, (h, w))  # .cpu() inside: synchronises
        seconds = time.perf_counter() - t
        # The same with PAMR on each window (eval.dense.pamr's extra row), on a quarter of them
        refined = images[1:max(2, len(images) // 4)]
        t = time.perf_counter()
        for x in refined:
            predict(x, scorer, replace(protocol, pamr=True), (h, w))
        pamr_seconds = time.perf_counter() - t
    n = len(images) - 1
    windows = len(window_boxes(448, 597, protocol.window, protocol.stride))
    out.update(images=n, image_size=[w, h], windows_per_image=windows,
               classes=size["dense_classes"], head="projector", projector=name,
               projector_params=count_parameters(projector), compute_dtype=str(dtype),
               images_per_s=round(n / seconds, 2), windows_per_s=round(n * windows / seconds, 2),
               seconds=round(seconds, 3), pamr_images=len(refined),
               pamr_images_per_s=round(len(refined) / pamr_seconds, 2),
               labels_shape=list(labels.shape),
               labels_in_range=bool(0 <= int(labels.min()) and
                                    int(labels.max()) <= size["dense_classes"]))
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def machine(device: torch.device) -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        info["cpu"] = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                           if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.TimeoutExpired):
        info["cpu"] = platform.processor()
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 2**30, 1),
                    cuda=torch.version.cuda, capability=f"{props.major}.{props.minor}")
    import torchvision

    info["torchvision"] = torchvision.__version__
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny models, a few hundred images")
    ap.add_argument("--device", default="", help="default: cuda if available (smoke: cpu)")
    ap.add_argument("--only", default="extract,agreement,train,eval,faiss,dense")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() and not args.smoke
                                          else "cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", 0)
    size = SIZES["smoke" if args.smoke else "full"]
    info = machine(device)
    slug = re.sub(r"[^a-z0-9]+", "-", info.get("gpu", "cpu").lower()).strip("-")
    name = f"gpu_check-{'smoke-' if args.smoke else ''}{slug}.json"
    out_path = args.out or HERE / "results" / name
    result = {"bench": "gpu_check", "mode": "smoke" if args.smoke else "full",
              "device": str(device), "machine": info,
              "targets": {"extract_images_per_s": 5000, "train_samples_per_s": 1_500_000}}
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    sections = {
        "extract": lambda o: check_extract(tmp, models, device, size, o),
        "agreement": lambda o: check_agreement(tmp, models, device, size, o),
        "train": lambda o: check_train(device, size, o),
        "eval": lambda o: check_eval(device, size, o),
        "faiss": lambda o: check_faiss(device, o),
        "dense": lambda o: check_dense(models, device, size, o),
    }
    try:
        models = build_models(tmp / "models", args.smoke)
        result["models"] = models["what"]
        for name in args.only.split(","):
            section, t = {}, time.perf_counter()
            try:
                sections[name](section)
            except Exception as err:  # noqa: BLE001 - record it, measure the rest
                section["error"] = f"{type(err).__name__}: {err}"
                section["traceback"] = traceback.format_exc().splitlines()[-8:]
            section["section_seconds"] = round(time.perf_counter() - t, 1)
            result[name] = section
            result["total_seconds"] = round(time.perf_counter() - start, 1)
            write(out_path, result)
            print(name, json.dumps(section, indent=1), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    failed = [k for k in sections if "error" in result.get(k, {})]
    print(f"wrote {out_path} in {result.get('total_seconds')} s; "
          f"failed sections: {failed or 'none'}")
    sys.exit(1 if failed else 0)


def write(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
