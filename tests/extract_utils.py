"""Moved to tests/helpers.py; these names stay importable for tests written before."""

from tests.helpers import extract_config, tree_bytes  # noqa: F401
