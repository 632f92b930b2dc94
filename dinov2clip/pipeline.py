"""The `pipeline` command line under the name the console script, `python -m dinov2clip.pipeline`
and torchrun know; the commands live in dinov2clip/cli/."""

from dinov2clip.cli import app, main

__all__ = ["app", "main"]

if __name__ == "__main__":
    main()
