"""What a config holds: one frozen dataclass per stage, each checking its values on creation
(__post_init__), so a value that cannot work fails before torch or any model loads; UseOptions
for the use commands; ConfigError, the one-line error every config problem raises."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path


class ConfigError(ValueError):
    """A config problem, reported to the user as one line."""


# Every allowed value of an option, checked when a config is read (before torch or any model
# loads) and imported from here by the code that acts on it: one list per option.
# train/losses.py's registry, device.py's dtypes and models/projector.py's PROJECTORS must match
# these (tests/test_config.py checks).
COMPUTE_DTYPES = ("bf16", "fp16", "fp32")
# into_teacher: one projector into the teacher's space; two_tower: an image and a text projector
# into a shared space, the text side fed by extract.text_encoder's caption embeddings.
RUN_KINDS = ("into_teacher", "two_tower")
TWO_TOWER_LOSSES = ("infonce", "sigmoid")  # CLIP's InfoNCE, SigLIP's sigmoid loss
LOSS_NAMES = ("unit_mse", "cosine", "cos_smoothl1", "text_infonce", "image_infonce",
              "retrieval_kd", *TWO_TOWER_LOSSES)
# auto: a sentence-transformers model with its own modules (pooling, normalisation); the others
# load a plain transformers model and pool its last hidden state, padding excluded.
TEXT_POOLINGS = ("auto", "mean", "cls", "last_token")
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
# The segmentation benchmarks of GroupViT, TCL, FreeDA and Talk2DINO that data.segmentation_sets
# installs (dinov2clip/data/segmentation/sources.py describes each; a test holds the two equal).
SEGSET_KINDS = ("voc21", "voc20", "ade20k", "coco-stuff", "coco-object", "context59",
                "context60", "cityscapes")
KARPATHY_SPLITS = ("train", "restval", "val", "test")
TEMPLATE_SETS = ("imagenet80", "short", "plain")
DENSE_HEADS = ("projector", "talk2dino")  # dense/heads.py builds each
TRAINED_DENSE_HEADS = ("talk2dino",)  # train.dense.head: what train/dense_head.py trains
VAL_KS = (1, 5)  # the recalls validation logs per epoch
VAL_RECALLS = tuple(f"{d}_R@{k}" for d in ("t2i", "i2t") for k in VAL_KS)


def select_metrics(with_evalset: bool, with_teacher: bool = True) -> tuple[str, ...]:
    """Every per-epoch metric train.select_metric may name; "% of CLIP" only with a teacher."""
    pct = ("val_pct_clip",) if with_teacher else ()
    names = ("val_loss", "val_cosine", *pct, *(f"val_{r}" for r in VAL_RECALLS))
    if with_evalset:
        names += (*(("evalset_pct_clip",) if with_teacher else ()),
                  *(f"evalset_{r}" for r in VAL_RECALLS))
    return names


# train.select_metric = "" picks this: the share of CLIP's R@1 with a teacher; without one, the
# towers' own text->image R@1 (the direction a search serves).
DEFAULT_SELECT = {True: "val_pct_clip", False: "val_t2i_R@1"}


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
    # >0: a segmentation set of this many shapes with ground-truth masks, segsets/<seg_name>
    num_segmentation: int = 0
    segmentation_name: str = "shapes-seg"
    seed: int = 0
    tiny_models: bool = True  # also build tiny random DINOv2 and CLIP under <artifacts>/models
    # also a tiny random BERT as a sentence-transformers folder, <artifacts>/models/tiny-text
    tiny_text_encoder: bool = False


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
class SegSetSourceConfig:
    """Where one segmentation benchmark comes from; it is installed as <artifacts>/segsets/<name>.
    Which kinds need a path, and how many urls each takes, is the data stage's to check."""

    kind: str = ""  # one of SEGSET_KINDS; empty: the set's name
    # the extracted dataset, or a folder holding its archives; empty: download them (context59,
    # context60 and cityscapes have no public download and need it)
    path: str = ""
    urls: list[str] = field(default_factory=list)  # one per archive, in order; empty: published
    max_images: int = 0  # 0: every image of the split; N: the first N keys in sorted order

    def __post_init__(self):
        if self.kind:
            _check_one_of("kind", self.kind, SEGSET_KINDS)
        _check_at_least("max_images", self.max_images, 0)

    def resolved_kind(self, name: str) -> str:
        return self.kind or name


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
    # segsets/<name>: the segmentation benchmarks (voc21, ade20k, coco-stuff, ...), downloaded or
    # read from a path
    segmentation_sets: dict[str, SegSetSourceConfig] = field(default_factory=dict)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        _check_one_of("distributor", self.distributor, DISTRIBUTORS)
        _check_one_of("input_format", self.input_format, URL_LIST_FORMATS)
        _check_one_of("resize_mode", self.resize_mode, RESIZE_MODES)
        for name, spec in self.segmentation_sets.items():
            key = f"segmentation_sets.{name}"
            if not name or "/" in name or name.startswith("."):
                raise InvalidValue(key, "is not a usable set name (a plain directory name is "
                                        "needed)")
            if spec.resolved_kind(name) not in SEGSET_KINDS:
                raise InvalidValue(f"{key}.kind", f"is empty and {name!r} is not a kind: name "
                                   f"one of {', '.join(SEGSET_KINDS)}")
            if self.synthetic.num_segmentation and name == self.synthetic.segmentation_name:
                raise InvalidValue(key, f"segsets/{name} is also the synthetic segmentation set "
                                   "(data.synthetic.segmentation_name); use another name")


