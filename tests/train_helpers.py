"""Moved to tests/helpers.py; these names stay importable for tests written before."""

from tests.helpers import D_CLIP, D_DINO, load, make_embeddings, one_thread  # noqa: F401
from tests.helpers import train_config as write_config  # noqa: F401
