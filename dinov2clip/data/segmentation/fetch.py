"""An archive downloaded over HTTP into <file>.part, resumed with a Range request where a
connection drops (within the call, and on the next run), renamed into place whole, with its
sha256 recorded beside it in <file>.sha256. Every failure is one line naming the URL and what
to do instead."""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.data.segmentation.archives import sha256_of
from dinov2clip.io_utils import atomic_write_text
from dinov2clip.terminal import progress

log = logging.getLogger(__name__)

CHUNK = 1 << 20
TIMEOUT_S = 60.0  # per socket operation, not per download
RETRIES = 3  # resumptions within one call after a dropped connection
RETRY_WAIT_S = 2.0  # times the attempt number


class _Dropped(Exception):
    """The body stopped short: resume from what is on disk."""


class _Part:
    """<file>.part and the sha256 of what it holds so far."""

    def __init__(self, path: Path):
        self.path, self.digest = path, hashlib.sha256()
        self.bar = None  # the progress bar, from the first answer on
        if path.is_file():
            with open(path, "rb") as fh:
                while chunk := fh.read(1 << 22):
                    self.digest.update(chunk)

    @property
    def size(self) -> int:
        return self.path.stat().st_size if self.path.is_file() else 0

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.digest = hashlib.sha256()


def fetch(url: str, dest: Path, key: str) -> str:
    """dest complete (downloaded now or before); returns its sha256. key names the config
    entry in messages (data.segmentation_sets.<name>)."""
    recorded = dest.with_name(dest.name + ".sha256")
    if dest.is_file():
        if recorded.is_file():
            return recorded.read_text().split()[0]
        digest = sha256_of(dest)  # placed there by hand, as the errors below suggest
        atomic_write_text(recorded, f"{digest}  {dest.name}\n")
        return digest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _Part(dest.with_name(dest.name + ".part"))
    hint = (f"download it yourself into {dest} and re-run, or give {key}.path = the folder "
            "holding it")
    if part.size:
        log.info("resuming %s at %s bytes", url, f"{part.size:,}")
    for attempt in range(RETRIES + 1):
        try:
            _stream(url, part, key, hint)
            break
        except _Dropped as why:
            if attempt == RETRIES:
                raise ConfigError(f"{key}: the download of {url} broke off {RETRIES + 1} "
                                  f"times ({why}); re-run to resume it from {part.size:,} "
                                  f"bytes, or {hint}") from None
            log.warning("download of %s broke off at %s bytes (%s); resuming", url,
                        f"{part.size:,}", why)
            time.sleep(RETRY_WAIT_S * (attempt + 1))
    if part.bar is not None:
        part.bar.close()
    os.replace(part.path, dest)
    atomic_write_text(recorded, f"{part.digest.hexdigest()}  {dest.name}\n")
    return part.digest.hexdigest()


def _stream(url: str, part: _Part, key: str, hint: str) -> None:
    """Append the rest of url to the part, asking for it from the part's size on."""
    have = part.size
    headers = {"User-Agent": "dinov2clip", **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers),
                                          timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have and _total(err.headers.get("Content-Range")) == have:
            return  # the part already holds it all
        if err.code >= 500:
            raise _Dropped(f"HTTP {err.code} {err.reason}") from None
        raise ConfigError(f"{key}: cannot download {url}: HTTP {err.code} {err.reason}; "
                          f"{hint}") from None
    except OSError as err:  # URLError: refused, unknown host; a timeout before any byte
        reason = getattr(err, "reason", None) or err
        raise ConfigError(f"{key}: cannot reach {url} ({reason}); {hint}") from None
    with response:
        if response.status == 206:
            start = _start(response.headers.get("Content-Range"))
            if start != have:
                raise ConfigError(f"{key}: {url} answered a request for bytes {have}- with "
                                  f"bytes {start}-; delete {part.path} and re-run")
        elif have:  # 200: the server ignores Range, so the whole file comes again
            log.info("%s does not resume downloads: starting it again", url)
            part.restart()
            have = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        if part.bar is None:
            part.bar = progress(total=None, desc=f"download {part.path.name[:-5]}", unit="B",
                                unit_scale=True)
        bar = part.bar
        if expected is not None:
            bar.total = have + expected
        if have > bar.n:
            bar.update(have - bar.n)
        got, dropped = 0, None
        with open(part.path, "ab", buffering=0) as out:  # unbuffered: close cannot fail late
            try:
                while chunk := response.read(CHUNK):
                    _append(out, chunk, url, part.path, key)
                    part.digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
            except (TimeoutError, http.client.IncompleteRead, ConnectionError) as err:
                dropped = type(err).__name__
            os.fsync(out.fileno())
        if dropped is None and expected is not None and got < expected:
            dropped = f"{got:,} of {expected:,} bytes came"
        if dropped:
            raise _Dropped(dropped)


def _append(out, chunk: bytes, url: str, part: Path, key: str) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[out.write(view):]
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise OSError(errno.ENOSPC, f"No space left on device while downloading {url}; "
                          f"or download it on another disk and give {key}.path",
                          str(part)) from None
        raise


def _start(content_range: str | None) -> int:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m[1]) if m else -1


def _total(content_range: str | None) -> int:
    m = re.match(r"bytes [^/]*/(\d+)", content_range or "")
    return int(m[1]) if m else -1
