"""Tiny stand-ins for the segmentation benchmarks, in their published layouts (the VOC tar, the
ADE20K and COCO zips, mmsegmentation's converted Pascal Context, Cityscapes' folders), each
label holding known values (0, the highest class, 255, values the published list does not
name), and an HTTP server on 127.0.0.1 that serves them with Range requests and can cut a
response short after a fixed number of bytes."""

from __future__ import annotations

import http.server
import io
import re
import tarfile
import threading
import urllib.parse
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 10, 8  # every picture; a label of another size is the "label_size_differs" case


def picture(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (W, H)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(out, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return out.getvalue()


def label_png(values: list[int], palette: bool = False, size: tuple[int, int] = (W, H)) -> bytes:
    """A label whose pixels cycle through VALUES; as VOC stores them (palette indices) or "L"."""
    n = size[0] * size[1]
    grid = np.resize(np.array(values, dtype=np.uint8), n).reshape(size[1], size[0])
    im = Image.fromarray(grid, "L")
    if palette:
        im = im.convert("P")
        im.putpalette([c for i in range(256) for c in (i, 255 - i, (7 * i) % 256)])
        im.putdata(grid.ravel().tolist())
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


def values_of(values: list[int], size: tuple[int, int] = (W, H)) -> np.ndarray:
    n = size[0] * size[1]
    return np.resize(np.array(values, dtype=np.uint8), n).reshape(size[1], size[0])


def mapped(values: list[int], table: dict[int, int]) -> np.ndarray:
    """What the installed label must hold: each value through TABLE, 255 where it has none."""
    source = values_of(values)
    return np.vectorize(lambda v: table.get(int(v), 255), otypes=[np.uint8])(source)


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for folder in sorted({n.rsplit("/", 1)[0] for n in members}):
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for folder in sorted({n.rsplit("/", 1)[0] + "/" for n in members}):
            z.writestr(folder, b"")
        for name, payload in members.items():
            z.writestr(name, payload)
    return path


def write_folder(root: Path, members: dict[str, bytes]) -> Path:
    for name, payload in members.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(payload)
    return root


# --- Pascal VOC 2012 -------------------------------------------------------------------------

VOC_LABELS = {"2007_000032": [0, 1, 20, 255, 22],  # 22: not a VOC class
              "2007_000033": [15, 0, 255, 7]}
# 2008_000005 has no label, 2009_000010 a label of another size, 2010_000001 no image
VOC_VAL = ["2007_000032", "2007_000033", "2008_000005", "2009_000010", "2010_000001"]


def voc_members() -> dict[str, bytes]:
    base = "VOCdevkit/VOC2012/"
    m = {base + "ImageSets/Segmentation/val.txt": ("\n".join(VOC_VAL) + "\n").encode(),
         base + "ImageSets/Segmentation/train.txt": b"2007_000001\n"}
    for i, key in enumerate(["2007_000001", *VOC_VAL[:4]]):
        m[base + f"JPEGImages/{key}.jpg"] = picture(i)
    for key, values in VOC_LABELS.items():
        m[base + f"SegmentationClass/{key}.png"] = label_png(values, palette=True)
    m[base + "SegmentationClass/2007_000001.png"] = label_png([3], palette=True)
    m[base + "SegmentationClass/2009_000010.png"] = label_png([1], palette=True, size=(W, H + 1))
    m[base + "SegmentationObject/2007_000032.png"] = label_png([9], palette=True)
    return m


# --- ADE20K ------------------------------------------------------------------------------------

ADE_LABELS = {"ADE_val_00000001": [0, 1, 150, 151],  # 151: not an ADE20K class
              "ADE_val_00000002": [2, 75, 0]}


def ade_members() -> dict[str, bytes]:
    base = "ADEChallengeData2016/"
    m = {base + "images/training/ADE_train_00000001.jpg": picture(50),
         base + "annotations/training/ADE_train_00000001.png": label_png([4])}
    for i, (key, values) in enumerate(ADE_LABELS.items()):
        m[base + f"images/validation/{key}.jpg"] = picture(60 + i)
        m[base + f"annotations/validation/{key}.png"] = label_png(values)
    return m


# --- COCO-Stuff 164k / COCO-Object -----------------------------------------------------------

# stuffthingmaps values are COCO-Stuff id - 1: 0 person, 11 street sign (removed from COCO),
# 12 stop sign, 89 toothbrush, 90 hair brush (removed), 91 banner (the first stuff class),
# 181 wood (the last), 255 unlabeled.
COCO_LABELS = {"000000000139": [0, 11, 12, 89, 255],
               "000000000285": [90, 91, 181, 0]}


def coco_members() -> tuple[dict[str, bytes], dict[str, bytes]]:
    """(val2017.zip, stuffthingmaps_trainval2017.zip) members; 000000000632 has no map."""
    images = {f"val2017/{k}.jpg": picture(70 + i)
              for i, k in enumerate([*COCO_LABELS, "000000000632"])}
    maps = {f"val2017/{k}.png": label_png(v) for k, v in COCO_LABELS.items()}
    maps["train2017/000000000009.png"] = label_png([5])
    return images, maps


# --- Pascal Context (mmsegmentation's converted layout) ---------------------------------------

CONTEXT_LABELS = {"2008_000002": [0, 1, 59], "2008_000003": [30, 0, 255]}


def context_members() -> dict[str, bytes]:
    base = "VOCdevkit/VOC2010/"
    m = {base + "ImageSets/SegmentationContext/val.txt": ("\n".join(CONTEXT_LABELS)).encode(),
         base + "ImageSets/SegmentationContext/train.txt": b"2008_000008\n",
         base + "JPEGImages/2008_000008.jpg": picture(80),
         base + "SegmentationClassContext/2008_000008.png": label_png([2])}
    for i, (key, values) in enumerate(CONTEXT_LABELS.items()):
        m[base + f"JPEGImages/{key}.jpg"] = picture(81 + i)
        m[base + f"SegmentationClassContext/{key}.png"] = label_png(values)
    return m


# --- Cityscapes --------------------------------------------------------------------------------

CITY_TRAIN_IDS = {"frankfurt_000000_000294": [0, 18, 255]}  # has labelTrainIds (and labelIds)
CITY_LABEL_IDS = {"lindau_000001_000019": [7, 33, 0, 4, 40]}  # labelIds only; 40 is no labelId


def cityscapes_members() -> dict[str, bytes]:
    m = {}
    for i, key in enumerate([*CITY_TRAIN_IDS, *CITY_LABEL_IDS]):
        city = key.split("_")[0]
        m[f"leftImg8bit/val/{city}/{key}_leftImg8bit.png"] = picture(90 + i, "PNG")
    m["leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"] = picture(99, "PNG")
    for key, values in CITY_TRAIN_IDS.items():
        m[f"gtFine/val/frankfurt/{key}_gtFine_labelTrainIds.png"] = label_png(values)
        m[f"gtFine/val/frankfurt/{key}_gtFine_labelIds.png"] = label_png([26])
    for key, values in CITY_LABEL_IDS.items():
        m[f"gtFine/val/lindau/{key}_gtFine_labelIds.png"] = label_png(values)
    return m


# --- The server ---------------------------------------------------------------------------------


class ArchiveServer:
    """GET (with "Range: bytes=N-") of FILES by path; cut(path, n, times) makes the next TIMES
    responses for path stop after n body bytes and close the connection."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.cuts = files, [], {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.respond(self)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def cut(self, path: str, after: int, times: int = 1) -> None:
        self.cuts[path] = [after, times]

    def respond(self, h) -> None:
        path = urllib.parse.urlsplit(h.path).path
        asked = h.headers.get("Range")
        self.requests.append((path, asked))
        if path not in self.files:
            return self._send(h, 404, b"not found", {})
        data, start, headers = self.files[path], 0, {}
        if asked:
            start = int(re.fullmatch(r"bytes=(\d+)-", asked)[1])
            if start >= len(data):
                return self._send(h, 416, b"", {"Content-Range": f"bytes */{len(data)}"})
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        body = data[start:]
        cut = self.cuts.get(path)
        if cut and cut[1] > 0:
            cut[1] -= 1
            return self._send(h, 206 if asked else 200, body, headers, stop=cut[0])
        self._send(h, 206 if asked else 200, body, headers)

    @staticmethod
    def _send(h, status: int, body: bytes, headers: dict, stop: int | None = None) -> None:
        h.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body if stop is None else body[:stop])
        h.wfile.flush()
        h.close_connection = True

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
