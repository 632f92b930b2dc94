"""The data stage: training shards and retrieval eval sets, into <artifacts>/shards, /evalsets."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from dinov2clip.config import Config, ConfigError, write_resolved

log = logging.getLogger(__name__)


def run(cfg: Config) -> None:
    root = cfg.root
    d = cfg.data
    root.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, root, "data_config.json")
    if d.synthetic.num_train or d.synthetic.num_eval or d.synthetic.tiny_models:
        _make_synthetic(cfg)
    if d.url_list:
        from dinov2clip.data.download import download_pairs, format_summary

        summary = download_pairs(d, root / "shards" / d.dataset, root / "tmp")
        log.info(format_summary(d.dataset, summary))
    for name, src in d.eval_sets.items():
        _install_eval_set(name, Path(src), root / "evalsets" / name)


def _make_synthetic(cfg: Config) -> None:
    from dinov2clip.data import synthetic, tiny_models

    s, root = cfg.data.synthetic, cfg.root
    if s.num_train:
        n = synthetic.write_train_shards(root / "shards" / cfg.data.dataset, s.num_train,
                                         s.shard_size, s.image_size, s.seed)
        log.info("synthetic training set: %d pairs in %d shards", s.num_train, n)
    if s.num_eval:
        synthetic.write_eval_set(root / "evalsets" / s.eval_name, s.num_eval,
                                 s.captions_per_eval_image, s.image_size, s.seed)
        log.info("synthetic eval set %s: %d images", s.eval_name, s.num_eval)
    if s.tiny_models:
        tiny_models.build_tiny_dinov2(root / "models" / "tiny-dinov2", seed=s.seed)
        tiny_models.build_tiny_clip(root / "models" / "tiny-clip", seed=s.seed)
        log.info("tiny random models written to %s", root / "models")


def _install_eval_set(name: str, src: Path, dest: Path) -> None:
    """Copy a local CLIP_benchmark-format set (a dir holding test/N.tar) into the artifacts."""
    test = src / "test" if (src / "test").is_dir() else src
    tars = sorted(test.glob("*.tar"))
    if not tars:
        raise ConfigError(f"data.eval_sets.{name}: no .tar shards in {test}")
    (dest / "test").mkdir(parents=True, exist_ok=True)
    for tar in tars:
        if not (dest / "test" / tar.name).exists():
            shutil.copy2(tar, dest / "test" / tar.name)
    log.info("eval set %s: %d shards from %s", name, len(tars), test)
