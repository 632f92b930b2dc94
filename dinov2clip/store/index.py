"""The on-disk contract of an index of an image collection (`pipeline index`).

    chunks/emb/<chunk>.npy      float16 (n, D_teacher) L2-normalised projected embeddings
    chunks/dino/<chunk>.npy     float16 (n, D) L2-normalised pooled backbone features, the same
                                rows: image-to-image similarity is judged in the backbone's space
    chunks/meta/<chunk>.parquet one row per embedded image: key, path, url, caption, kind
    chunks/done/<chunk>.json    done-marker, written last: counts, skips, fingerprints, keys,
                                each file's [size, mtime_ns] as embedded, and each chunk
                                file's shape, dtype and bytes (store/integrity.py): a damaged
                                chunk is embedded again, or named in one line
    index.faiss                 all live rows in order; FAISS id i = row i of meta.parquet
    dino.faiss                  the same rows' backbone features, the same ids
    meta.parquet                key, path, url, caption, kind, chunk, and a file's size and
                                mtime_ns as embedded (a shard sample: its tar's): what the
                                server checks before showing an image
    index.json                  written last: run, models, kind, counts, chunks, skipped files

IndexDir is the only place that knows these names: build, search and serve go through it.
"""

from __future__ import annotations

from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import read_json
from dinov2clip.store.layout import DoneMarkers

VECTORS = {"emb": "index.faiss", "dino": "dino.faiss"}  # chunk array -> its assembled index


class IndexDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.chunks = self.path / "chunks"
        self.markers = DoneMarkers(self.chunks / "done")

    def __str__(self) -> str:
        return str(self.path)

    def chunk_array(self, array: str, chunk: str) -> Path:
        """chunks/<array>/<chunk>.npy, array one of VECTORS."""
        return self.chunks / array / f"{chunk}.npy"

    def chunk_meta(self, chunk: str) -> Path:
        return self.chunks / "meta" / f"{chunk}.parquet"

    def faiss(self, array: str) -> Path:
        """The assembled FAISS index of a chunk array: index.faiss or dino.faiss."""
        return self.path / VECTORS[array]

    @property
    def meta(self) -> Path:
        return self.path / "meta.parquet"

    @property
    def summary(self) -> Path:
        return self.path / "index.json"

    def is_finished(self) -> bool:
        return self.summary.is_file()

    def looks_like_index(self) -> bool:
        return self.chunks.is_dir() or self.summary.is_file()

    def read_summary(self) -> dict:
        """index.json of a finished index; one line when there is none."""
        if not self.summary.is_file():
            raise ConfigError(f"no finished index at {self.path} ({self.summary.name} missing; "
                              "run `pipeline index` first)")
        return read_json(self.summary)
