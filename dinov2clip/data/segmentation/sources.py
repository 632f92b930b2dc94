"""Each benchmark kind: its archives (file name, published URL), where its images and labels lie
inside them, and its label mapping as a 256-entry table, derived from classes.py.

Member names are matched by pattern, so the same kind reads its archive, the extracted archive
(at any of its top folders), or mmsegmentation's prepared layout."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from dinov2clip.data.segmentation import classes as published

IGNORE = 255


@dataclass(frozen=True)
class LabelMap:
    """A label file's value v becomes class lut[v] (IGNORE: not scored); known[v] says whether
    the published list names v at all (a value it does not name is ignored and counted)."""

    lut: np.ndarray  # (256,) uint8
    known: np.ndarray  # (256,) bool

    def apply(self, values: np.ndarray) -> tuple[np.ndarray, int]:
        """(the mapped (H, W) uint8 labels, how many pixels held a value not published)."""
        return self.lut[values], int((~self.known[values]).sum())


def label_map(classes_of: dict[int, int], ignored: tuple[int, ...] = (IGNORE,)) -> LabelMap:
    """classes_of: file value -> class index; ignored: published values not scored."""
    lut = np.full(256, IGNORE, dtype=np.uint8)
    known = np.zeros(256, dtype=bool)
    for value, cls in classes_of.items():
        lut[value], known[value] = cls, True
    known[list(ignored)] = True
    return LabelMap(lut, known)


def as_is(n: int) -> LabelMap:
    """Values 0..n-1 are the classes themselves; 255 ignored."""
    return label_map({c: c for c in range(n)})


def without_zero(n: int) -> LabelMap:
    """mmsegmentation's reduce_zero_label: 0 ignored, values 1..n are classes 0..n-1."""
    return label_map({c: c - 1 for c in range(1, n + 1)}, ignored=(0, IGNORE))


def coco_ids() -> tuple[list[int], list[int]]:
    """(thing, stuff) label values in use: COCO-Stuff id - 1, the removed things left out."""
    used = [i for i, name in enumerate(published.COCO_STUFF_LABELS)
            if name not in published.COCO_REMOVED]
    return ([i for i in used if i < published.COCO_THING_IDS],
            [i for i in used if i >= published.COCO_THING_IDS])


def coco_stuff_map() -> LabelMap:
    """The 171 used ids in order -> 0..170, as mmsegmentation's coco_stuff164k converter maps
    them; 255 (unlabeled) ignored."""
    things, stuff = coco_ids()
    return label_map({v: c for c, v in enumerate(things + stuff)})


def coco_object_map() -> LabelMap:
    """GroupViT's convert_coco_object.py, which TCL, FreeDA and Talk2DINO use: the same
    stuffthingmaps, the 80 things -> 1..80, every stuff class and unlabeled (255) -> 0,
    background. No instance masks are read: the stuff+thing maps already resolve overlaps."""
    things, stuff = coco_ids()
    return label_map({**{v: c + 1 for c, v in enumerate(things)}, **dict.fromkeys(stuff, 0),
                      IGNORE: 0}, ignored=())


def cityscapes_label_ids() -> LabelMap:
    """gtFine labelIds -> trainIds: the 19 evaluated classes, every other labelId ignored."""
    return label_map({label_id: c for c, (_, label_id) in enumerate(published.CITYSCAPES)},
                     ignored=(*range(published.CITYSCAPES_LABEL_IDS), IGNORE))


@dataclass(frozen=True)
class Archive:
    file: str  # the published file name, kept under <artifacts>/downloads/segsets/
    url: str


@dataclass(frozen=True)
class Labels:
    pattern: re.Pattern  # a member name -> its (?P<key>...)
    mapping: LabelMap


@dataclass(frozen=True)
class Kind:
    classes: tuple[str, ...]
    background: bool  # with background, classes[0] is "background"
    published_images: int  # the split's size as published
    images: re.Pattern  # a member name -> its (?P<key>...)
    labels: tuple[Labels, ...]  # label files, the preferred first where a key has several
    split: re.Pattern | None  # the list file naming the split's keys; None: every image found
    archives: tuple[Archive, ...]  # in the order data.segmentation_sets.<name>.urls gives them
    layout: str  # what a path must hold, for the error that finds none
    prompt_names: dict[str, str] = field(default_factory=dict)  # class -> the name prompted

    @property
    def needs_path(self) -> bool:
        return not self.archives

    @property
    def prompts(self) -> tuple[str, ...]:
        """The names the protocol prompts each class with (classes.py's *_PROMPT_NAMES)."""
        return tuple(self.prompt_names.get(c, c) for c in self.classes)


def _member(pattern: str) -> re.Pattern:
    return re.compile(pattern)


VOC_TAR = Archive("VOCtrainval_11-May-2012.tar",
                  "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar")
