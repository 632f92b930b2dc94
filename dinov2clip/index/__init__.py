"""Text search over an image collection: embed it with projected DINOv2, index it with FAISS."""

from dinov2clip.index.build import build_index
from dinov2clip.index.search import search

__all__ = ["build_index", "search"]
