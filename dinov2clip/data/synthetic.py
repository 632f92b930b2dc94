"""A procedurally drawn image-caption set: coloured shapes on coloured backgrounds.

It stands in for CC12M and the retrieval test sets where no data can be downloaded (the demo,
the tests). Training shards follow img2dataset's webdataset layout; the eval set follows
CLIP_benchmark's (one image plus a .txt with all its captions, one per line); the zero-shot set
is ImageNet's layout, one folder per shape.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import webdataset as wds
from PIL import Image, ImageDraw

from dinov2clip.io_utils import atomic_write, atomic_write_json

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "black": (20, 20, 20),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 0.22, "large": 0.42}
TEMPLATES = (
    "a {size} {colour} {shape} on a {bg} background",
    "a photo of a {colour} {shape}",
    "{size} {shape}, {colour}, against {bg}",
    "there is a {colour} {shape} in the picture",
    "a {bg} image with a {size} {colour} {shape}",
)


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    bg: str
    size: str
    cx: float
    cy: float

    def caption(self, template: int = 0) -> str:
        return TEMPLATES[template % len(TEMPLATES)].format(**self.__dict__)


def random_scene(rng: random.Random) -> Scene:
    colour, bg = rng.sample(sorted(COLOURS), 2)
    return Scene(
        shape=rng.choice(SHAPES),
        colour=colour,
        bg=bg,
        size=rng.choice(sorted(SIZES)),
        cx=rng.uniform(0.3, 0.7),
        cy=rng.uniform(0.3, 0.7),
    )


def draw(scene: Scene, size: int, rng: random.Random) -> Image.Image:
    return draw_with_mask(scene, size, rng)[0]


def draw_with_mask(scene: Scene, size: int, rng: random.Random,
                   label: int = 1) -> tuple[Image.Image, Image.Image]:
    """The picture and its ground truth ("L": 0 background, `label` under the shape), drawn
    with the same geometry; PIL draws without anti-aliasing, so every pixel is one or the
    other. Draws from rng exactly as the picture alone always has."""
    # Non-square canvases so resizing and centre-cropping are exercised as on real photos.
    w, h = (size, int(size * rng.uniform(0.75, 1.0))) if rng.random() < 0.5 else (
        int(size * rng.uniform(0.75, 1.0)), size)
    img = Image.new("RGB", (w, h), COLOURS[scene.bg])
    mask = Image.new("L", (w, h), 0)
    r = SIZES[scene.size] * min(w, h)
    cx, cy = scene.cx * w, scene.cy * h
    rotation = rng.uniform(0, 72) if scene.shape == "star" else 0.0
    for canvas, fill in ((img, COLOURS[scene.colour]), (mask, label)):
        paint(ImageDraw.Draw(canvas), scene.shape, cx, cy, r, fill, rotation)
    return img, mask


def paint(d: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill,
          rotation: float = 0.0) -> None:
    """One shape of radius r centred at (cx, cy) in pixels."""
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        d.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:
        d.regular_polygon((cx, cy, r), n_sides=5, rotation=rotation, fill=fill)


def jpeg_bytes(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_train_shards(out_dir: Path, num: int, shard_size: int, image_size: int, seed: int) -> int:
    """Write img2dataset-style shards: NNNNN.tar (.jpg .txt .json), NNNNN.parquet, _stats.json."""
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    n_shards = (num + shard_size - 1) // shard_size
    for s in range(n_shards):
        rows = []
        tar_path = out_dir / f"{s:05d}.tar"

        def write(tmp: str, s=s, rows=rows) -> None:
            with wds.TarWriter(tmp) as sink:
                for i in range(s * shard_size, min(num, (s + 1) * shard_size)):
                    scene = random_scene(rng)
                    key = f"{s:05d}{i - s * shard_size:04d}"
                    meta = {"key": key, "caption": scene.caption(0), "url": f"synthetic://{i}",
                            "status": "success"}
                    sink.write({"__key__": key, "jpg": jpeg_bytes(draw(scene, image_size, rng)),
                                "txt": meta["caption"], "json": json.dumps(meta).encode()})
                    rows.append(meta)

        atomic_write(tar_path, write)
        atomic_write(out_dir / f"{s:05d}.parquet",
                     lambda tmp, rows=rows: pq.write_table(pa.Table.from_pylist(rows), tmp))
        atomic_write_json(out_dir / f"{s:05d}_stats.json",
                          {"count": len(rows), "successes": len(rows), "failed_to_download": 0,
                           "failed_to_resize": 0, "status_dict": {"success": len(rows)}})
    return n_shards


def write_eval_set(out_dir: Path, num: int, captions_per_image: int, image_size: int,
                   seed: int, shard_size: int = 1000) -> int:
    """Write a CLIP_benchmark-style retrieval set: test/N.tar, each sample .jpg + .txt."""
    rng = random.Random(seed + 1_000_003)  # disjoint from the training stream
    test = out_dir / "test"
    test.mkdir(parents=True, exist_ok=True)
    n_shards = (num + shard_size - 1) // shard_size
    for s in range(n_shards):
        def write(tmp: str, s=s) -> None:
            with wds.TarWriter(tmp) as sink:
                for i in range(s * shard_size, min(num, (s + 1) * shard_size)):
                    scene = random_scene(rng)
                    n_caps = max(1, captions_per_image - (i % 2))  # uneven counts, as in COCO
                    caps = "\n".join(scene.caption(t) for t in range(n_caps))
                    sink.write({"__key__": f"s{i:07d}",
                                "jpg": jpeg_bytes(draw(scene, image_size, rng)), "txt": caps})

        atomic_write(test / f"{s}.tar", write)
    return n_shards


def write_class_folders(out_dir: Path, per_class: int, image_size: int, seed: int,
                        classes: tuple[str, ...] = SHAPES) -> int:
    """Write a folder-per-class set for zero-shot classification: out_dir/<shape>/<i>.png."""
    rng = random.Random(seed + 2_000_003)  # disjoint from the training and eval streams
    for shape in classes:
        (out_dir / shape).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            s = random_scene(rng)
            image = draw(Scene(shape, s.colour, s.bg, s.size, s.cx, s.cy), image_size, rng)
            atomic_write(out_dir / shape / f"{i}.png", lambda tmp, im=image: im.save(tmp, "PNG"))
    return per_class * len(classes)


def write_segmentation_set(out_dir: Path, num: int, image_size: int, seed: int) -> int:
    """A segmentation eval set of shapes (formats/segsets.py): background is class 0, each
    shape its index in SHAPES + 1; a 2-pixel band along each shape's edge is 255, ignored, as
    VOC marks its object borders."""
    import numpy as np
    from PIL import ImageFilter

    from dinov2clip.formats.segsets import SegSet

    rng = random.Random(seed + 3_000_003)  # disjoint from the other streams
    seg = SegSet(out_dir)
    for i in range(num):
        scene = random_scene(rng)
        image, mask = draw_with_mask(scene, image_size, rng, SHAPES.index(scene.shape) + 1)
        inside = np.asarray(mask.filter(ImageFilter.MinFilter(5)))  # 2 px in from the edge
        outside = np.asarray(mask.filter(ImageFilter.MaxFilter(5)))  # 2 px out
        label = np.where(inside == outside, np.asarray(mask), 255).astype(np.uint8)
        seg.write_sample(f"{i:05d}", image, Image.fromarray(label, "L"))
    seg.write_classes(["background", *SHAPES], background=True, source="synthetic shapes")
    return num
