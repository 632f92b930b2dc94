"""Reading configs: a TOML experiment file with --set overrides, and a run's config.json back into
the same dataclasses, strictly (an unknown key, a wrong type or a missing required value is a
ConfigError naming the key and the file or the --set item). The resolved config is written next
to each stage's outputs with the git sha, so every artifact says where it came from.
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
from pathlib import Path
from typing import Any

from dinov2clip.config.schema import Config
from dinov2clip.config.values import ConfigError, InvalidValue

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

MISSING = dataclasses.MISSING


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

    return parse(Config, raw, where=where, prefix="")


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


def parse(cls: type, raw: dict, where: Where, prefix: str = "") -> Any:
    """raw (from TOML or JSON) as the dataclass cls, strictly: every error names the key and
    where it came from (where: the file, or a function of the dotted key)."""
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
        return parse(tp, value, where, key + ".")
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


def read_resolved(path: str | os.PathLike) -> Config:
    """A resolved config write_resolved wrote (a run's, next to its weights), as the same
    dataclasses.

    An older run's file reads as is: a key it lacks takes today's default, except
    train.num_patch_tokens, which a run from before that key existed pooled with 256. A key
    this version does not know, or a value it refuses, is a ConfigError naming the file and the
    key. Keys this version removed (REMOVED) are dropped: every run before their removal has them.
    """
    path = Path(path)
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
        return parse(Config, raw, where=str(path), prefix="")
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
