"""What a shard's files must be, checked cheaply each time they are opened.

At write time the done-marker records each file's shape, dtype and byte size (file_record). A
reader compares the file it opens with that record before it maps a byte: a truncated, replaced
or unreadable file is one line naming it, not numpy's or pyarrow's traceback naming nothing.
Markers written before sizes were recorded still allow the checks the npy header itself gives
(its shape against the marker's counts, and the byte size the header implies).

Each check returns a problem (a phrase starting with the file's path) or None.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def file_record(path: Path, array: np.ndarray | None = None, rows: int | None = None) -> dict:
    """What a done-marker records about a file just written: an npy's shape and dtype, or a
    table's row count, and its byte size."""
    record = {"bytes": Path(path).stat().st_size}
    if array is not None:
        record.update(shape=list(array.shape), dtype=array.dtype.name)
    if rows is not None:
        record["rows"] = rows
    return record


def npy_problem(path: Path, expect: dict) -> str | None:
    """expect: any of rows, cols, dtype, bytes; what is not known is not checked."""
    size = _size(path)
    if size is None:
        return f"{path} is missing"
    try:
        shape, dtype, offset = _npy_header(path)
    except (ValueError, SyntaxError, TypeError) as err:
        return f"{path} is not a readable npy file ({' '.join(str(err).split())})"
    if expect.get("dtype") and dtype.name != expect["dtype"]:
        return f"{path} holds {dtype.name}, not {expect['dtype']}"
    got = _shape_problem(path, shape, expect)
    if got:
        return got
    if expect.get("bytes") is not None and size != expect["bytes"]:
        return f"{path} is {size} bytes, its done-marker says {expect['bytes']}"
    need = offset + math.prod(shape) * dtype.itemsize
    if size != need:
        return f"{path} is {size} bytes, its npy header needs {need}"
    return None


def parquet_problem(path: Path, expect: dict) -> str | None:
    """expect: any of rows, bytes. The footer is parsed, the data is not read."""
    size = _size(path)
    if size is None:
        return f"{path} is missing"
    if expect.get("bytes") is not None and size != expect["bytes"]:
        return f"{path} is {size} bytes, its done-marker says {expect['bytes']}"
    try:
        rows = pq.read_metadata(path).num_rows
    except (pa.ArrowInvalid, ValueError) as err:
        return f"{path} does not parse as Parquet ({' '.join(str(err).split())})"
    if expect.get("rows") is not None and rows != expect["rows"]:
        return f"{path} has {rows} rows, its done-marker says {expect['rows']}"
    return None


def first_nonfinite_row(data: np.ndarray) -> tuple[int, int] | None:
    """(first row holding NaN or inf, how many rows do), or None when every value is finite."""
    bad = ~np.isfinite(data).all(axis=tuple(range(1, data.ndim)))
    n_bad = int(bad.sum())
    return (int(np.argmax(bad)), n_bad) if n_bad else None


def _shape_problem(path: Path, shape: tuple, expect: dict) -> str | None:
    if len(shape) != 2:
        return f"{path} has shape {shape}, not (rows, dim)"
    if expect.get("rows") is not None and shape[0] != expect["rows"]:
        return f"{path} has {shape[0]} rows, its done-marker says {expect['rows']}"
    if expect.get("cols") is not None and shape[1] != expect["cols"]:
        return f"{path} is {shape[1]}-d, the set is {expect['cols']}-d"
    return None


def _npy_header(path: Path) -> tuple[tuple, np.dtype, int]:
    """(shape, dtype, offset of the data) from an npy header, without reading the data."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        shape, _, dtype = read(fh)
        return shape, dtype, fh.tell()


def _size(path: Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None
