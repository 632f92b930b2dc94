"""What the server answers from: one index, its DINOv2 twin, its metadata and the run's model.

Everything is loaded once. Text queries from many clients are batched: one thread runs the text
tower and the FAISS search for every query that arrived while the previous batch ran, so 32
clients cost about one forward pass of 32 texts, not 32 passes queued behind a lock.
"""

from __future__ import annotations

import concurrent.futures
import logging
import mimetypes
import queue
import threading
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dinov2clip.config import ConfigError
from dinov2clip.config.values import DENSE_HEADS, TRAINED_DENSE_HEADS
from dinov2clip.formats.images import (
    ImageGone,
    check_still_indexed,
    original_bytes,
    thumbnail_jpeg,
)
from dinov2clip.index.search import load_dino_index, load_index

log = logging.getLogger(__name__)


class UnknownImage(LookupError):
    """An id the index does not hold, or whose image is no longer on disk as it was indexed."""


class BadImage(ValueError):
    """Uploaded bytes that do not decode as an image."""


class ImageTooLarge(BadImage):
    """An upload whose header declares more pixels than the server decodes."""


class NoDenseHead(LookupError):
    """A dense head the served run has not trained (talk2dino), or one no code knows."""


# 40 M pixels decoded: an 8000 x 5000 PNG (a JPEG decodes at 1/2 to 1/8 scale first). Decoded as
# RGB that is 120 MB, several times that while converted and resized: the cap, with the app's
# bound on concurrent decodes, bounds memory.
MAX_UPLOAD_PIXELS = 40_000_000
# A heatmap is drawn on the image shrunk to this (the PNG's longest side): the protocol scores
# it at short side 448 anyway, and a page tile shows a few hundred pixels.
HEATMAP_PX = 512
# The resized image's long side, at most: a panorama at short side 448 would be dozens of
# windows; beyond this the short side shrinks instead (1,792 px: at most 7 windows of 448).
HEATMAP_MAX_LONG_SIDE = 1792


class Batcher:
    """Runs fn over lists of items in one worker thread; items submitted meanwhile queue up and
    go together in the next call (at most max_batch). fn returns one result per item."""

    def __init__(self, fn: Callable[[list], list], max_batch: int = 32):
        self.fn, self.max_batch = fn, max_batch
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._loop, name="text-batcher", daemon=True)
        self.thread.start()

    def submit(self, item) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.queue.put((item, future))
        return future

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join(timeout=10)

    def _loop(self) -> None:
        while (first := self.queue.get()) is not None:
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.queue.put(None)  # stop after this batch
                    break
                batch.append(nxt)
            try:
                results = self.fn([item for item, _ in batch])
            except Exception as err:  # noqa: BLE001 - every waiting request gets the error
                for _, future in batch:
                    future.set_exception(err)
                continue
            for (_, future), result in zip(batch, results, strict=True):
                future.set_result(result)


