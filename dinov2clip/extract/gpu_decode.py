"""extract.decode = gpu: JPEGs decoded in batches on the extract device, both crops cut there.

At 256 px a CPU worker spends ~5 ms an image on decode and PIL's bicubic resize, so 3,000 img/s
would need ~16 free cores. Here the DataLoader workers only read bytes and tokenise; the device
decodes a batch of JPEGs at once (torchvision `decode_jpeg`, nvJPEG on CUDA; libjpeg-turbo on a
CPU, which is how the tests run this same code) and resizes with antialiased interpolation on
uint8 tensors, as transformers 5's DINOv2 processor does. CLIP's reference resize is PIL's, so its
crops differ from the CPU path by a grey level here and there (embeddings agree to cosine > 0.999).

Anything the device cannot take goes the CPU path, and is counted: payloads that are not a whole
JPEG (PNG, WebP, a cut file) are decoded by the workers as before; a JPEG the device decoder
rejects is decoded with PIL here. A payload PIL cannot decode either is skipped as "corrupt_image",
exactly as in the CPU path.

The decode of batch n+1 runs in a thread (on its own CUDA stream) while the models run batch n.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import torch
from torchvision.io import ImageReadMode, decode_jpeg
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import resize

from dinov2clip.config import ConfigError
from dinov2clip.extract.dataset import Batch, DecodeSamples, ShardEnd
from dinov2clip.models.preprocess import PreprocessSpec, decode_or_skip, resize_and_crop

log = logging.getLogger(__name__)
# torchvision 0.29 deprecates its decoders for TorchCodec's; decode_jpeg still works, and its
# warning would repeat in every extract log. Moving to torchcodec is a follow-up.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of "
                        "TorchVision are deprecated", category=DeprecationWarning)

DEVICE_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
_SOI, _EOI = b"\xff\xd8\xff", b"\xff\xd9"


def is_whole_jpeg(data: bytes) -> bool:
    """Starts like a JPEG and ends with its end marker (a cut file does not: PIL rejects it)."""
    return data[:3] == _SOI and data[-2:] == _EOI


def resolve_decode(mode: str, device: torch.device, specs: list[PreprocessSpec]) -> bool:
    """Whether to decode on the device. auto: yes on CUDA when the device decoder works there."""
    if mode == "cpu" or (mode == "auto" and device.type != "cuda"):
        return False
    unsupported = [s.interpolation for s in specs if s.interpolation not in DEVICE_INTERPOLATIONS]
    problem = f"cannot resize with {unsupported[0]} on the device" if unsupported else None
    if problem is None and any(s.resize_dtype != "uint8" for s in specs):
        problem = "the backbone's processor resizes in float (DINOv3), the device path in uint8"
    if problem is None:
        problem = _probe(device)
    if problem is None:
        return True
    if mode == "gpu":
        raise ConfigError(f"extract.decode=gpu: {problem}; use extract.decode=cpu")
    log.warning("extract.decode=auto: %s; decoding on the CPU", problem)
    return False


def _probe(device: torch.device) -> str | None:
    """None if decode_jpeg works on this device, else why not."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buf, "JPEG")
    try:
        decode_jpeg([torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)],
                    mode=ImageReadMode.RGB, device=device)
    except Exception as err:  # noqa: BLE001 - any failure means: not on this machine
        return f"torchvision cannot decode JPEGs on {device} ({str(err).splitlines()[0]})"
    return None


class ReadJpegBytes(DecodeSamples):
    """dataset[(job, sample)] for decode=gpu: a whole JPEG passes as bytes, the rest is decoded
    here as in the CPU path (and marked, so the fallback is counted)."""

    def __getitem__(self, item):
        job, s = item
        if isinstance(s, ShardEnd) or not is_whole_jpeg(s.image):
            out = super().__getitem__(item)
            if "row" in out:
                out["fallback"] = "not_a_whole_jpeg"
            return out
        return {"job": job, "jpeg": torch.frombuffer(bytearray(s.image), dtype=torch.uint8),
                "tokens": self.tokenizer(s.captions), "row": self.row(s)}


