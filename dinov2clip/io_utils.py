"""Atomic file writes: a temp file in the same directory, then os.replace.

No reader ever sees a half-written file under its final name, whatever moment a job is killed.
A temp is named `.<name>.<host>.<pid>.<random>.tmp`, so that a later run can tell a temp left by
a killed writer (removable) from one another rank is still writing (not its to touch).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"
_TEMP = re.compile(r"\.(?P<name>.+)\.(?P<host>[A-Za-z0-9-]+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call write(tmp_path), fsync, then rename onto path.

    An OS fault (disk full, a read-only directory) is raised as an OSError naming path, the
    file the user knows, and its cause; the temp file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp = _create_temp(path)
    except OSError as err:
        raise _naming(err, path) from None
    try:
        write(tmp)
        follow_umask(tmp)  # write may be a library's, which can replace the temp (safetensors)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _naming(err, path) from None
        raise
    return path


def _create_temp(path: Path) -> str:
    """An empty new temp beside path; mode 0666 less the umask, as open() would give it."""
    while True:
        tmp = str(path.parent / f".{path.name}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 2^32 names per process: a clash is rare, but retry it
            continue


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file a library wrote, or every file under a folder it wrote, the mode open() gives:
    0666 less the umask, so that a teammate can read what the umask lets them.

    Not every library leaves that: safetensors 0.8's save_file (and save_pretrained through it)
    writes a private temp and renames it in, which leaves 0600 whatever the umask.
    """
    path = Path(path)
    files = [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else [path]
    mode = 0o666 & ~current_umask()
    for file in files:
        if not file.is_symlink():  # chmod would follow it, out of what was written
            os.chmod(file, mode)


def current_umask() -> int:
    """The umask, read without setting it: os.umask only reads by setting, and a thread that
    creates a file in that moment would get the wrong mode. Linux shows it in /proc."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and put back at once
    os.umask(mask)
    return mask


def remove_temps(folder: Path, name: str) -> None:
    """Every temp of folder/name, whoever wrote it: for a file only the caller ever writes."""
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def remove_dead_temps(folder: Path, name: str = "*") -> None:
    """Temps of folder/name (every file: "*") left by a writer that is gone, or by this process.

    A temp another live process on this host is writing is left alone, and so is one from
    another host, whose writer cannot be checked from here (ranks on a shared filesystem).
    """
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        if temp_is_orphan(tmp.name):
            tmp.unlink(missing_ok=True)


def temp_is_orphan(name: str) -> bool:
    m = _TEMP.fullmatch(name)
    if m is None:
        return True  # an older version's mkstemp name: its writer is long gone
    if m["host"] != HOST:
        return False
    pid = int(m["pid"])
    return pid == os.getpid() or not _alive(pid)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _naming(err: OSError, path: Path) -> OSError:
    """The same fault, naming path (pyarrow's and numpy's errors name no file, or the temp)."""
    cause = os.strerror(err.errno) if err.errno else " ".join(str(err).split())
    return OSError(err.errno or 0, cause, str(path))  # OSError(errno.ENOSPC, ...) keeps its type


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
