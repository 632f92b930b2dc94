"""Experiment configuration: one frozen dataclass per stage, read from TOML, checked strictly.

values.py holds the allowed values and ConfigError; data.py, extract.py, train.py and
evaluate.py one section each; schema.py the whole Config and UseOptions; loading.py how one is
read (TOML + --set, a run's config.json) and written back.
Everything is imported from here: `from dinov2clip.config import load_config, ConfigError`.
"""

from dinov2clip.config.data import (
    DataConfig,
    EvalSetConfig,
    SegSetSourceConfig,
    SyntheticConfig,
)
from dinov2clip.config.evaluate import (
    EvalConfig,
)
from dinov2clip.config.extract import (
    ExtractConfig,
)
from dinov2clip.config.loading import (
    MISSING,
    REMOVED,
    config_hash,
    git_sha,
    load_config,
    parse,
    read_resolved,
    require,
    to_dict,
    write_resolved,
)
from dinov2clip.config.schema import (
    Config,
    UseOptions,
)
from dinov2clip.config.train import (
    DenseTrainConfig,
    ProjectorConfig,
    TrainConfig,
)
from dinov2clip.config.values import (
    COMPUTE_DTYPES,
    DECODE_MODES,
    DISTRIBUTORS,
    EVALSET_SOURCES,
    KARPATHY_SPLITS,
    LOSS_NAMES,
    PLACEMENTS,
    POOLINGS,
    PROJECTOR_KINDS,
    RESIZE_MODES,
    RESUME_AND_FORCE,
    RUN_KINDS,
    SCHEDULERS,
    SEGSET_KINDS,
    TEMPLATE_SETS,
    TEXT_POOLINGS,
    TWO_TOWER_LOSSES,
    URL_LIST_FORMATS,
    VAL_KS,
    VAL_RECALLS,
    ConfigError,
    InvalidValue,
    select_metrics,
)

__all__ = [
    "COMPUTE_DTYPES", "DECODE_MODES", "DISTRIBUTORS", "EVALSET_SOURCES", "KARPATHY_SPLITS",
    "LOSS_NAMES", "MISSING", "PLACEMENTS", "POOLINGS", "PROJECTOR_KINDS", "REMOVED",
    "RESIZE_MODES", "RESUME_AND_FORCE", "RUN_KINDS", "SCHEDULERS", "SEGSET_KINDS", "TEMPLATE_SETS",
    "TEXT_POOLINGS", "TWO_TOWER_LOSSES", "URL_LIST_FORMATS",
    "VAL_KS", "VAL_RECALLS", "Config", "ConfigError", "DataConfig", "DenseTrainConfig",
    "EvalConfig", "EvalSetConfig",
    "ExtractConfig", "InvalidValue", "ProjectorConfig", "SegSetSourceConfig", "SyntheticConfig",
    "TrainConfig",
    "UseOptions", "config_hash", "git_sha", "load_config", "parse", "read_resolved", "require",
    "select_metrics", "to_dict", "write_resolved",
]
