"""The on-disk contract of an embeddings set, embeddings/<dataset>/<tag>/, and when it is complete.

    plan.json               written before the first shard: every shard the set must hold (from
                            the input shards), the models' description and hash, the libraries
    <array>/<shard>.npy     one per ARRAYS name, float16; clip_text has one row per caption
    meta/<shard>.parquet    META_SCHEMA, one row per image
    done/<shard>.json       the shard's done-marker, renamed in after its files: the shard exists
    manifest.json           once every planned shard is done: models, counts, skipped by reason
    config.json             the resolved config of the extract run

A set is complete when every shard of its plan has a done-marker; readers refuse anything else,
so a killed extract never passes for a finished one. A done shard whose files do not match its
marker (store/integrity.py) is damaged: readers refuse it naming the file, extract re-does it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import atomic_write_json, read_json, shard_order
from dinov2clip.models.loaders import OPEN_CLIP_SCHEMAS
from dinov2clip.store.integrity import first_nonfinite_row, npy_problem, parquet_problem

ARRAYS = ("dino_cls", "dino_mean", "clip_image", "clip_text")
PLAN, MANIFEST = "plan.json", "manifest.json"

META_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("captions", pa.list_(pa.string())),
    ("url", pa.string()),
    ("row", pa.int64()),  # row index in this shard's npy files
    ("caption_start", pa.int64()),  # this image's first row in clip_text
    ("n_captions", pa.int64()),
])


def embeddings_root(root: Path) -> Path:
    """artifacts/embeddings: one folder per dataset, one set per tag below it."""
    return Path(root) / "embeddings"


def embeddings_dir(root: Path, dataset: str, tag: str) -> Path:
    """The address of one set: embeddings/<dataset>/<tag>."""
    return embeddings_root(root) / dataset / tag


def embeddings_tag(extract) -> str:
    """The tag of the set an ExtractConfig writes: explicit, or derived from the two model names,
    so several backbone-teacher pairs live side by side over one download."""
    if extract.tag:
        return extract.tag
    if extract.clip_model.startswith(OPEN_CLIP_SCHEMAS):  # the weights come with the model id
        return f"{Path(extract.dino_model).name}__{Path(extract.clip_model.partition(':')[2]).name}"
    pre = Path(extract.clip_pretrained).stem if extract.clip_pretrained else "random"
    return f"{Path(extract.dino_model).name}__{Path(extract.clip_model).stem}-{pre}"


class DoneMarkers:
    """A folder of <unit>.json records, one per finished unit of work (a shard, a chunk).

    A marker is written atomically after the unit's files, so a unit exists once its marker
    does, whatever a killed writer left behind.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def read(self, name: str) -> dict | None:
        path = self.path(name)
        return read_json(path) if path.exists() else None

    def write(self, name: str, record: dict) -> None:
        atomic_write_json(self.path(name), record)

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.folder.glob("*.json"))

    def records(self) -> list[dict]:
        return [read_json(self.path(n)) for n in self.names()]