@dataclass(frozen=True)
class ExtractConfig:
    datasets: list[str] = field(default_factory=list)  # "shards/<name>" or "evalsets/<name>"
    dino_model: str = "facebook/dinov2-base"  # HF hub id or local directory
    dino_revision: str = ""  # hub branch, tag or commit to pin; empty: the default branch
    # open_clip name, or a path to an open_clip model-config JSON; "": no teacher (a two-tower
    # run over extract.text_encoder alone: no clip_image/clip_text, no "% of CLIP")
    clip_model: str = "ViT-B-16"
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
    # A frozen text-embedding model whose caption embeddings are cached as `text_enc` beside
    # the teacher's (two-tower training): HF hub id or local directory; empty: none.
    text_encoder: str = ""
    text_revision: str = ""  # hub branch, tag or commit to pin; empty: the default branch
    text_pooling: str = "auto"  # auto (sentence-transformers) | mean | cls | last_token
    text_max_length: int = 0  # tokens per caption; 0: the model's own limit
    # Also cache, per image, the last block's per-head CLS-attention-pooled patch tokens
    # (dino_heads, (n, heads, D) float16), what train.dense.head = "talk2dino" trains on. The
    # last block runs its attention eagerly to form the weights; the default tag gains "-heads".
    dino_heads: bool = False

    def __post_init__(self):
        _check_device("device", self.device)
        _check_dtype("compute_dtype", self.compute_dtype)
        _check_at_least("batch_size", self.batch_size, 1)
        _check_at_least("num_workers", self.num_workers, 0)
        _check_one_of("decode", self.decode, DECODE_MODES)
        _check_one_of("text_pooling", self.text_pooling, TEXT_POOLINGS)
        _check_at_least("text_max_length", self.text_max_length, 0)


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
class DenseTrainConfig:
    """A dense head trained after the projector, into the same run, from cached tensors."""

    head: str = ""  # "": none | talk2dino (needs extract.dino_heads = true)
    epochs: int = 10
    batch_size: int = 128  # Talk2DINO's
    lr: float = 1e-3
    weight_decay: float = 0.01
    hidden: int = 0  # width of the map's middle layer; 0: the backbone's width

    def __post_init__(self):
        if self.head:
            _check_one_of("head", self.head, TRAINED_DENSE_HEADS)
        for key in ("epochs", "batch_size"):
            _check_at_least(key, getattr(self, key), 1)
        _check_at_least("hidden", self.hidden, 0)
        _check_at_least("weight_decay", self.weight_decay, 0.0)
        if not self.lr > 0:
            raise InvalidValue("lr", f"must be positive, got {self.lr}")


