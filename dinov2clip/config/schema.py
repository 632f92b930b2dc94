"""What a config holds: one frozen dataclass per stage (data.py, extract.py, train.py,
evaluate.py), each checking its values on creation (__post_init__) against the allowed values in
values.py, so a value that cannot work fails before torch or any model loads; Config, the whole,
with the checks across sections; UseOptions for the use commands."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from dinov2clip.config.data import DataConfig
from dinov2clip.config.evaluate import EvalConfig
from dinov2clip.config.extract import ExtractConfig
from dinov2clip.config.train import TrainConfig
from dinov2clip.config.values import (
    DEFAULT_SELECT,
    ConfigError,
    InvalidValue,
    check_at_least,
    check_device,
    check_dtype,
    select_metrics,
)


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
            check_device("device", self.device)
            check_dtype("dtype", self.dtype)
            check_at_least("batch_size", self.batch_size, 1)
            check_at_least("num_workers", self.num_workers, 0)
        except InvalidValue as err:  # named as the command line spells it
            raise ConfigError(f"--{err.key.replace('_', '-')} {err.problem}") from None

    def model_args(self) -> dict:
        """DinoV2Clip.from_pretrained's keywords."""
        return {"device": self.device, "dtype": self.dtype, "batch_size": self.batch_size}
