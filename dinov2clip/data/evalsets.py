"""Retrieval eval sets in the CLIP_benchmark webdataset format, installed as evalsets/<name>/test.

Three sources: the clip-benchmark dataset repos on the Hugging Face hub, a local directory already
in that format, or a Karpathy split JSON with its images (karpathy.py). A set is complete when its
source.json is written, last. A re-run with the same source does nothing; a re-run with another
source stops instead of mixing two sets in one directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tarfile
from pathlib import Path

from dinov2clip.config import ConfigError, EvalSetConfig
from dinov2clip.formats.webdataset import (  # the extract stage's rules
    IMAGE_EXTS,
    caption_lines,
    is_image,
    split_name,
)
from dinov2clip.io_utils import atomic_write, atomic_write_json, read_json, shard_order

log = logging.getLogger(__name__)

HF_REPOS = {
    "mscoco": "clip-benchmark/wds_mscoco_captions",  # Karpathy test split, 5k images
    "flickr30k": "clip-benchmark/wds_flickr30k",  # 1k test images
    "flickr8k": "clip-benchmark/wds_flickr8k",  # 1k test images
}
# Which EvalSetConfig fields each source reads; setting any other one is a mistake worth naming.
FIELDS_USED = {
    "hf": ("repo", "revision"),
    "local": ("path",),
    "karpathy": ("path", "image_root", "split", "shard_size"),
}


def install_eval_set(name: str, spec: EvalSetConfig, dest: Path) -> dict:
    """Fetch, copy or build one eval set into dest/test; returns what source.json records."""
    record = source_record(name, spec)
    done, pending = dest / "source.json", dest / "pending.json"
    if done.exists():
        previous = read_json(done)
        if previous["source"] != record:
            raise ConfigError(f"data.eval_sets.{name}: {dest} was built from "
                              f"{describe(previous['source'])}; delete it to rebuild from "
                              f"{describe(record)}")
        return {**previous, "reused": True}
    if not pending.exists() and any((dest / "test").glob("*")):
        raise ConfigError(f"data.eval_sets.{name}: {dest / 'test'} exists but was not made by "
                          "data.eval_sets (a synthetic set of the same name?); delete it or "
                          "choose another name")
    entries = None
    if spec.source == "local":
        local_shards(name, Path(record["path"]))  # check before anything is written
    elif spec.source == "karpathy":
        from dinov2clip.data.karpathy import plan_karpathy_split, write_karpathy_split

        entries = plan_karpathy_split(name, spec)
    if pending.exists() and read_json(pending) != record:
        # Nothing of a partial build is final, and it came from another source: start over.
        log.warning("eval set %s: discarding a partial build from %s", name,
                    describe(read_json(pending)))
        for sub in ("test", "progress", ".cache"):
            shutil.rmtree(dest / sub, ignore_errors=True)
    atomic_write_json(pending, record)
    extra: dict = {}
    if spec.source == "hf":
        extra["commit"] = fetch_from_hub(name, record["repo"], spec.revision, dest)
    elif spec.source == "local":
        copy_local(name, Path(record["path"]), dest / "test")
    else:
        extra["skipped"] = write_karpathy_split(entries, spec, dest)
    result = {"source": record, **extra, **scan_eval_shards(name, dest / "test")}
    # A Karpathy entry's empty sentences never reach its .txt: count them with the scan's.
    result["empty_caption_lines"] += result.get("skipped", {}).pop("empty_caption_lines", 0)
    atomic_write_json(done, result)
    pending.unlink()
    return result


def source_record(name: str, spec: EvalSetConfig) -> dict:
    """The checked, normalised description of where a set comes from (paths made absolute)."""
    key = f"data.eval_sets.{name}"
    used = FIELDS_USED[spec.source]
    defaults = EvalSetConfig()
    for f in dataclasses.fields(spec):
        if f.name not in used and f.name != "source" and (
                getattr(spec, f.name) != getattr(defaults, f.name)):
            raise ConfigError(f"{key}.{f.name} is not used with source = {spec.source!r} "
                              f"(it reads: {', '.join(used)})")
    record = {"source": spec.source}
    if spec.source == "hf":
        repo = spec.repo or HF_REPOS.get(name)
        if not repo:
            raise ConfigError(f"{key}: unknown eval set {name!r} (known on the hub: "
                              f"{', '.join(HF_REPOS)}); give repo = 'owner/name' or another "
                              "source (local, karpathy)")
        return {**record, "repo": repo, "revision": spec.revision}
    if not spec.path:
        raise ConfigError(f"{key}.path is required with source = {spec.source!r}")
    path = Path(spec.path).expanduser().resolve()
    if spec.source == "local":
        return {**record, "path": str(path)}
    if not spec.image_root:
        raise ConfigError(f"{key}.image_root is required with source = 'karpathy'")
    if spec.shard_size < 1:
        raise ConfigError(f"{key}.shard_size must be at least 1, got {spec.shard_size}")
    return {**record, "path": str(path), "split": spec.split,
            "image_root": str(Path(spec.image_root).expanduser().resolve()),
            "shard_size": spec.shard_size}


def describe(record: dict) -> str:
    rest = " ".join(f"{k}={v}" for k, v in sorted(record.items()) if k != "source")
    return f"source {record['source']} ({rest})"


def fetch_from_hub(name: str, repo: str, revision: str, dest: Path) -> str:
    """Download test/* of a clip-benchmark dataset repo into dest; returns the commit fetched.

    HF_ENDPOINT is read here, at call time, so a mirror set after import is still honoured.
    Interrupted downloads resume: the hub client keeps partial files under dest/.cache.
    """
    from huggingface_hub import HfApi, snapshot_download

    try:  # the hub client's HTTP library raises its own connection errors
        from httpx2 import TransportError
    except ImportError:  # pragma: no cover - another huggingface_hub major version
        TransportError = OSError  # noqa: N806
    endpoint = os.environ.get("HF_ENDPOINT") or None
    try:
        commit = HfApi(endpoint=endpoint).repo_info(repo, repo_type="dataset",
                                                    revision=revision).sha
        snapshot_download(repo_id=repo, repo_type="dataset", revision=commit,
                          allow_patterns=["test/*"], local_dir=dest, endpoint=endpoint)
    except (OSError, TransportError) as err:  # the hub's errors (not found, HTTP) are OSErrors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"data.eval_sets.{name}: cannot fetch {repo}@{revision} from the "
                          f"Hugging Face hub ({reason}); without internet, install it from a "
                          "local copy with source = 'local'") from None
    return commit


def local_shards(name: str, src: Path) -> list[Path]:
    """N.tar of a local CLIP_benchmark-format dir (src/test, or src itself)."""
    if not src.is_dir():
        raise ConfigError(f"data.eval_sets.{name}.path: {src} is not a directory")
    shard_dir = src / "test" if (src / "test").is_dir() else src
    tars = sorted(shard_dir.glob("*.tar"), key=shard_order)
    if not tars:
        raise ConfigError(f"data.eval_sets.{name}.path: no .tar shards in {shard_dir}")
    return tars


def copy_local(name: str, src: Path, test_dir: Path) -> None:
    for tar in local_shards(name, src):
        out = test_dir / tar.name
        if not out.exists():  # a copy is renamed into place whole, so an existing file is complete
            atomic_write(out, lambda tmp, tar=tar: shutil.copyfile(tar, tmp))


def scan_eval_shards(name: str, test_dir: Path) -> dict:
    """Count images and captions in test/*.tar, and check the format: image + .txt per sample.

    Counts what extract will leave out, as extract decides it: empty caption lines, and images
    left with no caption."""
    tars = sorted(test_dir.glob("*.tar"), key=shard_order)
    if not tars:
        raise ConfigError(f"data.eval_sets.{name}: no .tar shards in {test_dir}")
    n_images = n_captions = empty_lines = uncaptioned = 0
    seen_exts: set[str] = set()
    for tar_path in tars:
        samples: dict[str, dict[str, int]] = {}
        try:
            with tarfile.open(tar_path) as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    key, ext = split_name(member.name)
                    ext = ext.lower()
                    seen_exts.add(ext)
                    parts = samples.setdefault(key, {})
                    if ext == "txt":
                        text = tar.extractfile(member).read().decode("utf-8", "replace")
                        captions, empty = caption_lines(text)
                        parts["captions"], parts["empty_lines"] = len(captions), empty
                    elif is_image(ext):
                        parts["image"] = 1
        except (tarfile.TarError, OSError) as err:
            raise ConfigError(f"data.eval_sets.{name}: {tar_path} is not a readable tar "
                              f"({err}); delete it and re-run") from None
        for parts in samples.values():
            if parts.get("image"):
                empty_lines += parts.get("empty_lines", 0)
            if parts.get("image") and parts.get("captions"):
                n_images += 1
                n_captions += parts["captions"]
            elif parts.get("image"):
                uncaptioned += 1
    if not n_images:
        raise ConfigError(f"data.eval_sets.{name}: no sample in {test_dir} has an image "
                          f"({'/'.join(IMAGE_EXTS)}) and a .txt of captions (found extensions: "
                          f"{', '.join(sorted(seen_exts)) or 'none'}): not the CLIP_benchmark "
                          "webdataset format")
    return {"n_shards": len(tars), "n_images": n_images, "n_captions": n_captions,
            "empty_caption_lines": empty_lines, "images_without_captions": uncaptioned}


def format_eval_summary(name: str, r: dict) -> str:
    src = r["source"]
    origin = {"hf": lambda: f"{src['repo']}@{r.get('commit', '')[:10]}",
              "local": lambda: src["path"],
              "karpathy": lambda: f"{src['path']} split {src['split']}"}[src["source"]]()
    skipped = r.get("skipped") or {}
    skip_text = ", ".join(f"{n} {why}" for why, n in skipped.items()) or "none"
    state = "already installed" if r.get("reused") else "installed"
    lines, uncaptioned = r.get("empty_caption_lines", 0), r.get("images_without_captions", 0)
    dropped = (f"; {lines} empty caption lines dropped" if lines else "") + (
        f"; {uncaptioned} images with no caption, which extract skips" if uncaptioned else "")
    return (f"eval set {name}: {state}, {r['n_images']} images, {r['n_captions']} captions in "
            f"{r['n_shards']} shards from {origin}; skipped: {skip_text}{dropped}")