ADE_ZIP = Archive("ADEChallengeData2016.zip",
                  "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip")
COCO_IMAGES = Archive("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip")
COCO_MAPS = Archive("stuffthingmaps_trainval2017.zip",
                    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/"
                    "stuffthingmaps_trainval2017.zip")

# Under VOC2012/ (or with the VOC2012 folder itself as the root).
_VOC = r"^(?:(?:.*/)?VOC2012/)?"
_CONTEXT = r"^(?:(?:.*/)?VOC2010/)?"
_ADE = r"^(?:(?:.*/)?ADEChallengeData2016/)?"


def _voc(background: bool) -> Kind:
    return Kind(
        classes=published.VOC if background else published.VOC[1:], background=background,
        published_images=1449,
        images=_member(_VOC + r"JPEGImages/(?P<key>[^/]+)\.jpg$"),
        labels=(Labels(_member(_VOC + r"SegmentationClass/(?P<key>[^/]+)\.png$"),
                       as_is(21) if background else without_zero(20)),),
        split=_member(_VOC + r"ImageSets/Segmentation/val\.txt$"), archives=(VOC_TAR,),
        layout="VOCdevkit/VOC2012/{JPEGImages,SegmentationClass,ImageSets/Segmentation/val.txt}",
        prompt_names=published.VOC_PROMPT_NAMES)


def _context(background: bool) -> Kind:
    return Kind(
        classes=published.CONTEXT if background else published.CONTEXT[1:],
        background=background, published_images=5105,
        images=_member(_CONTEXT + r"JPEGImages/(?P<key>[^/]+)\.jpg$"),
        labels=(Labels(_member(_CONTEXT + r"SegmentationClassContext/(?P<key>[^/]+)\.png$"),
                       as_is(60) if background else without_zero(59)),),
        split=_member(_CONTEXT + r"ImageSets/SegmentationContext/val\.txt$"), archives=(),
        layout="VOCdevkit/VOC2010/{JPEGImages,SegmentationClassContext,"
               "ImageSets/SegmentationContext/val.txt} (mmsegmentation's converted Context)",
        prompt_names=published.CONTEXT_PROMPT_NAMES)


def _coco(objects: bool) -> Kind:
    things, stuff = coco_ids()
    thing_names = tuple(published.COCO_STUFF_LABELS[i] for i in things)
    stuff_names = tuple(published.COCO_STUFF_LABELS[i] for i in stuff)
    return Kind(
        classes=("background", *thing_names) if objects else (*thing_names, *stuff_names),
        background=objects, published_images=5000,
        images=_member(r"^(?:.*/)?val2017/(?P<key>\d+)\.jpg$"),
        labels=(Labels(_member(r"^(?:.*/)?val2017/(?P<key>\d+)\.png$"),
                       coco_object_map() if objects else coco_stuff_map()),),
        split=None, archives=(COCO_IMAGES, COCO_MAPS),
        layout="val2017/<id>.jpg and the stuffthingmaps' val2017/<id>.png (e.g. mmsegmentation's "
               "coco_stuff164k/images/val2017 and annotations/val2017)")


KINDS: dict[str, Kind] = {
    "voc21": _voc(background=True),
    "voc20": _voc(background=False),
    "ade20k": Kind(
        classes=published.ADE20K, background=False, published_images=2000,
        images=_member(_ADE + r"images/validation/(?P<key>[^/]+)\.jpg$"),
        labels=(Labels(_member(_ADE + r"annotations/validation/(?P<key>[^/]+)\.png$"),
                       without_zero(150)),),
        split=None, archives=(ADE_ZIP,),
        layout="ADEChallengeData2016/{images,annotations}/validation"),
    "coco-stuff": _coco(objects=False),
    "coco-object": _coco(objects=True),
    "context59": _context(background=False),
    "context60": _context(background=True),
    "cityscapes": Kind(
        classes=tuple(name for name, _ in published.CITYSCAPES), background=False,
        published_images=500,
        images=_member(r"^(?:.*/)?leftImg8bit/val/[^/]+/(?P<key>[^/]+)_leftImg8bit\.png$"),
        labels=(Labels(_member(r"^(?:.*/)?gtFine/val/[^/]+/(?P<key>[^/]+)"
                               r"_gtFine_labelTrainIds\.png$"), as_is(19)),
                Labels(_member(r"^(?:.*/)?gtFine/val/[^/]+/(?P<key>[^/]+)_gtFine_labelIds\.png$"),
                       cityscapes_label_ids())),
        split=None, archives=(),
        layout="leftImg8bit/val/<city>/*_leftImg8bit.png with gtFine/val/<city>/"
               "*_gtFine_labelTrainIds.png (or *_gtFine_labelIds.png)"),
}
