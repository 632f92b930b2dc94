"""Experiment configuration: one frozen dataclass per stage, read from TOML, checked strictly.

schema.py holds what a config is (the dataclasses and their value checks, UseOptions,
ConfigError); loading.py how one is read (TOML + --set, a run's config.json) and written back.
Everything is imported from here: `from dinov2clip.config import load_config, ConfigError`.
"""

from dinov2clip.config.loading import (
    MISSING,
    REMOVED,
    config_hash,
    git_sha,
    load_config,
    parse,
    read_run_config,
    require,
    to_dict,
    write_resolved,
)
from dinov2clip.config.schema import (
    COMPUTE_DTYPES,
    LOSS_NAMES,
    RESUME_AND_FORCE,
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    EvalSetConfig,
    ExtractConfig,
    InvalidValue,
    ProjectorConfig,
    SyntheticConfig,
    TrainConfig,
    UseOptions,
)

__all__ = [
    "COMPUTE_DTYPES", "LOSS_NAMES", "MISSING", "REMOVED", "RESUME_AND_FORCE", "Config",
    "ConfigError", "DataConfig", "EvalConfig", "EvalSetConfig", "ExtractConfig", "InvalidValue",
    "ProjectorConfig", "SyntheticConfig", "TrainConfig", "UseOptions", "config_hash",
    "git_sha", "load_config", "parse", "read_run_config", "require", "to_dict", "write_resolved",
]
