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
import re
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


# Names checked when a config is read, before torch or any model loads. train/losses.py's
# registry and device.py's dtypes must match these (tests/test_config.py checks).
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
LOSS_NAMES = ("unit_mse", "cosine", "cos_smoothl1", "text_infonce", "image_infonce",
              "retrieval_kd")


class InvalidValue(ConfigError):
    """A value of the right type that cannot work; load_config adds the file and the section."""

    def __init__(self, key: str, problem: str):
        self.key, self.problem = key, problem
        super().__init__(f"'{key}' {problem}")


def _check_device(key: str, name: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise InvalidValue(key, f"must be auto, cpu, cuda or cuda:N, got {name!r}")


def _check_dtype(key: str, name: str) -> None:
    if name not in COMPUTE_DTYPES:
        raise InvalidValue(key, f"must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")


def _check_at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # also catches nan
        raise InvalidValue(key, f"must be at least {low}, got {value}")


RESUME_AND_FORCE = ("--resume and --force contradict each other: --resume continues the run, "
                    "--force deletes it; pass one")


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
    # img2dataset's own distributors; on a cluster every worker needs this package's environment
    distributor: str = "multiprocessing"  # multiprocessing | pyspark | ray
    spark_master: str = ""  # pyspark: e.g. spark://head:7077; empty: local[processes_count]
    ray_address: str = ""  # ray: e.g. head:6379 or ray://head:10001; empty: "auto", the running one
    eval_sets: dict[str, EvalSetConfig] = field(default_factory=dict)  # evalsets/<name>/test
    webdatasets: dict[str, str] = field(default_factory=dict)  # shards/<name> -> an existing dir
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class ExtractConfig:
    datasets: list[str] = field(default_factory=list)  # "shards/<name>" or "evalsets/<name>"
    dino_model: str = "facebook/dinov2-base"  # HF hub id or local directory
    dino_revision: str = ""  # hub branch, tag or commit to pin; empty: the default branch
    clip_model: str = "ViT-B-16"  # open_clip name, or a path to an open_clip model-config JSON
    clip_pretrained: str = "openai"  # open_clip pretrained tag, or a checkpoint path
    tag: str = ""  # embeddings/<dataset>/<tag>; empty: derived from the model names
    batch_size: int = 256
    num_workers: int = 8
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compute_dtype: str = "bf16"  # autocast dtype on GPU; CPU always runs float32
    shard_pattern: str = "*.tar"
    # cpu: workers decode and resize | gpu: workers read bytes, JPEGs are decoded and resized in
    # batches on the extract device (also works on a CPU device) | auto: gpu on CUDA, else cpu
    decode: str = "auto"

    def __post_init__(self):
        _check_device("device", self.device)
        _check_dtype("compute_dtype", self.compute_dtype)
        _check_at_least("batch_size", self.batch_size, 1)
        _check_at_least("num_workers", self.num_workers, 0)


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

    def __post_init__(self):
        _check_device("device", self.device)
        _check_dtype("compute_dtype", self.compute_dtype)
        _check_at_least("epochs", self.epochs, 1)
        _check_at_least("batch_size", self.batch_size, 1)
        _check_at_least("log_every", self.log_every, 1)
        if not self.lr > 0:
            raise InvalidValue("lr", f"must be positive, got {self.lr}")
        if not self.loss:
            raise InvalidValue("loss", f"is empty: name at least one of {', '.join(LOSS_NAMES)}")
        for name, weight in self.loss.items():
            if name not in LOSS_NAMES:
                raise InvalidValue(f"loss.{name}", f"is not a loss (known: "
                                                   f"{', '.join(LOSS_NAMES)})")
            _check_at_least(f"loss.{name}", weight, 0.0)


@dataclass(frozen=True)
class EvalConfig:
    sets: list[str] = field(default_factory=lambda: ["mscoco", "flickr30k", "flickr8k"])
    run: str = ""  # empty: train.run
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    device: str = "auto"  # where the projector runs and ranks: auto | cpu | cuda | cuda:N
    # Zero-shot classification after retrieval, on a folder-per-class set (ImageNet layout):
    # a path, absolute or from the working directory; empty: none.
    zeroshot: str = ""
    zeroshot_classnames: str = ""  # JSON list or {folder: name}, or TXT; empty: folder names
    zeroshot_templates: str = "imagenet80"  # imagenet80 | short | plain
    zeroshot_max_per_class: int = 0  # 0: every image

    def __post_init__(self):
        _check_device("device", self.device)


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


@dataclass(frozen=True)
class UseOptions:
    """How the "use" commands (zeroshot, index, search) run the models: one place to add one."""

    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "bf16"  # GPU autocast dtype; CPU runs fp32
    batch_size: int = 64  # images per forward pass
    num_workers: int = 2  # DataLoader workers decoding images

    def __post_init__(self):
        try:
            _check_device("device", self.device)
            _check_dtype("dtype", self.dtype)
            _check_at_least("batch_size", self.batch_size, 1)
            _check_at_least("num_workers", self.num_workers, 0)
        except InvalidValue as err:  # named as the command line spells it
            raise ConfigError(f"--{err.key.replace('_', '-')} {err.problem}") from None

    def model_args(self) -> dict:
        """DinoV2Clip.from_pretrained's keywords."""
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size}


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a TOML experiment file and apply `section.key=value` overrides, strictly.

    An error in a value given with --set names the command line, not the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None
    given: dict[str, str] = {}  # dotted key -> the --set item that gave it
    for item in overrides or []:
        key = _apply_override(raw, item, path)
        given[key] = item
    raw["source"] = str(path)

    def where(key: str) -> str:
        for k, item in given.items():
            if key == k or key.startswith((k + ".", k + "[")):
                return f"--set {item}"
        return str(path)

    return _build(Config, raw, where=where, prefix="")