def crop_on_device(images: list[torch.Tensor], spec: PreprocessSpec) -> torch.Tensor:
    """(B, crop, crop, 3) uint8 from (3, h, w) uint8 images, cut as resize_and_crop cuts them.

    Images of one size are resized together (img2dataset's 256 px shards repeat a few sizes),
    so a batch costs a handful of kernels, not one per image.
    """
    c = spec.crop
    out = torch.empty((len(images), 3, c, c), dtype=torch.uint8, device=images[0].device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        by_size.setdefault(tuple(img.shape[1:]), []).append(i)
    for (h, w), idx in by_size.items():
        out[idx] = _resize_and_crop_group(torch.stack([images[i] for i in idx]), h, w, spec)
    return out.permute(0, 2, 3, 1)


def _resize_and_crop_group(x: torch.Tensor, h: int, w: int, spec: PreprocessSpec) -> torch.Tensor:
    # The geometry of preprocess.resize_and_crop; tests/test_extract_gpu_decode.py holds the two
    # equal pixel for pixel.
    c = spec.crop
    if spec.resize_mode == "squash":
        return _resize(x, c, c, spec)
    if spec.resize_mode == "longest":
        ratio = max(h / c, w / c)
        x = _resize(x, round(h / ratio), round(w / ratio), spec)
        out = torch.full((x.shape[0], 3, c, c), spec.fill, dtype=torch.uint8, device=x.device)
        top, left = (c - x.shape[2]) // 2, (c - x.shape[3]) // 2
        out[:, :, top:top + x.shape[2], left:left + x.shape[3]] = x
        return out
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(spec.resize * long / short)
    new_h, new_w = (new_long, spec.resize) if w <= h else (spec.resize, new_long)
    x = _resize(x, new_h, new_w, spec)
    excess_h, excess_w = new_h - c, new_w - c
    if excess_h < 0 or excess_w < 0:
        raise ValueError(f"resize {spec.resize} is smaller than crop {c}")
    if spec.crop_rounding == "floor":
        top, left = int(excess_h / 2.0), int(excess_w / 2.0)
    else:
        top, left = int(round(excess_h / 2.0)), int(round(excess_w / 2.0))
    return x[:, :, top:top + c, left:left + c]


def _resize(x: torch.Tensor, h: int, w: int, spec: PreprocessSpec) -> torch.Tensor:
    if tuple(x.shape[2:]) == (h, w):
        return x
    return resize(x, [h, w], interpolation=InterpolationMode(spec.interpolation), antialias=True)


class DeviceDecoder:
    """Turns a collated Batch into a Batch of crops on the device; counts where each image
    was decoded: "device", or the fallback's reason."""

    def __init__(self, dino_spec: PreprocessSpec, clip_spec: PreprocessSpec,
                 device: torch.device, decoded: Counter | None = None):
        self.dino_spec, self.clip_spec, self.device = dino_spec, clip_spec, device
        self.decoded = Counter() if decoded is None else decoded

    @torch.inference_mode()
    def __call__(self, batch: Batch) -> Batch:
        self.decoded.update(batch.fallbacks)
        if not batch.rows:
            return batch
        n, dev = len(batch.rows), self.device
        images = self._decode([data for _, data in batch.jpegs])
        # Rows in sample order: device-decoded, CPU-decoded in the workers, or lost.
        dino = torch.empty((n, self.dino_spec.crop, self.dino_spec.crop, 3), dtype=torch.uint8,
                           device=dev)
        clip = torch.empty((n, self.clip_spec.crop, self.clip_spec.crop, 3), dtype=torch.uint8,
                           device=dev)
        if batch.cpu_rows:
            dino[batch.cpu_rows] = batch.dino_u8.to(dev, non_blocking=True)
            clip[batch.cpu_rows] = batch.clip_u8.to(dev, non_blocking=True)
        on_device = [(pos, img) for (pos, _), img in zip(batch.jpegs, images, strict=True)
                     if isinstance(img, torch.Tensor)]
        if on_device:
            pos = [p for p, _ in on_device]
            dino[pos] = crop_on_device([img for _, img in on_device], self.dino_spec)
            clip[pos] = crop_on_device([img for _, img in on_device], self.clip_spec)
            self.decoded["device"] += len(on_device)
        lost: dict[int, str] = {}  # row position -> why no decoder could read it
        for (pos, data), img in zip(batch.jpegs, images, strict=True):
            if img is None:  # the device decoder refused it: PIL, as the CPU path would
                crops = self._decode_on_cpu(data)
                if isinstance(crops, str):
                    lost[pos] = crops
                    continue
                dino[pos] = torch.from_numpy(crops[0]).to(dev)
                clip[pos] = torch.from_numpy(crops[1]).to(dev)
                self.decoded["device_decode_failed"] += 1
        batch.dino_u8, batch.clip_u8 = dino, clip
        if lost:
            _drop_rows(batch, lost)
        return batch

    def _decode(self, datas: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """(3, h, w) uint8 per JPEG on the device, None where the decoder refuses one."""
        if not datas:
            return []
        try:
            return decode_jpeg(datas, mode=ImageReadMode.RGB, device=self.device)
        except RuntimeError:  # one bad image fails the batch: find it one by one
            out = []
            for data in datas:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                except RuntimeError:
                    out.append(None)
            return out

    def _decode_on_cpu(self, data: torch.Tensor):
        """Both crops, or the skip reason the CPU path would count."""
        img, reason = decode_or_skip(data.numpy().tobytes())
        if img is None:
            return reason
        return resize_and_crop(img, self.dino_spec), resize_and_crop(img, self.clip_spec)


def _drop_rows(batch: Batch, lost: dict[int, str]) -> None:
    """Remove rows no decoder could read, with their captions' tokens; count them as skipped."""
    keep = [i for i in range(len(batch.rows)) if i not in lost]
    starts, start = [], 0
    for row in batch.rows:
        starts.append(start)
        start += row["n_captions"]
    token_rows = [t for i in keep
                  for t in range(starts[i], starts[i] + batch.rows[i]["n_captions"])]
    batch.tokens = batch.tokens[token_rows]
    batch.dino_u8, batch.clip_u8 = batch.dino_u8[keep], batch.clip_u8[keep]
    batch.rows = [batch.rows[i] for i in keep]
    batch.failures.update(lost.values())


def decoded_ahead(batches: Iterator[Batch], decoder: DeviceDecoder, timer) -> Iterator[Batch]:
    """Batches with crops on the device, each decoded while the caller runs the previous one.

    On CUDA the decode runs on a side stream; the caller's stream waits for it, and the crops
    are marked as used there, so the allocator does not hand their memory back too early.
    """
    cuda = decoder.device.type == "cuda"
    side = torch.cuda.Stream(decoder.device) if cuda else None

    def work(batch: Batch):
        t = time.perf_counter()
        if side is None:
            out, event = decoder(batch), None
        else:
            with torch.cuda.stream(side):
                out = decoder(batch)
                event = torch.cuda.Event()
                event.record(side)
        timer.add("device_decode", t)
        return out, event

    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = None
        for batch in batches:
            nxt = pool.submit(work, batch)
            if ahead is not None:
                yield _ready(ahead.result(), decoder.device)
            ahead = nxt
        if ahead is not None:
            yield _ready(ahead.result(), decoder.device)


def _ready(result, device: torch.device) -> Batch:
    batch, event = result
    if event is not None:
        stream = torch.cuda.current_stream(device)
        stream.wait_event(event)
        for t in (batch.dino_u8, batch.clip_u8):
            if t is not None:
                t.record_stream(stream)
    return batch
