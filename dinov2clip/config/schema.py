"""What a config holds: one frozen dataclass per stage, each checking its values on creation
(__post_init__), so a value that cannot work fails before torch or any model loads; UseOptions
for the use commands; ConfigError, the one-line error every config problem raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


# Every allowed value of an option, checked when a config is read (before torch or any model
# loads) and imported from here by the code that acts on it: one list per option.
# train/losses.py's registry, device.py's dtypes and models/projector.py's PROJECTORS must match
# these (tests/test_config.py checks).
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
LOSS_NAMES = ("unit_mse", "cosine", "cos_smoothl1", "text_infonce", "image_infonce",
              "retrieval_kd")
POOLINGS = ("cls", "patch_mean", "token_mean", "concat")
SCHEDULERS = ("onecycle", "cosine", "constant")
PLACEMENTS = ("auto", "device", "pinned")  # where the training split lives
PROJECTOR_KINDS = ("residual", "linear", "prenorm")
DECODE_MODES = ("cpu", "gpu", "auto")
DISTRIBUTORS = ("multiprocessing", "pyspark", "ray")
URL_LIST_FORMATS = ("tsv", "tsv.gz", "csv", "csv.gz", "parquet", "json", "json.gz", "jsonl",
                    "jsonl.gz", "txt", "txt.gz")  # img2dataset's input formats
RESIZE_MODES = ("no", "border", "keep_ratio", "keep_ratio_largest", "center_crop")  # img2dataset
EVALSET_SOURCES = ("hf", "local", "karpathy")
KARPATHY_SPLITS = ("train", "restval", "val", "test")
TEMPLATE_SETS = ("imagenet80", "short", "plain")
VAL_KS = (1, 5)  # the recalls validation logs per epoch
VAL_RECALLS = tuple(f"{d}_R@{k}" for d in ("t2i", "i2t") for k in VAL_KS)


def select_metrics(with_evalset: bool) -> tuple[str, ...]:
    """Every per-epoch metric train.select_metric may name."""
    names = ("val_loss", "val_cosine", "val_pct_clip", *(f"val_{r}" for r in VAL_RECALLS))
    if with_evalset:
        names += ("evalset_pct_clip", *(f"evalset_{r}" for r in VAL_RECALLS))
    return names


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


def _check_one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidValue(key, f"must be one of {', '.join(allowed)}, got {value!r}")


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

    def __post_init__(self):
        _check_one_of("source", self.source, EVALSET_SOURCES)
        _check_one_of("split", self.split, KARPATHY_SPLITS)
        _check_at_least("shard_size", self.shard_size, 1)


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

    def __post_init__(self):
        _check_one_of("distributor", self.distributor, DISTRIBUTORS)
        _check_one_of("input_format", self.input_format, URL_LIST_FORMATS)
        _check_one_of("resize_mode", self.resize_mode, RESIZE_MODES)


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
        _check_one_of("decode", self.decode, DECODE_MODES)


@dataclass(frozen=True)
class ProjectorConfig:
    kind: str = "residual"  # residual | linear | prenorm
    in_dim: int = 768
    out_dim: int = 512
    width: int = 2048
    depth: int = 6
    head_width: int = 1024
    standardize: bool = False  # per-dimension input standardisation, stats from the train split

    def __post_init__(self):
        _check_one_of("kind", self.kind, PROJECTOR_KINDS)
        for key in ("in_dim", "out_dim", "width", "depth", "head_width"):
            _check_at_least(key, getattr(self, key), 1)


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
        _check_one_of("pooling", self.pooling, POOLINGS)
        _check_one_of("scheduler", self.scheduler, SCHEDULERS)
        _check_one_of("placement", self.placement, PLACEMENTS)
        _check_one_of("select_metric", self.select_metric,
                      select_metrics(with_evalset=bool(self.val_evalset)))
        if not 0.0 <= self.ema_decay < 1.0:
            raise InvalidValue("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidValue("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise InvalidValue("warmup_fraction", f"must be in [0, 1], got "
                                                  f"{self.warmup_fraction}")
        _check_at_least("grad_clip", self.grad_clip, 0.0)
        _check_at_least("num_patch_tokens", self.num_patch_tokens, 0)
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
    # Evaluate eval sets whose embeddings were made by other models (backbone or teacher
    # weights, preprocessing) than the run's training embeddings; recorded in results.json.
    allow_other_embeddings: bool = False

    def __post_init__(self):
        _check_device("device", self.device)
        if not self.ks or not all(k >= 1 for k in self.ks):
            raise InvalidValue("ks", f"must be positive integers, got {self.ks}")
        _check_one_of("zeroshot_templates", self.zeroshot_templates, TEMPLATE_SETS)
        _check_at_least("zeroshot_max_per_class", self.zeroshot_max_per_class, 0)


@dataclass(frozen=True)
class Config:
    artifacts: str = "artifacts"
    data: DataConfig = field(default_factory=DataConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the TOML file this came from; set by load_config

    def __post_init__(self):
        if self.train.val_evalset and self.train.val_evalset in self.eval.sets:
            raise InvalidValue("train.val_evalset", f"{self.train.val_evalset!r} is also in "
                               "eval.sets: model selection must not see a test set")

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
