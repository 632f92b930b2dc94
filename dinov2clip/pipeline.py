"""The `pipeline` command line under the name the console script, `python -m dinov2clip.pipeline`
and torchrun know; the commands live in dinov2clip/cli/. os_fault, the one-line account of an OS
fault, is here too for code that imported it from here."""

from dinov2clip.cli import app, main
from dinov2clip.cli.app import os_fault

__all__ = ["app", "main", "os_fault"]

if __name__ == "__main__":
    main()
