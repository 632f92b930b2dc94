"""What goes to the terminal: rich tables for results, shared by every command that prints one."""

from __future__ import annotations


def make_console():
    """A rich console; piped or logged output gets 120 columns so tables keep their headers."""
    import sys

    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)
