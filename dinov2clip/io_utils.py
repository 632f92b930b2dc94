"""Atomic file writes: a temp file in the same directory, then os.replace.

No reader ever sees a half-written file under its final name, whatever moment a job is killed.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), fsync, then rename onto path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w") as fh:
            fh.write(text)

    return atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_save_npy(path: str | os.PathLike, array) -> Path:
    import numpy as np

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            np.save(fh, array)

    return atomic_write(path, write)


def read_json(path: str | os.PathLike) -> Any:
    with open(path) as fh:
        return json.load(fh)


def shard_order(name: str | os.PathLike) -> tuple:
    """Sort key for shard files: numeric stems by value (0, 1, 2, ..., 10, as CLIP_benchmark and
    nshards.txt number an eval set's shards), then any other names alphabetically."""
    stem = Path(name).name.split(".")[0]
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)
