"""What makes an embedding what it is, beyond the model names: weights, libraries, machine.

Weights go into the models hash (a resume with other weights is refused): the HF commit of a hub
DINOv2, a content hash of a local model directory's weight files, and the open_clip checkpoint's
sha256. Library versions and the attention implementation are compared on resume but kept out
of the hash; the device and git state are only recorded.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import time
from pathlib import Path

import torch

from dinov2clip.config import git_sha
from dinov2clip.io_utils import atomic_write_json, read_json

LIBRARIES = {"torch": "torch", "torchvision": "torchvision", "transformers": "transformers",
             "open_clip": "open_clip_torch", "Pillow": "pillow", "numpy": "numpy"}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
RACY_NS = 2 * 10**9  # a file changed this recently is not cached (see file_sha256)


def dino_weights(model, name: str, revision: str = "") -> dict:
    """For a local directory, the sha256 of each weight file in it; for a hub id, the commit
    the weights came from."""
    if Path(name).is_dir():
        return {"sha256": {p.name: file_sha256(p) for p in sorted(Path(name).iterdir())
                           if p.suffix in WEIGHT_SUFFIXES and p.is_file()}}
    return {"commit": getattr(model.config, "_commit_hash", None) or _hub_commit(name, revision)}


def _hub_commit(repo: str, revision: str) -> str | None:
    """The snapshot from_pretrained read (transformers 5 keeps no _commit_hash): the local hub
    cache's folder for this revision is named by its commit. No network."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo, "config.json", revision=revision or None)
    except Exception:  # an id the hub library rejects: nothing to record
        return None
    return Path(found).parent.name if isinstance(found, str) else None


def clip_weights(name: str, pretrained: str) -> dict:
    """A local checkpoint's sha256; for a tag, where open_clip fetches it and the hashes known."""
    out = {}
    if name.endswith(".json") and Path(name).is_file():
        out["config_sha256"] = file_sha256(Path(name))
    if pretrained and Path(pretrained).is_file():
        out["sha256"] = file_sha256(Path(pretrained))
    elif pretrained:
        out.update(_clip_tag(Path(name).stem if name.endswith(".json") else name, pretrained))
    return out


def _clip_tag(name: str, tag: str) -> dict:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag) or {}
    url, hub = cfg.get("url") or "", cfg.get("hf_hub") or ""
    out = {"url": url, "hf_hub": hub}
    digest = url.split("/")[-2] if url.count("/") >= 2 else ""
    if len(digest) == 64:  # OpenAI's URLs carry the file's sha256, which open_clip checks
        out["url_sha256"] = digest
    cached = _hub_file(hub)
    out["sha256"] = file_sha256(cached) if cached else None
    return out


def _hub_file(hub: str) -> Path | None:
    """The checkpoint open_clip loaded from the HF hub, from the local cache (no network)."""
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    parts = hub.split("/")  # "org/repo/" or "org/repo/file"
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    names = [filename] if filename else ["open_clip_model.safetensors",
                                         "open_clip_pytorch_model.bin"]
    for f in names:
        found = try_to_load_from_cache(repo, f)
        if isinstance(found, str):
            return Path(found)
    return None


def tokenizer_info(tokenizer) -> dict:
    """What the manifest records about the teacher's tokenizer: open_clip's own class, its
    context length and, for HF tokenizers (SigLIP), where it came from and how text is cleaned
    before tokenising (SigLIP: "canonicalize", lower-cased and without punctuation)."""
    info = {"class": type(tokenizer).__name__,
            "context_length": int(getattr(tokenizer, "context_length", 0) or 0)}
    hf = getattr(tokenizer, "tokenizer", None)
    if hf is not None and hasattr(hf, "name_or_path"):
        info["hf_tokenizer"] = str(hf.name_or_path)
    clean = getattr(tokenizer, "clean_fn", None)
    if clean is not None:
        info["clean"] = getattr(clean, "__name__", str(clean))
    return info


def runtime(dino) -> dict:
    """Compared on resume: library versions and DINOv2's attention implementation."""
    versions = {}
    for key, dist in LIBRARIES.items():
        try:
            versions[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[key] = None
    return {**versions,
            "dino_attention": getattr(dino.config, "_attn_implementation", None)}


def provenance(device: torch.device) -> dict:
    """Recorded only: the device and the code that made a shard."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return {"device": name, "git_sha": git_sha(), "git_dirty": _git_dirty()}


def _git_dirty() -> bool | None:
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, hashed once: cached by path, size, mtime, inode and ctime.

    mtime alone can be set back (os.utime, cp -p, tar) after other bytes of the same size are
    written; ctime cannot, and a file replaced by rename gets a new inode. A file changed in the
    last RACY_NS is hashed again next time: a write within the same timestamp tick as the hash
    would leave the stamp as it was (git's "racy clean" problem).
    """
    path = Path(path).resolve()
    st = path.stat()
    key, stamp = str(path), [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    cache = _read_cache()
    if key in cache and cache[key][:-1] == stamp:  # entries of older versions never match
        return cache[key][-1]
    digest = _hash_file(path)
    if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS:
        cache = {k: v for k, v in _read_cache().items() if os.path.exists(k)}
        cache[key] = [*stamp, digest]
        try:
            atomic_write_json(_cache_path(), cache)
        except OSError:  # a read-only home: hash again next time
            pass
    return digest


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dinov2clip" / "sha256.json"


def _read_cache() -> dict:
    try:
        return read_json(_cache_path())
    except (OSError, ValueError):
        return {}
