"""The [data] section: training shards, retrieval eval sets, segmentation sets, synthetic data."""

from __future__ import annotations

from dataclasses import dataclass, field

from dinov2clip.config.values import (
    DISTRIBUTORS,
    EVALSET_SOURCES,
    KARPATHY_SPLITS,
    RESIZE_MODES,
    SEGSET_KINDS,
    URL_LIST_FORMATS,
    InvalidValue,
    check_at_least,
    check_one_of,
)


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
        check_one_of("source", self.source, EVALSET_SOURCES)
        check_one_of("split", self.split, KARPATHY_SPLITS)
        check_at_least("shard_size", self.shard_size, 1)


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
            check_one_of("kind", self.kind, SEGSET_KINDS)
        check_at_least("max_images", self.max_images, 0)

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
        check_one_of("distributor", self.distributor, DISTRIBUTORS)
        check_one_of("input_format", self.input_format, URL_LIST_FORMATS)
        check_one_of("resize_mode", self.resize_mode, RESIZE_MODES)
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
