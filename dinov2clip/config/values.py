"""The allowed values of every option, one tuple per option, and the checks the sections'
__post_init__ run with them; ConfigError, the one-line error every config problem raises."""

from __future__ import annotations

import re


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


def check_device(key: str, name: str) -> None:
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", name):
        raise InvalidValue(key, f"must be auto, cpu, cuda or cuda:N, got {name!r}")


def check_dtype(key: str, name: str) -> None:
    if name not in COMPUTE_DTYPES:
        raise InvalidValue(key, f"must be one of {', '.join(COMPUTE_DTYPES)}, got {name!r}")


def check_one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise InvalidValue(key, f"must be one of {', '.join(allowed)}, got {value!r}")


def check_at_least(key: str, value: float, low: float) -> None:
    if not value >= low:  # also catches nan
        raise InvalidValue(key, f"must be at least {low}, got {value}")


RESUME_AND_FORCE = ("--resume and --force contradict each other: --resume continues the run, "
                    "--force deletes it; pass one")