class SearchEngine:
    def __init__(self, index_dir: Path, run: str | Path | None = None, device: str = "auto",
                 max_batch: int = 32, root: Path | None = None,
                 max_upload_pixels: int = MAX_UPLOAD_PIXELS):
        """run: the run whose towers encode queries (default: the index's); a directory,
        "hf-hub:ORG/NAME", or a run name under root/runs."""
        from dinov2clip.models.inference import DinoV2Clip

        self.index_dir, self.max_upload_pixels = Path(index_dir), max_upload_pixels
        self.index, self.summary, meta = load_index(self.index_dir)
        self.meta = with_stamps(meta.to_pydict(), self.index_dir)  # row i is FAISS id i
        self.dino_index = load_dino_index(self.index_dir, self.summary)
        self.run = str(run or self.summary["run_dir"])
        self.model = DinoV2Clip.from_pretrained(self.run, root=root, device=device,
                                                image_tower=self.dino_index is not None)
        if self.model.dim != self.index.d:
            raise ConfigError(f"the index holds {self.index.d}-d embeddings but the run's text "
                              f"tower gives {self.model.dim}-d")
        if self.dino_index is not None and self.model.dino_dim != self.dino_index.d:
            raise ConfigError(f"dino.faiss holds {self.dino_index.d}-d features but the run's "
                              f"DINOv2 gives {self.model.dino_dim}-d")
        self.text_batcher = Batcher(self._search_texts, max_batch)
        self.heads = _trained_heads(self.model)
        # One DINOv2 forward at a time: the talk2dino head reads the last block's attention
        # from a hook that any forward (an upload's too) overwrites between forward and read.
        self.dino_lock = threading.Lock()

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def info(self) -> dict:
        return {"run": self.run, "index": str(self.index_dir.resolve()), "n_images": self.size,
                "kind": self.summary.get("kind"), "dim": self.index.d,
                "source": self.summary.get("source"), "similar": self.dino_index is not None,
                "heads": self.heads if self.dino_index is not None else []}

    def close(self) -> None:
        self.text_batcher.close()

    # --- queries --------------------------------------------------------------------------

    def search_text(self, query: str, k: int) -> concurrent.futures.Future:
        """A future of (scores, ids) for one query; batched with whatever else is waiting."""
        return self.text_batcher.submit((query, k))

    def _search_texts(self, requests: list[tuple[str, int]]) -> list[tuple]:
        q = self.model.encode_text([text for text, _ in requests]).numpy()  # (b, dim)
        k_max = min(max(k for _, k in requests), self.size)
        scores, ids = self.index.search(q, k_max)
        return [(scores[i, :k], ids[i, :k]) for i, (_, k) in enumerate(requests)]

    def similar(self, image_id: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Images most like an indexed one by DINOv2 features, the image itself left out."""
        self.check_id(image_id)
        x = self.dino_index.reconstruct(image_id)[None, :]
        scores, ids = self.dino_index.search(x, min(k + 1, self.size))
        keep = ids[0] != image_id
        return scores[0][keep][:k], ids[0][keep][:k]

    def search_image(self, data: bytes, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Images most like an uploaded one, by DINOv2 features."""
        from dinov2clip.models.preprocess import TooLarge, decode, resize_and_crop

        spec = self.model.dino_spec
        try:  # a JPEG larger than the crop needs is decoded at 1/2, 1/4 or 1/8 scale
            img = decode(data, max_pixels=self.max_upload_pixels,
                         min_side=max(spec.resize, spec.crop))
        except TooLarge as err:
            raise ImageTooLarge(f"image too large: {err}") from None
        except Exception as err:  # noqa: BLE001 - whatever the decoder says, the upload is bad
            raise BadImage(f"not an image the server can read ({type(err).__name__})") from None
        crop = torch.from_numpy(resize_and_crop(img, spec)[None])
        with self.dino_lock:
            _, raw = self.model.encode_image_and_dino(crop)
        return self.dino_index.search(raw.numpy(), min(k, self.size))

    def hits(self, scores: np.ndarray, ids: np.ndarray) -> list[dict]:
        out = []
        for rank, (score, i) in enumerate(zip(scores, ids, strict=True), start=1):
            if i < 0:  # IVF with few probed lists can return fewer than k
                continue
            out.append({"rank": rank, "score": round(float(score), 6), "id": int(i),
                        **self.describe(int(i))})
        return out

    def describe(self, i: int) -> dict:
        row = {"key": self.meta["key"][i], "caption": self.meta["caption"][i] or None,
               "image": f"/api/image/{i}"}
        if self.meta["url"][i]:
            row["url"] = self.meta["url"][i]
        else:
            row["path"] = self.meta["path"][i]
        return row

    def check_id(self, image_id: int) -> None:
        if not 0 <= image_id < self.size:
            raise UnknownImage(f"unknown image id {image_id} (the index holds ids 0 to "
                               f"{self.size - 1})")

    # --- image bytes ----------------------------------------------------------------------

    def original(self, image_id: int) -> tuple[bytes, str]:
        """(bytes, content type) of an indexed image, from its file or its shard."""
        kind, path, key, size, mtime_ns = self._indexed(image_id)
        try:
            data = original_bytes(kind, path, key, size, mtime_ns)
        except ImageGone as err:
            raise UnknownImage(f"image {image_id} ({key}) {err}") from None
        return data, mimetypes.guess_type(key)[0] or _sniff_type(data)

    def _indexed(self, image_id: int) -> tuple:
        """(kind, path, key, size, mtime_ns) of an indexed image, as meta.parquet has it."""
        self.check_id(image_id)
        return tuple(self.meta[c][image_id] for c in ("kind", "path", "key", "size", "mtime_ns"))

    def heatmap(self, image_id: int, text: str, head: str = "projector") -> tuple[bytes, dict]:
        """(PNG, facts) of an indexed image, at most HEATMAP_PX a side, with text's similarity
        under head blended over it; facts: the cosine range the colours stretch over."""
        from dinov2clip.dense.overlay import heatmap_overlay, png_bytes

        if head not in self.heads:
            raise NoDenseHead(f"the run {self.run} has no {head} head (it has: "
                              f"{', '.join(self.heads)}); train one with train.dense.head")
        img = self._shrunk(image_id, HEATMAP_PX)
        with self.dino_lock:
            heat = self.model.heatmap(img, text, protocol=heatmap_protocol(*img.size),
                                      head=head).numpy()
        facts = {"min": float(heat.min()), "max": float(heat.max())}
        return png_bytes(heatmap_overlay(img, heat)), facts

    def _shrunk(self, image_id: int, size: int):
        """An indexed image as RGB, at most size a side."""
        from PIL import Image

        from dinov2clip.models.preprocess import decode, rgb_on_white

        data, _ = self.original(image_id)
        try:  # a JPEG larger than needed decodes at 1/2, 1/4 or 1/8 scale
            img = rgb_on_white(decode(data, max_pixels=self.max_upload_pixels, min_side=size))
        except Exception as err:  # noqa: BLE001 - an indexed file changed into garbage
            raise UnknownImage(f"image {image_id} no longer decodes") from err
        img.thumbnail((size, size), Image.BICUBIC)
        return img

    def thumbnail(self, image_id: int, size: int) -> bytes:
        """A JPEG of an indexed image, at most size a side; cached, but never served from the
        cache once its file has changed (a cheap stat, as the full image's check)."""
        kind, path, key, stamp_size, mtime_ns = self._indexed(image_id)
        try:
            check_still_indexed(kind, path, stamp_size, mtime_ns)
        except ImageGone as err:
            raise UnknownImage(f"image {image_id} ({key}) {err}") from None
        return self._thumbnail(image_id, size)

    @lru_cache(maxsize=2048)  # noqa: B019 - one engine per process, kept for its lifetime
    def _thumbnail(self, image_id: int, size: int) -> bytes:
        data, _ = self.original(image_id)
        try:
            return thumbnail_jpeg(data, size)
        except Exception as err:  # noqa: BLE001 - an indexed file changed into garbage
            raise UnknownImage(f"image {image_id} no longer decodes") from err


def heatmap_protocol(width: int, height: int):
    """The segmentation protocol (short side 448, windows of 448 every 224), its short side
    lowered for an image so long that its long side would pass HEATMAP_MAX_LONG_SIDE."""
    from dinov2clip.dense.protocol import Protocol

    base = Protocol()
    long_side = base.short_side * max(width, height) / min(width, height)
    if long_side <= HEATMAP_MAX_LONG_SIDE:
        return base
    return Protocol(short_side=max(28, int(base.short_side * HEATMAP_MAX_LONG_SIDE / long_side)))


def _trained_heads(model) -> list[str]:
    """The dense heads model's run can draw: the projector always, a learned one once its
    files are there."""
    run = model.run
    return [h for h in DENSE_HEADS if h not in TRAINED_DENSE_HEADS or (
        run is not None and run.dense_head_config(h).is_file()
        and run.dense_head_weights(h).is_file())]


def with_stamps(meta: dict[str, list], index_dir: Path) -> dict[str, list]:
    """meta with each file's size and mtime_ns as indexed; an index written before meta.parquet
    kept them gets None (its files are checked for symlinks only) and a warning."""
    if "size" not in meta:
        log.warning("%s records no file sizes or mtimes: an image file changed since it was "
                    "indexed is served as it is now; re-run `pipeline index` (nothing is "
                    "embedded again) to record them", index_dir)
        meta["size"] = meta["mtime_ns"] = [None] * len(meta["key"])
    return meta


def _sniff_type(data: bytes) -> str:
    for magic, kind in ((b"\xff\xd8", "image/jpeg"), (b"\x89PNG", "image/png"),
                        (b"RIFF", "image/webp")):
        if data.startswith(magic):
            return kind
    return "application/octet-stream"
