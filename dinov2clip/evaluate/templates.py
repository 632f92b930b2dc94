"""Prompt templates for zero-shot classification; `{}` is replaced by the class name.

IMAGENET_80 is the set of 80 ImageNet prompts published with CLIP (Radford et al. 2021, the
"Prompt Engineering for ImageNet" notebook), grouped here by kind; SHORT is the 7-prompt subset
that notebook found by greedy selection to do about as well.
"""

from __future__ import annotations

from dinov2clip.config import ConfigError

# Photographs, qualified by quality or by the object's state; "a" and "the" forms.
_PHOTO = (
    "a photo of a {}.", "a photo of the {}.", "a photo of my {}.", "a photo of one {}.",
    "a photo of many {}.",
    "a bad photo of a {}.", "a bad photo of the {}.",
    "a good photo of a {}.", "a good photo of the {}.",
    "a bright photo of a {}.", "a bright photo of the {}.",
    "a dark photo of a {}.", "a dark photo of the {}.",
    "a blurry photo of a {}.", "a blurry photo of the {}.",
    "a cropped photo of a {}.", "a cropped photo of the {}.",
    "a close-up photo of a {}.", "a close-up photo of the {}.",
    "a pixelated photo of a {}.", "a pixelated photo of the {}.",
    "a jpeg corrupted photo of a {}.", "a jpeg corrupted photo of the {}.",
    "a low resolution photo of a {}.", "a low resolution photo of the {}.",
    "a black and white photo of a {}.", "a black and white photo of the {}.",
    "a photo of a hard to see {}.", "a photo of the hard to see {}.",
    "a photo of a clean {}.", "a photo of the clean {}.",
    "a photo of a dirty {}.", "a photo of the dirty {}.",
    "a photo of a cool {}.", "a photo of the cool {}.",
    "a photo of a nice {}.", "a photo of the nice {}.",
    "a photo of a weird {}.", "a photo of the weird {}.",
    "a photo of a large {}.", "a photo of the large {}.",
    "a photo of a small {}.", "a photo of the small {}.",
    "itap of a {}.", "itap of the {}.", "itap of my {}.",  # "I took a picture of"
)

# Depictions: art and renderings.
_ART = (
    "a drawing of a {}.", "a drawing of the {}.",
    "a painting of a {}.", "a painting of the {}.",
    "a sketch of a {}.", "a sketch of the {}.",
    "a doodle of a {}.", "a doodle of the {}.",
    "a rendering of a {}.", "a rendering of the {}.",
    "a rendition of a {}.", "a rendition of the {}.",
    "a sculpture of a {}.", "a sculpture of the {}.",
    "a tattoo of a {}.", "a tattoo of the {}.",
    "graffiti of a {}.", "graffiti of the {}.",
    "art of a {}.", "art of the {}.",
    "a {} in a video game.", "the {} in a video game.",
)

# Things made in the shape of the class.
_OBJECTS = (
    "a cartoon {}.", "the cartoon {}.",
    "a plastic {}.", "the plastic {}.",
    "a toy {}.", "the toy {}.",
    "a plushie {}.", "the plushie {}.",
    "a origami {}.", "the origami {}.",
    "a embroidered {}.", "the embroidered {}.",
)

IMAGENET_80 = _PHOTO + _ART + _OBJECTS

SHORT = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

TEMPLATE_SETS = {"imagenet80": IMAGENET_80, "short": SHORT, "plain": ("a photo of a {}.",)}


def get_templates(name: str) -> tuple[str, ...]:
    if name not in TEMPLATE_SETS:  # --templates of `pipeline zeroshot`, not from a config
        raise ConfigError(f"unknown template set {name!r} (known: {', '.join(TEMPLATE_SETS)})")
    return TEMPLATE_SETS[name]
