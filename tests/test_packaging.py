"""What a fresh clone relies on: the lock in step, a true Python range, make targets that take
flags, and README commands that run as written."""

import ast
import builtins
import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from tests.helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


def uv() -> list[str]:
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def test_uv_lock_is_in_step_with_pyproject():
    # --offline: a lock in step is checked from the lock alone; a stale one fails, network or not.
    proc = subprocess.run([*uv(), "lock", "--check", "--offline"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_requires_python_stops_where_img2dataset_stops():
    spec = SpecifierSet(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
                        ["requires-python"])
    assert [v for v in ("3.9", "3.10", "3.11", "3.12", "3.13", "3.14") if v in spec] == [
        "3.10", "3.11", "3.12"]
    # The reason for the cap: img2dataset imports imghdr, which Python 3.13 removed. When a
    # release stops importing it, this fails: lift the cap and run the suite on 3.13.
    package = Path(importlib.util.find_spec("img2dataset").origin).parent
    assert any(re.search(r"^import imghdr", p.read_text(), re.M) for p in package.glob("*.py"))
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    assert SpecifierSet(lock["requires-python"]) == spec


def test_make_targets_pass_config_and_flags_on():
    proc = subprocess.run(["make", "-n", "train", "CONFIG=configs/cc12m-seed.toml",
                           "ARGS=--resume --set train.epochs=2"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "run --frozen pipeline train --config configs/cc12m-seed.toml --resume --set " \
           "train.epochs=2" in proc.stdout
    assert "sync --frozen --compile-bytecode" in proc.stdout


def readme_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", (REPO / "README.md").read_text(), re.S)


def test_readme_python_snippets_define_every_name_they_use():
    for code in readme_blocks("python"):
        tree = ast.parse(code)
        defined = set(dir(builtins))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                defined |= {(a.asname or a.name).split(".")[0] for a in node.names}
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                defined.add(node.id)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)
                and isinstance(n.ctx, ast.Load)}
        assert used <= defined, f"README snippet uses {sorted(used - defined)} unimported"


def test_readme_uv_commands_never_touch_the_lock():
    # A plain `uv run` re-resolves and may rewrite uv.lock (8 srun tasks at once); --frozen not.
    text = (REPO / "README.md").read_text()
    runs = re.findall(r"uv run(?: --\S+)*", text)
    assert runs and all("--frozen" in r for r in runs), runs


class _Selected:
    """A pytest plugin that keeps the node ids of the tests a session selected."""

    def __init__(self):
        self.ids: set[str] = set()

    def pytest_collection_finish(self, session):
        self.ids = {item.nodeid.split("[")[0] for item in session.items}


def test_test_fast_leaves_out_exactly_the_img2dataset_kill_and_torchrun_tests():
    files = ["tests/test_data_download.py", "tests/test_img2dataset.py",
             "tests/test_extract_resume.py", "tests/test_train_resume.py",
             "tests/test_train_dense_resume.py"]
    slow = _Selected()  # in this process: the modules are imported already, no torch to load
    code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                        "-m", "slow", *(str(REPO / f) for f in files)], plugins=[slow])
    assert code == pytest.ExitCode.OK
    assert slow.ids == {
        "tests/test_data_download.py::test_img2dataset_resume_downloads_only_unfinished_shards",
        "tests/test_img2dataset.py::test_img2dataset_shards_feed_extract",
        "tests/test_extract_resume.py::test_sigkill_then_rerun_gives_identical_files",
        "tests/test_extract_resume.py::test_torchrun_two_ranks_union_equals_one_process",
        "tests/test_train_resume.py::test_sigkill_then_resume_is_bitwise_equal_to_an_"
        "uninterrupted_run",
        "tests/test_train_dense_resume.py::test_sigkill_in_the_head_then_resume_is_bitwise_"
        "equal_to_an_uninterrupted_run",
    }


def test_version_flag_prints_the_installed_version_and_exits_0():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from dinov2clip.pipeline import app

    result = CliRunner().invoke(app, ["--version"])
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert result.exit_code == 0, result.output
    assert result.output == f"dinov2-clip {declared}\n" and version("dinov2-clip") == declared
    # Eager: it answers before a command is parsed, and a command after it is never run.
    assert CliRunner().invoke(app, ["--version", "train"]).exit_code == 0
