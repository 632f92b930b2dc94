"""Helpers for the extract tests: a small config over tiny models, and a directory's bytes."""

from __future__ import annotations

from pathlib import Path


def extract_config(path: Path, artifacts: Path, models: dict, datasets: list[str],
                   **extract) -> Path:
    """Write a TOML whose [extract] section runs the tiny models on CPU."""
    values = {"datasets": datasets, "dino_model": models["dino"], "clip_model": models["clip"],
              "clip_pretrained": models["clip_pretrained"], "tag": "t", "batch_size": 4,
              "num_workers": 0, "device": "cpu", **extract}
    lines = [f'artifacts = "{artifacts}"', "[extract]"]
    for key, value in values.items():
        text = "[" + ", ".join(f'"{v}"' for v in value) + "]" if isinstance(value, list) else (
            f'"{value}"' if isinstance(value, str) else str(value))
        lines.append(f"{key} = {text}")
    path.write_text("\n".join(lines) + "\n")
    return path


def tree_bytes(root: Path, skip: tuple[str, ...] = ("config.json",)) -> dict[str, bytes]:
    """Every file under root (hidden temp files included) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip}
