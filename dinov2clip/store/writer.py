"""The only place extraction touches disk: per-shard npy + Parquet, then an atomic done-marker.

Where each file goes and what "complete" means belong to the store (dinov2clip/store). A shard's
files are written under temporary names and renamed into place; its done-marker is renamed in
last. A shard without a marker is treated as absent, whatever files it left behind. The marker
records each file's shape, dtype and size, so a file damaged since is found (store/integrity.py)
and its shard extracted again.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import (
    atomic_save_npy,
    atomic_write,
    atomic_write_json,
    remove_dead_temps,
    remove_temps,
)
from dinov2clip.store.integrity import file_record
from dinov2clip.store.layout import ARRAYS, MANIFEST, META_SCHEMA, EmbeddingSet, changes

log = logging.getLogger(__name__)


@dataclass
class Embeddings:
    dino_cls: np.ndarray  # (n, D_dino) float16
    dino_mean: np.ndarray  # (n, D_dino) float16, patch tokens only (no CLS, no registers)
    clip_image: np.ndarray  # (n, D_clip) float16, L2-normalised
    clip_text: np.ndarray  # (m, D_clip) float16, L2-normalised


class ShardWriter:
    """Writes one embeddings set. runtime: library versions a resume must match; provenance:
    what is recorded but may differ between shards (device, git state)."""

    def __init__(self, out_dir: Path, models_hash: str, runtime: dict | None = None,
                 provenance: dict | None = None):
        self.store = EmbeddingSet(out_dir)
        self.out_dir = self.store.path
        self.models_hash = models_hash
        self.runtime, self.provenance = runtime or {}, provenance or {}
        # pyarrow imports pandas on its first conversion (seconds); pay that here, not while
        # the writer thread holds the GIL in the middle of the stream.
        pa.array([0])

    def start(self, shards: dict[str, str], models: dict) -> None:
        """Before the first shard (every rank): refuse to add to a set made by other models or
        library versions, then write the plan. shards: name -> the input it comes from."""
        remove_dead_temps(self.out_dir)  # plan, manifest, config temps of killed writers
        try:
            self.store.manifest()
        except ConfigError:  # it is made from the markers: written again once all are done
            (self.out_dir / MANIFEST).unlink()
        old = self.store.read_plan()
        if old is not None and self.store.markers.names():
            self._refuse_changes(old.get("models_hash"), old.get("models", {}),
                                 old.get("runtime", {}), models)
        self.store.write_plan(shards, self.models_hash, models, self.runtime)

    def is_done(self, shard: str) -> bool:
        """The shard has its done-marker, from these models, and its files match the marker; a
        damaged shard loses its marker (it no longer exists) and is extracted again."""
        if not self.store.markers.path(shard).exists():
            return False
        try:
            record = self.store.markers.read(shard)
        except ValueError:  # a marker that does not parse: damage() names it below
            record = None
        if record is not None:
            self._refuse_changes(record.get("models_hash"), None, record.get("runtime", {}),
                                 None)
        problem = self.store.damage(shard)
        if problem:
            log.warning("%s: extracting shard %s again", problem, shard)
            self.store.markers.path(shard).unlink()
            return False
        return True

    def _refuse_changes(self, old_hash: str | None, old_models: dict | None, old_runtime: dict,
                        models: dict | None) -> None:
        where = f"{self.out_dir} holds shards"
        if old_hash != self.models_hash:
            what = changes(old_models, models) if old_models and models else []
            raise ConfigError(
                f"{where} from other models or preprocessing ("
                + ("; ".join(what) if what else f"hash {old_hash} != {self.models_hash}")
                + "); set extract.tag to a new name or delete it")
        if old_runtime != self.runtime:
            what = "; ".join(changes(old_runtime, self.runtime))
            raise ConfigError(f"{where} made with other library versions ({what}); restore "
                              "them, or set extract.tag to a new name")

    def write(self, shard: str, emb: Embeddings, meta: list[dict], skipped: Counter,
              source: str, dropped: Counter | None = None) -> dict:
        self._remove_temps(shard)
        n = len(meta)
        assert emb.dino_cls.shape[0] == emb.clip_image.shape[0] == n, "rows must line up"
        files = {}
        for name in ARRAYS:
            path = atomic_save_npy(self.store.array_path(name, shard), getattr(emb, name))
            files[name] = file_record(path, getattr(emb, name))
        table = pa.Table.from_pylist(meta, schema=META_SCHEMA)
        path = atomic_write(self.store.meta_path(shard), lambda tmp: pq.write_table(table, tmp))
        files["meta"] = file_record(path, rows=n)
        record = {"shard": shard, "source": source, "models_hash": self.models_hash,
                  "files": files,  # what a reader checks each file against
                  "runtime": self.runtime, "provenance": self.provenance,
                  "n_images": n, "n_captions": int(emb.clip_text.shape[0]),
                  "skipped": dict(sorted(skipped.items())),
                  "dropped": dict(sorted((dropped or {}).items()))}  # e.g. empty caption lines
        self.store.markers.write(shard, record)  # last: the shard now exists
        return record

    def _remove_temps(self, shard: str) -> None:
        """Temp files a killed run left while writing this shard (this rank owns the shard)."""
        for path in [*(self.store.array_path(a, shard) for a in ARRAYS),
                     self.store.meta_path(shard), self.store.markers.path(shard)]:
            remove_temps(path.parent, path.name)

    def write_manifest(self, description: dict) -> dict | None:
        """The manifest, once every planned shard is done (with several ranks, the last one
        to finish writes it; ranks that see the same complete set write identical bytes)."""
        planned = sorted(self.store.read_plan()["shards"])
        records = [self.store.markers.read(s) for s in planned]
        if any(r is None for r in records):
            return None
        skipped: Counter = Counter()
        dropped: Counter = Counter()
        for r in records:
            skipped.update(r["skipped"])
            dropped.update(r.get("dropped", {}))
        provenance = []
        for r in records:
            if r.get("provenance") not in provenance:
                provenance.append(r.get("provenance"))
        manifest = {
            **description,
            "models_hash": self.models_hash,
            "runtime": self.runtime,
            "provenance": provenance,
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
        }
        atomic_write_json(self.out_dir / MANIFEST, manifest)
        return manifest


def empty_embeddings(d_dino: int, d_clip: int) -> Embeddings:
    z = np.zeros
    return Embeddings(z((0, d_dino), np.float16), z((0, d_dino), np.float16),
                      z((0, d_clip), np.float16), z((0, d_clip), np.float16))


def concat(parts: list[Embeddings], d_dino: int, d_clip: int) -> Embeddings:
    if not parts:
        return empty_embeddings(d_dino, d_clip)
    return Embeddings(*(np.concatenate([getattr(p, a) for p in parts]) for a in ARRAYS))
