"""The URL/caption list handed to img2dataset: the configured file, or a local one made from it.

A local copy is made when the list is at an http(s) URL (img2dataset would need fsspec's HTTP
backend, aiohttp, which is not installed), when only its first max_samples rows are wanted, or when
it has no header row (CC12M's TSV: url<TAB>caption). Text lists are streamed line by line, so
a subset of a remote list downloads only the rows it keeps; pyarrow's CSV reader, which
img2dataset uses, allows no newline inside a value, so a line is a row.
"""

from __future__ import annotations

import gzip
import io
import itertools
import shutil
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dinov2clip.config import ConfigError, DataConfig, config_hash
from dinov2clip.io_utils import atomic_write
from dinov2clip.terminal import progress

TEXT_FORMATS = {"tsv": "\t", "csv": ",", "tsv.gz": "\t", "csv.gz": ","}


def is_remote(url_list: str) -> bool:
    return url_list.startswith(("http://", "https://"))


def prepare_url_list(cfg: DataConfig, work_dir: Path) -> tuple[str, str]:
    """(url list, input format) for img2dataset; a made file is reused by a re-run."""
    fmt, remote = cfg.input_format, is_remote(cfg.url_list)
    if not remote and not Path(cfg.url_list).exists():
        raise ConfigError(f"data.url_list not found: {cfg.url_list}")
    if not cfg.header and fmt not in TEXT_FORMATS:
        raise ConfigError(f"data.header = false applies to tsv and csv lists, not {fmt}")
    if cfg.max_samples and fmt not in (*TEXT_FORMATS, "parquet"):
        raise ConfigError(f"data.max_samples works on tsv, csv and parquet lists, not {fmt}")
    if not remote and not cfg.max_samples and cfg.header:
        return cfg.url_list, fmt  # img2dataset reads it as it is (a file or a directory)
    if not remote and Path(cfg.url_list).is_dir():
        raise ConfigError(f"data.url_list: {cfg.url_list} is a directory; max_samples and "
                          "header = false need a single file")
    # Made files are named after what went into them, so a changed setting never reuses one.
    origin = config_hash([cfg.url_list, cfg.header, cfg.url_col, cfg.caption_col])[:8]
    stem = (cfg.url_list.rstrip("/").rsplit("/", 1)[-1].split(".")[0] or "urls") + "-" + origin
    subset = f"_first{cfg.max_samples}" if cfg.max_samples else ""
    if fmt in TEXT_FORMATS:
        plain = fmt.removesuffix(".gz")
        out = work_dir / f"{stem}{subset}.{plain}"
        if not out.exists():  # written whole by atomic rename, so an existing file is complete
            atomic_write(out, lambda tmp: copy_rows(cfg, tmp))
        return str(out), plain
    source = Path(cfg.url_list)
    if remote:
        source = work_dir / f"{stem}.{fmt}"
        if not source.exists():
            atomic_write(source, lambda tmp: download(cfg.url_list, tmp))
    if not cfg.max_samples:
        return str(source), fmt
    out = work_dir / f"{stem}{subset}.parquet"
    if not out.exists():
        atomic_write(out, lambda tmp: head_parquet(source, tmp, cfg.max_samples))
    return str(out), fmt


@contextmanager
def open_binary(url_list: str) -> Iterator[io.BufferedIOBase]:
    if not is_remote(url_list):
        with open(url_list, "rb") as fh:
            yield fh
        return
    try:
        response = urllib.request.urlopen(url_list, timeout=60)
    except OSError as err:
        raise ConfigError(f"data.url_list: cannot fetch {url_list} ({err})") from None
    with response:
        yield response


def copy_rows(cfg: DataConfig, tmp: str) -> None:
    """Header (added if the list has none), then the first max_samples rows (0: all)."""
    delim = TEXT_FORMATS[cfg.input_format]
    with open_binary(cfg.url_list) as raw, open(tmp, "wb") as out:
        stream = gzip.GzipFile(fileobj=raw) if cfg.input_format.endswith(".gz") else raw
        if not cfg.header:  # CC12M's raw TSV: url, caption
            out.write(f"{cfg.url_col}{delim}{cfg.caption_col}\n".encode())
        else:
            out.write(stream.readline())
        if not cfg.max_samples:  # all of it: a plain copy, not a loop over 12M lines
            with progress(desc="url list", unit="B", unit_scale=True, mininterval=2) as bar:
                shutil.copyfileobj(stream, _Counted(out, bar), length=1 << 20)
            return
        # islice stops reading at the last row kept: a remote list is fetched no further.
        rows = itertools.islice(stream, cfg.max_samples)
        out.writelines(progress(rows, desc="url list", unit=" rows", total=cfg.max_samples,
                                mininterval=2))


def download(url: str, tmp: str) -> None:
    with open_binary(url) as response, open(tmp, "wb") as out:
        size = int(response.headers.get("Content-Length") or 0) or None
        with progress(total=size, desc="url list", unit="B", unit_scale=True,
                      mininterval=2) as bar:
            shutil.copyfileobj(response, _Counted(out, bar), length=1 << 20)


class _Counted:
    """A file whose writes move a progress bar by the bytes written (all copyfileobj calls)."""

    def __init__(self, out, bar):
        self.out, self.bar = out, bar

    def write(self, data: bytes) -> int:
        written = self.out.write(data)
        self.bar.update(len(data))
        return written


def head_parquet(source: Path, tmp: str, n: int) -> None:
    """The first n rows; reads only the row groups it needs."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source)
    batches, have = [], 0
    for batch in pf.iter_batches(batch_size=min(n, 65536)):
        batches.append(batch.slice(0, n - have))
        have += len(batches[-1])
        if have >= n:
            break
    pq.write_table(pa.Table.from_batches(batches, schema=pf.schema_arrow), tmp)
