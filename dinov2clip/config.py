"""Experiment configuration: one frozen dataclass per stage, read from TOML, checked strictly.

A typo in a key, a wrong type or a missing required value raises ConfigError naming the key and
the file, before any stage starts work. The resolved config is written next to each stage's
outputs with the git sha, so every artifact says where it came from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


@dataclass(frozen=True)
class SyntheticConfig:
    """Procedurally drawn shapes with matching captions, for the offline demo and tests."""

    num_train: int = 0  # 0: no synthetic training set
    num_eval: int = 0  # 0: no synthetic eval set
    shard_size: int = 128
    image_size: int = 256
    captions_per_eval_image: int = 5
    eval_name: str = "shapes-test"  # evalsets/<eval_name>
    zeroshot_per_class: int = 0  # >0: a folder-per-class set, <artifacts>/zeroshot/shapes
    seed: int = 0
    tiny_models: bool = True  # also build tiny random DINOv2 and CLIP under <artifacts>/models


@dataclass(frozen=True)
class EvalSetConfig:
    """Where one retrieval set comes from; it is installed as <artifacts>/evalsets/<name>/test."""

    source: str = "hf"  # hf | local | karpathy
    repo: str = ""  # hf: dataset repo id; empty: the known repo for mscoco, flickr30k, flickr8k
    revision: str = "main"  # hf: branch, tag or commit
    path: str = ""  # local: a dir holding test/N.tar; karpathy: the dataset_*.json file
    image_root: str = ""  # karpathy: images are <image_root>/<filepath>/<filename>
    split: str = "test"  # karpathy: train | restval | val | test
    shard_size: int = 1000  # karpathy: images per tar


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "cc12m"  # name under <artifacts>/shards/
    url_list: str = ""  # CC12M TSV/Parquet (path or URL); empty: skip the img2dataset download
    input_format: str = "tsv"
    header: bool = True  # false: a header-less list whose first columns are url, caption (CC12M)
    url_col: str = "url"
    caption_col: str = "caption"
    image_size: int = 256
    resize_mode: str = "keep_ratio"
    processes_count: int = 16
    thread_count: int = 64
    number_sample_per_shard: int = 10000
    max_samples: int = 0  # 0: all rows
    timeout: int = 10
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=dict)  # evalsets/<name>/test
    webdatasets: dict[str, str] = field(default_factory=dict)  # shards/<name> -> an existing dir
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ExtractConfig:
    datasets: list[str] = field(default_factory=list)  # "shards/<name>" or "evalsets/<name>"
    dino_model: str = "facebook/dinov2-base"  # HF hub id or local directory
    clip_model: str = "ViT-B-16"  # open_clip name, or a path to an open_clip model-config JSON
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a checkpoint path
    tag: str = ""  # embeddings/<dataset>/<tag>; empty: derived from the model names
    batch_size: int = 256
    num_workers: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compute_dtype: str = "bf16"  # autocast dtype on GPU; CPU always runs float32
    shard_pattern: str = "*.tar"


@dataclass(frozen=True)
class ProjectorConfig:
    kind: str = "residual"  # residual | linear | prenorm
    in_dim: int = 768
    out_dim: int = 512
    width: int = 2048
    depth: int = 6
    head_width: int = 1024
    standardize: bool = False  # per-dimension input standardisation, stats from the train split


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "cc12m"  # embeddings/<dataset>/<tag> is read
    tag: str = ""  # empty: the extract stage's tag
    run: str = "seed"  # runs/<run>
    pooling: str = "token_mean"  # cls | patch_mean | token_mean | concat
    # token_mean weighs the patch mean by this many tokens; 0: the count extract recorded in
    # the manifest (256 for DINOv2 at 224 px, 196 for DINOv3)
    num_patch_tokens: int = 0
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    loss: dict[str, float] = field(default_factory=lambda: {"unit_mse": 1.0})
    epochs: int = 16
    batch_size: int = 4096
    lr: float = 1e-3
    weight_decay: float = 0.01
    scheduler: str = "onecycle"  # onecycle | cosine | constant
    warmup_fraction: float = 0.05  # cosine: share of all steps spent warming up linearly
    grad_clip: float = 1.0  # max global grad norm; 0: off
    val_fraction: float = 0.01
    val_retrieval_max: int = 10000  # val pairs used for the per-epoch retrieval check
    val_evalset: str = ""  # an eval set logged per epoch as validation, e.g. "mscoco-val"
    select_metric: str = "val_pct_clip"  # best epoch by this (higher is better, or val_loss)
    log_every: int = 50  # steps between metrics.jsonl lines (and the only GPU syncs)
    seed: int = 0
    device: str = "auto"
    compute_dtype: str = "bf16"
    placement: str = "auto"  # auto: the training split on the GPU when it fits | device | pinned
    compile: bool = False  # torch.compile the projector for the training steps
    ema_decay: float = 0.0  # > 0: validate and save an EMA of the weights, e.g. 0.999


@dataclass(frozen=True)
class EvalConfig:
    sets: list[str] = field(default_factory=lambda: ["mscoco", "flickr30k", "flickr8k"])
    run: str = ""  # empty: train.run
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    use_gpu_faiss: bool = True
    search: str = "auto"  # auto: FAISS if GPU FAISS is usable, else exact | exact | faiss
    device: str = "auto"  # where the projector runs: auto | cpu | cuda | cuda:N
    # Zero-shot classification after retrieval, on a folder-per-class set (ImageNet layout):
    # a path, absolute or from the working directory; empty: none.
    zeroshot: str = ""
    zeroshot_classnames: str = ""  # JSON list or {folder: name}, or TXT; empty: folder names
    zeroshot_templates: str = "imagenet80"  # imagenet80 | short | plain
    zeroshot_max_per_class: int = 0  # 0: every image


@dataclass(frozen=True)
class Config:
    artifacts: str = "artifacts"
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the TOML file this came from; set by load_config

    @property
    def root(self) -> Path:
        return Path(self.artifacts)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a TOML experiment file and apply `section.key=value` overrides, strictly."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    for item in overrides or []:
        _apply_override(raw, item, path)
    raw["source"] = str(path)
    return _build(Config, raw, where=str(path), prefix="")


def _apply_override(raw: dict, item: str, path: Path) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text  # a bare word such as --set train.run=foo is taken as a string
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {key}: {part} is not a section in {path}")
    node[parts[-1]] = value


def _build(cls: type, raw: dict, where: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: [{prefix.rstrip('.')}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}' (known: {', '.join(sorted(fields))})"
        )
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], where, prefix + name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{where}: missing required key '{prefix}{name}'")
    return cls(**values)


def _coerce(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where, key + ".")
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(option, value, where, key)
            except ConfigError:
                continue
        raise _type_error(where, key, tp, value)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise _type_error(where, key, tp, value)
        return [_coerce(item_tp, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise _type_error(where, key, tp, value)
        return {str(k): _coerce(val_tp, v, where, f"{key}.{k}") for k, v in value.items()}
    if tp is type(None):
        if value is None:
            return None
        raise _type_error(where, key, tp, value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float) and isinstance(value, bool):
        raise _type_error(where, key, tp, value)
    if not isinstance(value, tp):
        raise _type_error(where, key, tp, value)
    return value


def _type_error(where: str, key: str, tp: Any, value: Any) -> ConfigError:
    name = getattr(tp, "__name__", str(tp))
    return ConfigError(f"{where}: '{key}' must be {name}, got {type(value).__name__} {value!r}")


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


def config_hash(obj: Any) -> str:
    """A short stable hash of a config (or any JSON-able value), for done-markers and runs."""
    blob = json.dumps(to_dict(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).resolve().parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_resolved(cfg: Config, out_dir: Path, name: str = "config.json") -> Path:
    """Write the resolved config and the git sha next to a stage's outputs (atomically)."""
    from dinov2clip.io_utils import atomic_write_text

    payload = {"config": to_dict(cfg), "git_sha": git_sha()}
    path = Path(out_dir) / name
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")
    return path


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """The resolved config a training run wrote next to its weights (the `config` part)."""
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise ConfigError(f"not a training run: {path} missing")
    try:
        return json.loads(path.read_text())["config"]
    except (ValueError, KeyError):
        raise ConfigError(f"{path}: not a resolved run config") from None


def require(cfg: Config, key: str) -> Any:
    """The value at a dotted key, or a ConfigError when a stage needs it and it is empty."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if value in ("", None) or (isinstance(value, list | dict) and not value):
        raise ConfigError(f"{cfg.source or 'config'}: missing required value '{key}' "
                          "for this stage")
    return value
