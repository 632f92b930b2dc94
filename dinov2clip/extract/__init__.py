"""The extract stage: reader -> mapper -> writer, driven by the runner."""

from dinov2clip.extract.runner import embeddings_tag, run

__all__ = ["run", "embeddings_tag"]
