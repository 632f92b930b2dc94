"""Image formats beyond JPEG through the whole extract stage, and what it counts as dropped."""

import io
import json
import logging

import pytest
from PIL import Image

from dinov2clip.config import load_config
from dinov2clip.extract import run
from tests.helpers import extract_config
from tests.test_extract_bad_input import good_jpeg, sample, write_tar

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


class Lines(logging.Handler):
    """The log's messages (caplog is per test; this fixture runs once for the module)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def formats_run(tmp_path_factory, tiny_models):
    root = tmp_path_factory.mktemp("formats")
    photo = Image.open(io.BytesIO(good_jpeg(3)))
    rgba = photo.copy()
    rgba.putalpha(128)
    palette = photo.quantize(32)
    shards = root / "art" / "shards" / "fmt"
    shards.mkdir(parents=True)
    write_tar(shards / "00000.tar", [
        *sample("gif", saved(palette, "GIF", save_all=True, append_images=[palette]), b"g", "gif"),
        *sample("bmp", saved(photo, "BMP"), b"a bitmap", "bmp"),
        *sample("pal", saved(palette, "PNG"), b"a palette png", "png"),
        *sample("cmyk", saved(photo.convert("CMYK"), "JPEG"), b"a cmyk jpeg"),
        *sample("rgba", saved(rgba, "PNG"), b"half transparent", "png"),
        *sample("bomb", saved(Image.new("L", (600, 600)), "PNG"), b"too many pixels", "png"),
    ])
    test = root / "art" / "evalsets" / "ev" / "test"
    test.mkdir(parents=True)
    write_tar(test / "0.tar", [*sample("e0", good_jpeg(4), b"one\n\n  \ntwo\n"),
                               *sample("e1", good_jpeg(5), b"three")])
    cfg = load_config(extract_config(root / "c.toml", root / "art", tiny_models,
                                     ["shards/fmt", "evalsets/ev"]))
    logger, lines = logging.getLogger("dinov2clip"), Lines()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(lines)
    try:
        with pytest.MonkeyPatch.context() as mp:  # 600 x 600 is over twice this: a bomb
            mp.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)
            run(cfg)
    finally:
        logger.removeHandler(lines)
        logger.setLevel(level)
    return cfg.root / "embeddings", "\n".join(lines.messages)


def test_gif_bmp_palette_cmyk_and_alpha_images_are_read_and_a_bomb_is_too_large(formats_run):
    emb, _ = formats_run
    manifest = json.loads((emb / "fmt" / "t" / "manifest.json").read_text())
    assert manifest["skipped"] == {"too_large": 1}
    assert manifest["n_images"] == 5


def test_empty_caption_lines_are_counted_in_the_manifest_and_the_log(formats_run):
    emb, log = formats_run
    manifest = json.loads((emb / "ev" / "t" / "manifest.json").read_text())
    assert (manifest["n_images"], manifest["n_captions"]) == (2, 3)
    assert manifest["dropped"] == {"empty_caption_lines": 2}
    assert "ev: 2 images, 3 captions, skipped none; 2 empty caption lines dropped" in log
