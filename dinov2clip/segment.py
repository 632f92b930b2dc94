"""`pipeline segment`: open-vocabulary segmentation of an image folder with a run, under the
eval's protocol (with --pamr, refined as the eval's "+ PAMR" rows are). Per image <stem>.png
(the label map: value = index into the classes, with --background 0 is background) and
<stem>_overlay.png (image | prediction, with a legend); segment.json, written last, names the
classes, the protocol and every skipped file."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

from dinov2clip.config import ConfigError, UseOptions
from dinov2clip.dense.protocol import Protocol
from dinov2clip.formats.images import list_images
from dinov2clip.io_utils import atomic_write, atomic_write_json
from dinov2clip.store import RunDir
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)


def parse_classes(text: str) -> list[str]:
    """"cat, dog,grass" -> ["cat", "dog", "grass"]; empty names and repeats are errors."""
    classes = [c.strip() for c in text.split(",")]
    if not text.strip() or any(not c for c in classes):
        raise ConfigError(f"--classes {text!r}: give comma-separated names, none empty")
    if len(set(classes)) != len(classes):
        raise ConfigError(f"--classes {text!r}: a class is named twice")
    return classes


def segment_folder(*, run: str, images: Path, classes: str, out: Path | None = None,
                   background: float | None = None, pamr: bool = False,
                   root: Path = Path("artifacts"), options: UseOptions | None = None,
                   protocol: Protocol | None = None) -> dict:
    from dinov2clip.evaluate.seg_report import overlay_picture
    from dinov2clip.models.inference import DinoV2Clip

    names = parse_classes(classes)
    if background is not None and not -1.0 <= background <= 1.0:
        raise ConfigError(f"--background is a cosine threshold in [-1, 1], got {background}")
    if not Path(images).is_dir():
        raise ConfigError(f"--images: not a folder: {images}")
    files = list_images(Path(images))
    if not files:
        raise ConfigError(f"--images: no images in {images}")
    run_dir = RunDir.resolve(run, root)
    out = Path(out) if out else run_dir.segment_dir(images)
    out.mkdir(parents=True, exist_ok=True)
    model = DinoV2Clip.from_pretrained(run_dir.path, **(options or UseOptions()).model_args())
    protocol = replace(protocol or Protocol(), bg_threshold=background, pamr=pamr)
    shown = ["background", *names] if background is not None else names
    done, skipped = [], {}
    for path in progress(files, desc="segment", unit="img"):
        try:
            labels = model.segment(path, names, background=background, protocol=protocol,
                                   pamr=pamr)
        except (OSError, ValueError) as err:  # an unreadable file is counted, never fatal
            skipped[str(path)] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
            continue
        stem = path.relative_to(images).with_suffix("").as_posix().replace("/", "__")
        mask = Image.fromarray(labels.numpy().astype(np.uint8), "L")
        atomic_write(out / f"{stem}.png", lambda tmp, m=mask: m.save(tmp, "PNG"))
        atomic_write(out / f"{stem}_overlay.png", lambda tmp, p=path, lb=labels: overlay_picture(
            p, None, lb.numpy(), shown, tmp))
        done.append(stem)
    summary = {"run": str(run_dir), "classes": shown, "background": background,
               "protocol": protocol.to_dict(), "n_images": len(done), "skipped": skipped}
    atomic_write_json(out / "segment.json", summary)
    log.info("segmented %d images into %s (%d skipped)", len(done), out, len(skipped))
    return summary
