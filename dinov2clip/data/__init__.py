"""The data stage: training shards, retrieval eval sets and segmentation benchmarks, into
<artifacts>/shards, /evalsets, /segsets.

Each thing it does ends in one summary line in the log: the img2dataset download (successes and
failures by reason), each eval set (images, captions, where from), each segmentation set
(images, skipped by reason, archives), each linked webdataset.
"""

from __future__ import annotations

import logging

from dinov2clip.config import Config, ConfigError, write_resolved

log = logging.getLogger(__name__)


def run(cfg: Config, wait: bool = False) -> None:
    """wait: a segmentation set or archive another data stage is writing is waited for."""
    root, d = cfg.root, cfg.data
    check_names(cfg)
    if d.url_list:
        from dinov2clip.data.download import check_distributor

        check_distributor(d)  # before the quick steps, not after them
    root.mkdir(parents=True, exist_ok=True)
    write_resolved(cfg, root, "data_config.json")
    s = d.synthetic
    if s.num_train or s.num_eval or s.zeroshot_per_class or s.num_segmentation or \
            s.tiny_models or s.tiny_text_encoder:
        _make_synthetic(cfg)
    for name, src in d.webdatasets.items():
        from dinov2clip.data.webdatasets import link_webdataset

        log.info(link_webdataset(name, src, root / "shards"))
    for name, spec in d.eval_sets.items():
        from dinov2clip.data.evalsets import format_eval_summary, install_eval_set

        log.info(format_eval_summary(name, install_eval_set(name, spec, root / "evalsets" / name)))
    for name, spec in d.segmentation_sets.items():
        from dinov2clip.data.segmentation import format_summary, install_segmentation_set
        from dinov2clip.formats.segsets import segset_dir

        result = install_segmentation_set(name, spec, segset_dir(root, name),
                                          root / "downloads" / "segsets", wait)
        log.info(format_summary(name, result))
    if d.url_list:  # last: the long job, after every quick check above has passed
        from dinov2clip.data.download import download_pairs, format_summary

        summary = download_pairs(d, root / "shards" / d.dataset, root / "downloads")
        log.info(format_summary(d.dataset, summary))


def check_names(cfg: Config) -> None:
    """Two sources writing one directory is a config mistake: stop before anything is written."""
    d = cfg.data
    makes_shards = bool(d.url_list) or d.synthetic.num_train > 0
    if makes_shards and d.dataset in d.webdatasets:
        raise ConfigError(f"data.webdatasets.{d.dataset}: shards/{d.dataset} is also written "
                          "by the download or synthetic set (data.dataset); use another name")
    if d.synthetic.num_eval and d.synthetic.eval_name in d.eval_sets:
        raise ConfigError(f"data.eval_sets.{d.synthetic.eval_name}: evalsets/"
                          f"{d.synthetic.eval_name} is also the synthetic eval set; use another "
                          "name")
    for name in [*d.webdatasets, *d.eval_sets]:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"data: {name!r} is not a usable dataset name (a plain directory "
                              "name is needed)")
    if d.segmentation_sets:  # a missing path or a wrong count of urls, before any download
        from dinov2clip.data.segmentation import source_record

        for name, spec in d.segmentation_sets.items():
            source_record(name, spec)


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
    if s.zeroshot_per_class:
        n = synthetic.write_class_folders(root / "zeroshot" / "shapes", s.zeroshot_per_class,
                                          s.image_size, s.seed)
        log.info("synthetic zero-shot set: %d images in %d classes", n, len(synthetic.SHAPES))
    if s.num_segmentation:
        from dinov2clip.formats.segsets import segset_dir

        synthetic.write_segmentation_set(segset_dir(root, s.segmentation_name),
                                         s.num_segmentation, s.image_size, s.seed)
        log.info("synthetic segmentation set %s: %d images with masks", s.segmentation_name,
                 s.num_segmentation)
    if s.tiny_models:
        tiny_models.build_tiny_dinov2(root / "models" / "tiny-dinov2", seed=s.seed)
        tiny_models.build_tiny_clip(root / "models" / "tiny-clip", seed=s.seed)
        log.info("tiny random models written to %s", root / "models")
    if s.tiny_text_encoder:
        tiny_models.build_tiny_sentence_transformer(root / "models" / "tiny-text", seed=s.seed)
        log.info("tiny random text encoder written to %s", root / "models" / "tiny-text")
