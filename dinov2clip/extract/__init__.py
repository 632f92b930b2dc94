"""The extract stage: reader -> mapper -> writer (through the store), driven by the runner."""

from dinov2clip.extract.runner import run

__all__ = ["run"]
