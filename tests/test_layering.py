"""The structure the folders promise, read from the code so it cannot rot: which part of the
package may import which, and that only the store names the files inside a run, an index or an
embeddings set."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dinov2clip"
STAGES = {"data", "extract", "train", "evaluate"}
# commands over finished runs, and the CLI (cli/, and pipeline.py: its old import path)
USE = {"compare", "hub", "pipeline", "segment", "cli"}
FLOOR = {"models", "formats", "terminal", "io_utils", "device", "cpu_threads", "retrieval",
         "dense"}
LOW = FLOOR | {"store", "config"}
# part -> the parts it must never import (itself aside)
FORBIDDEN = {
    **{stage: STAGES | {"index", "serve"} | USE for stage in STAGES},
    "index": STAGES | {"serve"} | USE,
    "serve": STAGES | USE,
    **{part: STAGES | {"index", "serve"} | USE for part in LOW},
}
# What each on-disk contract calls its files: only its owner may spell them.
LAYOUT_NAMES = {"model.safetensors", "projector.json", "metrics.jsonl", "train_state.pt",
                "checkpoints", "runs", "embeddings", "index.faiss", "dino.faiss", "index.json",
                "meta.parquet", "results.json", "report.md", "plan.json", "manifest.json"}
OWNERS = {"store", "models/projector.py"}  # projector.py: the projector's own file format


def part_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def imported_parts(path: Path) -> set[tuple[str, int]]:
    """(part of dinov2clip imported, line), function-level imports included."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dinov2clip" and len(parts) > 1:
                found.add((parts[1], node.lineno))
    return found


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "static" not in p.parts)


def test_imports_point_down():
    broken = []
    for path in modules():
        part = part_of(path)
        for imported, line in imported_parts(path):
            if imported != part and imported in FORBIDDEN.get(part, set()):
                broken.append(f"{path.relative_to(PACKAGE)}:{line} imports {imported}")
    assert not broken, "\n".join(broken)


def test_every_part_of_the_package_has_a_place_in_the_rule():
    placed = STAGES | USE | LOW | {"index", "serve", "__init__"}
    unplaced = sorted({part_of(p) for p in modules()} - placed)
    assert not unplaced, f"not in STAGES, USE or FLOOR: {unplaced}"


def test_the_rule_sees_an_import_that_breaks_it(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from dinov2clip.evaluate.report import fmt\n")
    assert ("evaluate", 2) in imported_parts(bad)


def test_only_the_owners_name_the_layout_files():
    spelled = []
    for path in modules():
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] in OWNERS or str(rel) in OWNERS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in LAYOUT_NAMES:
                spelled.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not spelled, "\n".join(spelled)
