"""The segmentation benchmarks of GroupViT / TCL / FreeDA / Talk2DINO as SegSets
(formats/segsets.py) under <artifacts>/segsets/<name>: classes.py (the published class lists),
sources.py (each kind's archives, layout and label mapping), archives.py (members read in
place), fetch.py (resumable HTTP downloads), install.py (the installer)."""

from dinov2clip.data.segmentation.install import (
    format_summary,
    install_segmentation_set,
    source_record,
)

__all__ = ["format_summary", "install_segmentation_set", "source_record"]
