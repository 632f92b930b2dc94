"""The [train] section: the projector (or two towers), its loss and loop, and a dense head."""

from __future__ import annotations

from dataclasses import dataclass, field

from dinov2clip.config.values import (
    LOSS_NAMES,
    PLACEMENTS,
    POOLINGS,
    PROJECTOR_KINDS,
    RUN_KINDS,
    SCHEDULERS,
    TRAINED_DENSE_HEADS,
    TWO_TOWER_LOSSES,
    InvalidValue,
    check_at_least,
    check_device,
    check_dtype,
    check_one_of,
    select_metrics,
)


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
        check_one_of("kind", self.kind, PROJECTOR_KINDS)
        for key in ("in_dim", "out_dim", "width", "depth", "head_width"):
            check_at_least(key, getattr(self, key), 1)


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
            check_one_of("head", self.head, TRAINED_DENSE_HEADS)
        for key in ("epochs", "batch_size"):
            check_at_least(key, getattr(self, key), 1)
        check_at_least("hidden", self.hidden, 0)
        check_at_least("weight_decay", self.weight_decay, 0.0)
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
        check_device("device", self.device)
        check_dtype("compute_dtype", self.compute_dtype)
        check_at_least("epochs", self.epochs, 1)
        check_at_least("batch_size", self.batch_size, 1)
        check_at_least("log_every", self.log_every, 1)
        if not self.lr > 0:
            raise InvalidValue("lr", f"must be positive, got {self.lr}")
        check_one_of("pooling", self.pooling, POOLINGS)
        check_one_of("scheduler", self.scheduler, SCHEDULERS)
        check_one_of("placement", self.placement, PLACEMENTS)
        if self.select_metric:  # "" is resolved by Config, which knows whether there is a teacher
            check_one_of("select_metric", self.select_metric,
                          select_metrics(with_evalset=bool(self.val_evalset)))
        if not 0.0 <= self.ema_decay < 1.0:
            raise InvalidValue("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise InvalidValue("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.warmup_fraction <= 1.0:
            raise InvalidValue("warmup_fraction", f"must be in [0, 1], got "
                                                  f"{self.warmup_fraction}")
        check_at_least("grad_clip", self.grad_clip, 0.0)
        check_at_least("num_patch_tokens", self.num_patch_tokens, 0)
        if not self.loss:
            raise InvalidValue("loss", f"is empty: name at least one of {', '.join(LOSS_NAMES)}")
        for name, weight in self.loss.items():
            if name not in LOSS_NAMES:
                raise InvalidValue(f"loss.{name}", f"is not a loss (known: "
                                                   f"{', '.join(LOSS_NAMES)})")
            check_at_least(f"loss.{name}", weight, 0.0)
        check_one_of("kind", self.kind, RUN_KINDS)
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