class EmbeddingSet:
    """One embeddings/<dataset>/<tag>/ directory: where each file goes, and what it holds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.markers = DoneMarkers(self.path / "done")
        self._manifest: dict | None = None

    def array_path(self, array: str, shard: str) -> Path:
        return self.path / array / f"{shard}.npy"

    def meta_path(self, shard: str) -> Path:
        return self.path / "meta" / f"{shard}.parquet"

    def read_plan(self) -> dict | None:
        path = self.path / PLAN
        return read_json(path) if path.exists() else None

    def write_plan(self, shards: dict[str, str], models_hash: str, models: dict,
                   runtime: dict) -> None:
        """shards: name -> the input it comes from. Every rank writes the same bytes."""
        atomic_write_json(self.path / PLAN, {"shards": dict(sorted(shards.items())),
                                             "models_hash": models_hash, "models": models,
                                             "runtime": runtime})

    def complete_shards(self) -> list[str]:
        """The plan's shards in shard order (0, 1, ..., 10); one line naming what is missing
        when any is not done."""
        if not self.path.is_dir():
            raise ConfigError(f"embeddings directory not found: {self.path} (run the extract "
                              "stage)")
        plan = self.read_plan()
        if plan is None:
            raise ConfigError(f"{self.path}: no {PLAN}, so which shards it must hold is unknown "
                              "(extract was stopped before its first shard, or is older than "
                              "this check); re-run extract to complete it")
        shards = sorted(plan["shards"], key=shard_order)
        missing = [s for s in shards if not self.markers.path(s).exists()]
        if missing:
            raise ConfigError(
                f"{self.path} is incomplete: {len(missing)} of {len(shards)} shards missing ("
                + ", ".join(missing[:10]) + (", ..." if len(missing) > 10 else "")
                + "); re-run extract to finish it")
        return shards

    def fingerprint(self) -> list:
        """What identifies the cached data for train --resume: each shard's done-marker."""
        out = []
        for s in self.complete_shards():
            record = self.markers.read(s)
            out.append([s, record.get("n_images"), record.get("models_hash")])
        return out

    def manifest(self) -> dict:
        """manifest.json, read once ({} before extract wrote it)."""
        path = self.path / MANIFEST
        if self._manifest is None:
            try:
                self._manifest = read_json(path) if path.is_file() else {}
            except ValueError as err:
                raise ConfigError(f"{path} does not parse as JSON ({err}); run `pipeline "
                                  "extract` to write it again") from None
        return self._manifest

    def verified_shards(self) -> list[str]:
        """complete_shards(), every file of each checked against its done-marker and the
        manifest: stat and headers, no data read, so a damaged set fails before any work."""
        shards = self.complete_shards()
        for s in shards:
            self.check(s)
        return shards

    def check(self, shard: str) -> None:
        problem = self.damage(shard)
        if problem:
            raise ConfigError(f"{problem}; {_redo(shard)}")

    def damage(self, shard: str) -> str | None:
        """How the first of a done shard's files differs from what its done-marker and the
        manifest say, naming it; None when every file matches."""
        try:
            record = self.markers.read(shard) or {}
        except ValueError as err:
            return f"{self.markers.path(shard)} does not parse as JSON ({err})"
        expect = self._expected(shard, record)
        for array in ARRAYS:
            problem = npy_problem(self.array_path(array, shard), expect[array])
            if problem:
                return problem
        return parquet_problem(self.meta_path(shard), expect["meta"])

    def _expected(self, shard: str, record: dict) -> dict[str, dict]:
        """Per file, what it must be: the done-marker's record of it where one was kept (markers
        written since files are recorded), else what the marker's counts and the manifest say."""
        manifest = self.manifest()
        counts = {**manifest.get("shards", {}).get(shard, {}), **record}
        files, dims = record.get("files", {}), manifest.get("dims", {})
        out = {"meta": {"rows": counts.get("n_images"), **files.get("meta", {})}}
        for array in ARRAYS:
            kept = files.get(array, {})
            rows, cols = kept.get("shape") or (
                counts.get("n_captions" if array == "clip_text" else "n_images"),
                dims.get(array.split("_")[0]))  # dims: {"dino": D, "clip": d}
            dtype = kept.get("dtype") or manifest.get("dtypes", {}).get(array, "float16")
            out[array] = {"rows": rows, "cols": cols, "dtype": dtype, "bytes": kept.get("bytes")}
        return out

    def mmap(self, array: str, shard: str) -> np.ndarray:
        path = self.array_path(array, shard)
        try:
            return np.load(path, mmap_mode="r")
        except ValueError as err:  # a checked file does not get here; one damaged since may
            raise ConfigError(f"{path} is not a readable npy file ({err}); {_redo(shard)}"
                              ) from None

    def load(self, array: str, shard: str, rows: np.ndarray | None = None) -> np.ndarray:
        """One array of a shard in memory (only `rows` of it, if given). No marker records the
        values, so they are looked at here, as they are loaded: a NaN or inf is refused."""
        data = self.mmap(array, shard)
        data = np.array(data if rows is None else data[rows])
        bad = first_nonfinite_row(data)
        if bad:
            row = bad[0] if rows is None else int(rows[bad[0]])
            raise ConfigError(
                f"{self.array_path(array, shard)}: row {row} holds NaN or inf ({bad[1]} of "
                f"{len(data)} rows); shard {shard} is damaged: delete {self.markers.path(shard)} "
                "and run `pipeline extract` to re-do it")
        return data

    def meta_column(self, shard: str, column: str) -> list:
        path = self.meta_path(shard)
        try:
            return pq.read_table(path, columns=[column]).column(0).to_pylist()
        except pa.ArrowInvalid as err:  # as in mmap: damaged since it was checked
            raise ConfigError(f"{path} does not parse as Parquet ({err}); {_redo(shard)}"
                              ) from None

    def dims(self) -> tuple[int, int]:
        """(D_dino, D_clip) from the npy headers of the first shard (read, not loaded)."""
        first = self.complete_shards()[0]
        self.check(first)
        return self.mmap("dino_cls", first).shape[1], self.mmap("clip_image", first).shape[1]


def _redo(shard: str) -> str:
    return f"shard {shard} is damaged: run `pipeline extract` to re-do it"


def changes(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two descriptions, with both values, short; what
    identifies the weights first, as the change a user least expects.

    Both are compared as JSON holds them: a description read back from plan.json has lists where
    a fresh one has tuples, and that is no change.
    """
    found = _differences(_as_json(old), _as_json(new))
    return [line for _, line in sorted(found, key=lambda kv: (not kv[0].startswith("weights."),
                                                              kv[0]))]


def _differences(old: dict, new: dict, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append((prefix + key, f"{prefix}{key} {_short(a)} -> {_short(b)}"))
    return out


def _as_json(value):
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _short(value) -> str:
    text = str(value)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text