@dataclass(frozen=True)
class TrainConfig:
    dataset: str = "cc12m"  # embeddings/<dataset>/<tag> is read
    tag: str = ""  # empty: the extract stage's tag
    run: str = "seed"  # runs/<run>
    kind: str = "into_teacher"  # into_teacher | two_tower (needs extract.text_encoder)
    pooling: str = "token_mean"  # cls | patch_mean | token_mean | concat
    # token_mean weighs the patch mean by this many tokens; 0: the count extract recorded in
    # the manifest (256 for DINOv2 at 224 px, 196 for DINOv3)
    num_patch_tokens: int = 0
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    # two_tower: text_enc -> the shared space; its out_dim must equal projector.out_dim. Its
    # defaults are a ProjectorConfig's, as a partly given [train.text_projector] table gets them.
    text_projector: ProjectorConfig = field(default_factory=ProjectorConfig)
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
    # best epoch by this (higher is better, or val_loss); "": DEFAULT_SELECT, val_pct_clip with
    # a teacher, val_t2i_R@1 without (resolved when the config is read)
    select_metric: str = ""
    log_every: int = 50  # steps between metrics.jsonl lines (and the only GPU syncs)
    seed: int = 0
    device: str = "auto"
    compute_dtype: str = "bf16"
    placement: str = "auto"  # auto: the training split on the GPU when it fits | device | pinned
    compile: bool = False  # torch.compile the projector for the training steps
    ema_decay: float = 0.0  # > 0: validate and save an EMA of the weights, e.g. 0.999
    dense: DenseTrainConfig = field(default_factory=DenseTrainConfig)

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
        if self.select_metric:  # "" is resolved by Config, which knows whether there is a teacher
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
        _check_one_of("kind", self.kind, RUN_KINDS)
        self._check_kind()

    def _check_kind(self) -> None:
        """A two-tower run trains with the two-tower losses only, and an into-teacher run
        without them: each kind's losses need the other kind's outputs."""
        two = self.kind == "two_tower"
        wrong = [n for n in self.loss if (n in TWO_TOWER_LOSSES) != two]
        if wrong:
            allowed = TWO_TOWER_LOSSES if two else tuple(n for n in LOSS_NAMES
                                                         if n not in TWO_TOWER_LOSSES)
            raise InvalidValue(f"loss.{wrong[0]}", f"is not a {self.kind} loss (those are: "
                                                   f"{', '.join(allowed)})")
        if two and self.text_projector.out_dim != self.projector.out_dim:
            raise InvalidValue("text_projector.out_dim", f"must equal projector.out_dim "
                               f"({self.projector.out_dim}): both towers land in one space, "
                               f"got {self.text_projector.out_dim}")


