"""Members of an archive or a folder, read where they lie: a zip by random access, a tar by its
headers (the VOC tar is uncompressed, so a member is one seek away), a folder as files. Nothing
is extracted to disk."""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
import zlib
from pathlib import Path

from dinov2clip.config import ConfigError


class DamagedMember(Exception):
    """A member its archive (or folder) cannot give back whole: a zip CRC that fails, a tar cut
    short, an unreadable file. The message names the member and why."""


class Tree:
    """name -> bytes, names relative and '/'-separated, as the archive or folder holds them."""

    def __init__(self, path: Path, names: list[str]):
        self.path, self.names = path, names

    def read(self, name: str) -> bytes:
        """The member's bytes; raises DamagedMember where the archive cannot give them back."""
        try:
            return self._read(name)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, OSError) as err:
            raise DamagedMember(f"{self.path}: {name} ({' '.join(str(err).split())})") from None

    def _read(self, name: str) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class FolderTree(Tree):
    def __init__(self, path: Path):
        names = []
        for folder, _, files in os.walk(path, followlinks=True):
            rel = Path(folder).relative_to(path).as_posix()
            names += [f if rel == "." else f"{rel}/{f}" for f in files]
        super().__init__(path, sorted(names))

    def _read(self, name: str) -> bytes:
        return (self.path / name).read_bytes()


class ZipTree(Tree):
    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path)
        self.by_name = {_clean(i.filename): i for i in self.zip.infolist() if not i.is_dir()}
        super().__init__(path, sorted(self.by_name))

    def _read(self, name: str) -> bytes:
        return self.zip.read(self.by_name[name])

    def close(self) -> None:
        self.zip.close()


class TarTree(Tree):
    def __init__(self, path: Path):
        self.tar = tarfile.open(path)  # one pass over the headers, seeking past each member
        self.by_name = {_clean(m.name): m for m in self.tar if m.isfile()}
        super().__init__(path, sorted(self.by_name))

    def _read(self, name: str) -> bytes:
        return self.tar.extractfile(self.by_name[name]).read()

    def close(self) -> None:
        self.tar.close()


def _clean(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def open_tree(path: Path, key: str) -> Tree:
    """A folder, zip or tar as a Tree; an unreadable archive is one line naming it and the fix."""
    if path.is_dir():
        return FolderTree(path)
    try:
        if zipfile.is_zipfile(path):
            return ZipTree(path)
        return TarTree(path)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        why = " ".join(str(err).split())  # tarfile's message spans lines: one line here
        raise ConfigError(f"{key}: {path} is not a readable zip or tar ({why}); if it was "
                          "downloaded, delete it and re-run to fetch it again") from None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()
