"""The [eval] section: retrieval, zero-shot and open-vocabulary segmentation."""

from __future__ import annotations

from dataclasses import dataclass, field

from dinov2clip.config.values import (
    DENSE_HEADS,
    TEMPLATE_SETS,
    InvalidValue,
    check_at_least,
    check_device,
    check_one_of,
)


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
            check_one_of("head", head, DENSE_HEADS)
        for key in ("short_side", "window", "stride"):
            check_at_least(key, getattr(self, key), 1)
        if self.stride > self.window:
            raise InvalidValue("stride", f"must not exceed window ({self.window}): pixels "
                               f"between windows would never be scored, got {self.stride}")
        self._check_thresholds()
        check_at_least("max_images", self.max_images, 0)
        check_at_least("overlays", self.overlays, 0)
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
        check_device("device", self.device)
        if not self.ks or not all(k >= 1 for k in self.ks):
            raise InvalidValue("ks", f"must be positive integers, got {self.ks}")
        check_one_of("zeroshot_templates", self.zeroshot_templates, TEMPLATE_SETS)
        check_at_least("zeroshot_max_per_class", self.zeroshot_max_per_class, 0)
