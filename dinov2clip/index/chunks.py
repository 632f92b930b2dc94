"""The chunks of an index directory being built: which are done, writing them with their
done-markers, and reading them back. IndexDir (store/index.py) names the files."""

from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dinov2clip.config import ConfigError
from dinov2clip.index.sources import Chunk, ChunkItems
from dinov2clip.io_utils import atomic_save_npy, atomic_write, remove_temps
from dinov2clip.store import IndexDir
from dinov2clip.store.index import VECTORS
from dinov2clip.store.integrity import file_record, npy_problem, parquet_problem

log = logging.getLogger(__name__)

CHUNK_META_SCHEMA = pa.schema([("key", pa.string()), ("path", pa.string()), ("url", pa.string()),
                         ("caption", pa.string()), ("kind", pa.string())])


class ChunkStore:
    """The chunks of one index directory: which are done, and writing and reading them."""

    def __init__(self, out: IndexDir, models_hash: str):
        self.out, self.models_hash = out, models_hash
        self.markers = out.markers

    def is_done(self, chunk: Chunk, check_files: bool = True) -> bool:
        """Embedded, by this run, from these files; a stale or damaged chunk is embedded again.
        check_files=False: the marker alone (rank 0 waiting for another rank's chunk, whose
        files check_files() judges before the index is assembled)."""
        record = self.markers.read(chunk.name)
        if record is None:
            return False
        if record.get("models_hash") != self.models_hash:
            raise ConfigError(f"{self.out} was built with another run or projector; "
                              "use --force to rebuild it or --out for a new index")
        if record.get("fingerprint") != chunk.fingerprint():
            log.warning("chunk %s: its files changed since it was embedded; embedding it again",
                        chunk.name)
            return False
        if not self.out.chunk_array("dino", chunk.name).is_file():  # older indexes lack it
            return False
        problem = self.file_problem(chunk.name, record) if check_files else None
        if problem:
            log.warning("chunk %s: %s; embedding it again", chunk.name, problem)
        return problem is None

    def file_problem(self, name: str, record: dict) -> str | None:
        """What is wrong with a done chunk's files against its marker (store/integrity.py), or
        None. Markers from before files were recorded get the npy headers' own checks."""
        files = record.get("files", {})
        for array in VECTORS:
            expect = {"rows": record["n_images"], **files.get(array, {})}
            problem = npy_problem(self.out.chunk_array(array, name), expect)
            if problem:
                return problem
        return parquet_problem(self.out.chunk_meta(name),
                               {"rows": record["n_images"], **files.get("meta", {})})

    def check_files(self, names: list[str]) -> None:
        """Before assembling: every chunk sound, or one line naming the damaged file (another
        rank's chunk, damaged after it was written, is not this rank's to re-embed)."""
        for name in names:
            problem = self.file_problem(name, self.markers.read(name))
            if problem:
                raise ConfigError(f"index {self.out}: {problem}; re-run `pipeline index` to "
                                  "embed that chunk again")

    def remove_temps(self, chunk: Chunk) -> None:
        """Temp files a killed run left while writing this chunk (this rank owns it)."""
        for path in (self.out.chunk_array("emb", chunk.name),
                     self.out.chunk_array("dino", chunk.name), self.out.chunk_meta(chunk.name),
                     self.markers.path(chunk.name)):
            remove_temps(path.parent, path.name)

    def indexed_files(self, names: list[str]) -> dict[str, dict[str, list[int] | None]]:
        """{chunk: {file key: its stamp when embedded}} for the folder chunks of a finished index
        (stamps None in indexes written before they were kept)."""
        records = [self.markers.read(name) for name in names]
        return {r["chunk"]: stamps_of(r) for r in records if r and "keys" in r}

    def write(self, chunk: Chunk, emb: np.ndarray, dino: np.ndarray, rows: list[dict],
              items: ChunkItems) -> None:
        files = {}
        for array, data in (("emb", emb), ("dino", dino)):
            path = self.out.chunk_array(array, chunk.name)
            atomic_save_npy(path, data)
            files[array] = file_record(path, data)
        table = pa.Table.from_pylist(rows, schema=CHUNK_META_SCHEMA)
        atomic_write(self.out.chunk_meta(chunk.name),
                     lambda tmp: pq.write_table(table, tmp))
        files["meta"] = file_record(self.out.chunk_meta(chunk.name), rows=len(rows))
        record = {"chunk": chunk.name, "n_images": len(rows), "files": files,
                  "skipped": dict(sorted(items.skipped.items())),
                  "skipped_files": dict(sorted(items.skipped_names.items())),
                  "fingerprint": chunk.fingerprint(), "models_hash": self.models_hash}
        if chunk.shard is None:  # a folder chunk's files as embedded, for growing it later
            record["keys"] = [r["key"] for r in items.rows]
            record["stamps"] = [r["stamp"] for r in items.rows]
        else:  # what the server checks before showing one of its samples
            record["shard_stamp"] = items.shard_stamp
        self.markers.write(chunk.name, record)  # last: the chunk now exists

    def embeddings(self, names: list[str], keep: dict[str, np.ndarray], array: str = "emb"):
        """A callable yielding each chunk's kept (n, dim) float32 rows, in order."""
        def chunks():
            for name in names:
                x = np.load(self.out.chunk_array(array, name))
                yield x[keep[name]].astype(np.float32)
        return chunks


def stamps_of(record: dict) -> dict[str, list[int] | None]:
    """{file key: stamp when embedded} of a folder chunk's done-marker."""
    return dict(zip(record["keys"], record.get("stamps", [None] * len(record["keys"])),
                    strict=True))