def _apply_override(raw: dict, item: str, path: Path) -> str:
    """Set the value in raw; returns the dotted key."""
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
            raise ConfigError(f"--set {item}: {part} is not a section in {path}")
    node[parts[-1]] = value
    return ".".join(parts)


# Keys that once existed, with what to do instead: a clearer error than "unknown key".
_NO_ENGINE = ("the eval ranks every score exactly with one function (dinov2clip/retrieval.py) on "
              "eval.device; FAISS serves `pipeline index` and `pipeline search` only")
REMOVED = {"eval.search": _NO_ENGINE, "eval.use_gpu_faiss": _NO_ENGINE}


Where = str | typing.Callable[[str], str]  # the file, or the file or --set item per dotted key


def _at(where: Where, key: str) -> str:
    return where(key) if callable(where) else where


def _build(cls: type, raw: dict, where: Where, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{_at(where, prefix.rstrip('.'))}: [{prefix.rstrip('.')}] must be "
                          "a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    for key in unknown:
        if prefix + key in REMOVED:
            raise ConfigError(f"{_at(where, prefix + key)}: '{prefix}{key}' was removed, "
                              f"delete it: {REMOVED[prefix + key]}")
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{_at(where, key)}: unknown key '{key}' (known: "
                          f"{', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], where, prefix + name)
        elif f.default is MISSING and f.default_factory is MISSING:
            raise ConfigError(f"{_at(where, prefix + name)}: missing required key "
                              f"'{prefix}{name}'")
    try:
        return cls(**values)
    except InvalidValue as err:  # __post_init__'s checks, reported with file and full key
        key = prefix + err.key
        raise ConfigError(f"{_at(where, key)}: '{key}' {err.problem}") from None


def _coerce(tp: Any, value: Any, where: Where, key: str) -> Any:
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


def _type_error(where: Where, key: str, tp: Any, value: Any) -> ConfigError:
    name = getattr(tp, "__name__", str(tp))
    return ConfigError(f"{_at(where, key)}: '{key}' must be {name}, got {type(value).__name__} "
                       f"{value!r}")


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


def read_run_config(run_dir: str | os.PathLike) -> Config:
    """The resolved config a training run wrote next to its weights, as the same dataclasses.

    An older run's file reads as is: a key it lacks takes today's default, except
    train.num_patch_tokens, which a run from before that key existed pooled with 256. A key
    this version does not know, or a value it refuses, is a ConfigError naming the file and the
    key. Keys this version removed (REMOVED) are dropped: every run before their removal has them.
    """
    run_dir = Path(run_dir)
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}")
    if not path.is_file():
        raise ConfigError(f"not a training run: {path} missing")
    try:
        raw = json.loads(path.read_text())["config"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{path}: not a resolved run config") from None
    train = raw.get("train")
    if isinstance(train, dict):  # every run since records the count it pooled with
        train.setdefault("num_patch_tokens", 256)
    for dotted in REMOVED:
        section, _, key = dotted.rpartition(".")
        if isinstance(raw.get(section), dict):
            raw[section].pop(key, None)
    try:
        return _build(Config, raw, where=str(path), prefix="")
    except ConfigError as err:
        raise ConfigError(f"{err} (the run was written by another version of dinov2clip: "
                          "edit its config.json, or train it again)") from None


def require(cfg: Config, key: str) -> Any:
    """The value at a dotted key, or a ConfigError when a stage needs it and it is empty."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    if value in ("", None) or (isinstance(value, list | dict) and not value):
        raise ConfigError(f"{cfg.source or 'config'}: missing required value '{key}' "
                          "for this stage")
    return value
