"""One writer at a time per directory of the store: an embeddings set, an index directory.

A writer holds an flock on a lock file beside the directory it writes, `.<name>.rank<r>.lock`, so
a killed holder frees it with its last file descriptor: there is never a stale lock to clear. The
file is beside the directory, not in it, so it is no part of the data (a copied set carries no
lock, --force may delete the directory) and outlives it.

Ranks of one torchrun or srun job split the work into disjoint shards or chunks, so each rank
takes the lock of its own rank number: the ranks of a job never wait on each other, while a
second job, or a second plain run (rank 0), meets the lock of the rank it would run beside.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.io_utils import HOST

log = logging.getLogger(__name__)


def lock_path(directory: Path, rank: int = 0) -> Path:
    directory = Path(directory)
    return directory.parent / f".{directory.name}.rank{rank}.lock"


class WriterLock:
    """The lock of rank `rank` on `directory`; `command` is the pipeline command that writes it,
    named in the refusal."""

    def __init__(self, directory: Path, rank: int = 0, command: str = "extract"):
        self.directory, self.command = Path(directory), command
        self.path = lock_path(directory, rank)
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> WriterLock:
        """Take the lock: at once, or refuse naming the holder; with wait, once it is free."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            if not _try_lock(fd):
                holder = _holder(fd)
                if not wait:
                    raise ConfigError(
                        f"{self.directory} is being written by {holder} (it holds "
                        f"{self.path}); let it finish, or run `pipeline {self.command} --wait` "
                        "to start once it has")
                log.info("%s is being written by %s; waiting for it to finish (--wait)",
                         self.directory, holder)
                block(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {HOST}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)  # the holder's pid is read only while it holds the lock
            os.close(self._fd)  # closing the last descriptor frees the lock
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire() if self._fd is None else self

    def __exit__(self, *exc) -> None:
        self.release()


def block(fd: int) -> None:
    """Wait for the lock (Ctrl-C still interrupts)."""
    fcntl.flock(fd, fcntl.LOCK_EX)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(fd: int) -> str:
    """'pid N on HOST', as the holder wrote it; it may not have yet, in its first moment."""
    pid, _, host = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    return f"pid {pid} on {host}" if pid.isdigit() else "another process (starting)"


@contextmanager
def writer_locks(directories: list[Path], rank: int = 0, wait: bool = False,
                 command: str = "extract") -> Iterator[None]:
    """Every directory's lock for this rank, taken in path order, so two writers waiting for
    the same sets (--wait) never hold one each and wait for the other."""
    with ExitStack() as held:
        for directory in sorted({Path(d) for d in directories}):
            held.enter_context(WriterLock(directory, rank, command).acquire(wait))
        yield
