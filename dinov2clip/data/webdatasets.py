"""Any existing image-caption webdataset as a training source: shards/<name> links to it.

A symlink, not a copy: training sets are large, and the extract stage only needs to list and read
the tars. The link is checked (tars directly inside, samples with an image and a .txt) so a wrong
directory fails here in one line rather than deep inside extraction.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from dinov2clip.config import ConfigError
from dinov2clip.formats.webdataset import IMAGE_EXTS, is_image, split_name


def link_webdataset(name: str, src: str, shards_root: Path) -> str:
    """Make shards/<name> point at src after checking it; returns the summary line."""
    key = f"data.webdatasets.{name}"
    target = Path(src).expanduser().resolve()
    if not target.is_dir():
        raise ConfigError(f"{key}: {target} is not a directory")
    tars = sorted(target.glob("*.tar"))
    if not tars:
        raise ConfigError(f"{key}: no .tar shards directly in {target}")
    check_first_samples(key, tars[0])
    link = shards_root / name
    if link.is_symlink():
        current = Path(os.readlink(link))
        if current != target:
            raise ConfigError(f"{key}: {link} already links to {current}; remove that link to "
                              f"point it at {target}")
        state = "already linked"
    elif link.exists():
        raise ConfigError(f"{key}: {link} already exists and is not a link (img2dataset or "
                          "synthetic output?); choose another name")
    else:
        shards_root.mkdir(parents=True, exist_ok=True)
        tmp = shards_root / f".{name}.link.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(target, target_is_directory=True)
        os.replace(tmp, link)  # the link appears whole or not at all
        state = "linked"
    return f"webdataset {name}: {state} shards/{name} -> {target} ({len(tars)} shards)"


def check_first_samples(key: str, tar_path: Path, n_members: int = 50) -> None:
    """The first samples of a shard must have an image the extract stage decodes and a .txt."""
    samples: dict[str, set[str]] = {}
    try:
        with tarfile.open(tar_path, "r|*") as tar:
            for i, member in enumerate(tar):
                if i >= n_members:
                    break
                if member.isfile():
                    key, ext = split_name(member.name)
                    samples.setdefault(key, set()).add(ext.lower())
    except (tarfile.TarError, OSError) as err:
        raise ConfigError(f"{key}: {tar_path} is not a readable tar ({err})") from None
    if not any("txt" in exts and any(map(is_image, exts)) for exts in samples.values()):
        seen = sorted(set().union(*samples.values())) if samples else []
        raise ConfigError(f"{key}: samples in {tar_path} need an image "
                          f"({'/'.join(IMAGE_EXTS)}) and a .txt caption; found extensions: "
                          f"{', '.join(seen) or 'none'}")