@dataclass(frozen=True)
class DenseEvalConfig:
    """Open-vocabulary segmentation under the protocol of GroupViT, TCL, FreeDA, Talk2DINO."""

    sets: list[str] = field(default_factory=list)  # <artifacts>/segsets/<name>; empty: none
    # projector: the run's projector on every patch token; talk2dino: the learned head. A list
    # scores each set with every head named, one result each, side by side in the report.
    head: str | list[str] = "projector"
    short_side: int = 448  # the image is resized so its short side is this
    window: int = 448  # sliding window side, pixels
    stride: int = 224
    # Sets with a background class: a pixel whose best class cosine is below this is
    # background (a constant channel). Heads differ in their cosine range, so a table may name
    # one per head: { projector = 0.2, talk2dino = 0.55 }, every head in `head` among them.
    bg_threshold: float | dict[str, float] = 0.55
    max_images: int = 0  # 0: every image of a set
    overlays: int = 4  # image | ground truth | prediction pictures per set
    save_masks: bool = False  # predicted label maps as PNGs beside the set's JSON
    # talk2dino: mix each class's map with its text-weighted head attention (Talk2DINO's
    # background cleaning); the projector head has no attention of its own and ignores it
    bg_clean: bool = False
    # every (set, head) also scored with PAMR (dense/pamr.py) on each window's class scores, as
    # Talk2DINO reports it: its own JSON and report row, from the same pass over the windows
    pamr: bool = False

    def __post_init__(self):
        if not self.heads:
            raise InvalidValue("head", "names no head: give one, or a list of them")
        if len(set(self.heads)) != len(self.heads):
            raise InvalidValue("head", f"names a head twice: {list(self.heads)}")
        for head in self.heads:
            _check_one_of("head", head, DENSE_HEADS)
        for key in ("short_side", "window", "stride"):
            _check_at_least(key, getattr(self, key), 1)
        if self.stride > self.window:
            raise InvalidValue("stride", f"must not exceed window ({self.window}): pixels "
                               f"between windows would never be scored, got {self.stride}")
        self._check_thresholds()
        _check_at_least("max_images", self.max_images, 0)
        _check_at_least("overlays", self.overlays, 0)
        for name in self.sets:
            if not name or "/" in name or name.startswith("."):
                raise InvalidValue("sets", f"holds {name!r}, not a plain set name")

    def _check_thresholds(self) -> None:
        given = self.bg_threshold
        if isinstance(given, dict):
            for head in given:
                if head not in DENSE_HEADS:
                    raise InvalidValue(f"bg_threshold.{head}", f"is not a dense head (known: "
                                       f"{', '.join(DENSE_HEADS)})")
            missing = [head for head in self.heads if head not in given]
            if missing:
                raise InvalidValue("bg_threshold", f"names no threshold for head {missing[0]!r}, "
                                   "which eval.dense.head scores: name every head, or give one "
                                   "number for all")
        for key, value in (given.items() if isinstance(given, dict) else [("", given)]):
            if not -1.0 <= value <= 1.0:
                raise InvalidValue(f"bg_threshold.{key}" if key else "bg_threshold",
                                   f"is a cosine: must be in [-1, 1], got {value}")

    @property
    def heads(self) -> tuple[str, ...]:
        """The heads to score with, in the order given."""
        return (self.head,) if isinstance(self.head, str) else tuple(self.head)

    def threshold(self, head: str) -> float:
        """The background threshold of one head."""
        given = self.bg_threshold
        return given[head] if isinstance(given, dict) else given


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
    dense: DenseEvalConfig = field(default_factory=DenseEvalConfig)

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
        self._check_teacher()
        if not self.train.select_metric:  # frozen: the resolved value is what config.json keeps
            metric = DEFAULT_SELECT[bool(self.extract.clip_model)]
            object.__setattr__(self, "train", replace(self.train, select_metric=metric))

    def _check_teacher(self) -> None:
        """Without a teacher only a text encoder gives captions, only two towers can train,
        and no metric compares with CLIP."""
        e, t = self.extract, self.train
        if e.clip_model:
            return
        if not e.text_encoder:
            raise InvalidValue("extract.clip_model", 'is "" (no teacher) and extract.'
                               "text_encoder is empty: nothing would embed the captions; name "
                               "a teacher, a text encoder, or both")
        if t.kind != "two_tower":
            raise InvalidValue("train.kind", f'is {t.kind!r} but extract.clip_model is "" (no '
                               'teacher): a projector into a teacher\'s space needs one; set '
                               'train.kind = "two_tower" or name extract.clip_model')
        if t.dense.head:  # talk2dino is trained against the teacher's captions
            raise InvalidValue("train.dense.head", f'is {t.dense.head!r} but extract.clip_model '
                               'is "" (no teacher): the head learns CLIP\'s text space')
        allowed = select_metrics(bool(t.val_evalset), with_teacher=False)
        if t.select_metric and t.select_metric not in allowed:
            raise InvalidValue("train.select_metric", f"is {t.select_metric!r}, which needs a "
                               f'teacher (extract.clip_model is ""); one of: '
                               f"{', '.join(allowed)}")

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
