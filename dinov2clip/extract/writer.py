"""The only place extraction touches disk: per-shard npy + Parquet, then an atomic done-marker.

A shard's files are written under temporary names and renamed into place; its done-marker is
renamed in last. A shard without a marker is treated as absent, whatever files it left behind.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinov2clip.config import ConfigError
from dinov2clip.extract.mapper import Embeddings
from dinov2clip.io_utils import atomic_save_npy, atomic_write, atomic_write_json, read_json

ARRAYS = ("dino_cls", "dino_mean", "clip_image", "clip_text")


class ShardWriter:
    def __init__(self, out_dir: Path, models_hash: str):
        self.out_dir = Path(out_dir)
        self.models_hash = models_hash
        # pyarrow imports pandas on its first conversion (seconds); pay that here, not while
        # the writer thread holds the GIL in the middle of the stream.
        pa.array([0])

    def marker(self, shard: str) -> Path:
        return self.out_dir / "done" / f"{shard}.json"

    def is_done(self, shard: str) -> bool:
        path = self.marker(shard)
        if not path.exists():
            return False
        found = read_json(path).get("models_hash")
        if found != self.models_hash:
            raise ConfigError(
                f"{self.out_dir} holds shard {shard} from other models or preprocessing "
                f"(hash {found} != {self.models_hash}); set extract.tag to a new name or delete it")
        return True

    def remove_stale_temps(self, shard: str) -> None:
        """Temp files a killed run left while writing this shard (this rank owns the shard)."""
        for folder, name in [*((a, f"{shard}.npy") for a in ARRAYS),
                             ("meta", f"{shard}.parquet"), ("done", f"{shard}.json")]:
            for tmp in (self.out_dir / folder).glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def remove_stale_manifest_temps(self) -> None:
        for name in ("manifest.json", "config.json"):
            for tmp in self.out_dir.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)

    def write(self, shard: str, emb: Embeddings, meta: list[dict], skipped: Counter,
              source: str, dropped: Counter | None = None) -> dict:
        self.remove_stale_temps(shard)
        n = len(meta)
        assert emb.dino_cls.shape[0] == emb.clip_image.shape[0] == n, "rows must line up"
        for name in ARRAYS:
            atomic_save_npy(self.out_dir / name / f"{shard}.npy", getattr(emb, name))
        table = pa.Table.from_pylist(meta, schema=META_SCHEMA)
        atomic_write(self.out_dir / "meta" / f"{shard}.parquet",
                     lambda tmp: pq.write_table(table, tmp))
        record = {"shard": shard, "source": source, "models_hash": self.models_hash,
                  "n_images": n, "n_captions": int(emb.clip_text.shape[0]),
                  "skipped": dict(sorted(skipped.items())),
                  "dropped": dict(sorted((dropped or {}).items()))}  # e.g. empty caption lines
        atomic_write_json(self.marker(shard), record)  # last: the shard now exists
        return record

    def done_records(self) -> list[dict]:
        return [read_json(p) for p in sorted((self.out_dir / "done").glob("*.json"))]

    def write_manifest(self, description: dict, expected_shards: list[str]) -> dict | None:
        """The manifest, once every expected shard is done (with several ranks, the last one
        to finish writes it; ranks that see the same complete set write identical bytes)."""
        records = self.done_records()
        if {r["shard"] for r in records} < set(expected_shards):
            return None
        skipped: Counter = Counter()
        dropped: Counter = Counter()
        for r in records:
            skipped.update(r["skipped"])
            dropped.update(r.get("dropped", {}))
        done = {r["shard"] for r in records}
        manifest = {
            **description,
            "models_hash": self.models_hash,
            "dtypes": {name: "float16" for name in ARRAYS},
            "normalised": {"dino_cls": False, "dino_mean": False, "clip_image": True,
                           "clip_text": True},
            "shards": {r["shard"]: {"n_images": r["n_images"], "n_captions": r["n_captions"],
                                    "skipped": r["skipped"], "source": r["source"]}
                       for r in records},
            "n_images": sum(r["n_images"] for r in records),
            "n_captions": sum(r["n_captions"] for r in records),
            "skipped": dict(sorted(skipped.items())),
            "dropped": dict(sorted(dropped.items())),
            "incomplete_shards": sorted(set(expected_shards) - done),
        }
        atomic_write_json(self.out_dir / "manifest.json", manifest)
        return manifest


META_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("captions", pa.list_(pa.string())),
    ("url", pa.string()),
    ("row", pa.int64()),  # row index in this shard's npy files
    ("caption_start", pa.int64()),  # this image's first row in clip_text
    ("n_captions", pa.int64()),
])


def empty_embeddings(d_dino: int, d_clip: int) -> Embeddings:
    z = np.zeros
    return Embeddings(z((0, d_dino), np.float16), z((0, d_dino), np.float16),
                      z((0, d_clip), np.float16), z((0, d_clip), np.float16))


def concat(parts: list[Embeddings], d_dino: int, d_clip: int) -> Embeddings:
    if not parts:
        return empty_embeddings(d_dino, d_clip)
    return Embeddings(*(np.concatenate([getattr(p, a) for p in parts]) for a in ARRAYS))

