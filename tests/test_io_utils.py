"""Atomic writes: files follow the umask, and only a temp's writer removes it while it lives."""

import os

import pytest

from dinov2clip.io_utils import (
    HOST,
    atomic_save_npy,
    atomic_write,
    atomic_write_text,
    current_umask,
    follow_umask,
    remove_dead_temps,
    temp_is_orphan,
)
from tests.helpers import dead_pid, live_process


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one afterwards."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_atomic_files_get_the_mode_open_would_give(tmp_path, umask):
    import numpy as np

    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        plain = tmp_path / f"plain-{mask:o}"
        plain.write_text("x")
        text = atomic_write_text(tmp_path / f"a-{mask:o}.json", "{}")
        npy = atomic_save_npy(tmp_path / f"a-{mask:o}.npy", np.zeros(3))
        expected = 0o666 & ~mask
        assert (plain.stat().st_mode & 0o777) == expected
        assert (text.stat().st_mode & 0o777) == expected
        assert (npy.stat().st_mode & 0o777) == expected


def test_a_library_that_replaces_the_temp_still_leaves_the_umasks_mode(tmp_path, umask):
    """safetensors' save_file writes its own private file and renames it over the temp."""
    import torch
    from safetensors.torch import save_file

    for mask in (0o022, 0o002, 0o077):
        umask(mask)
        path = atomic_write(tmp_path / f"w-{mask:o}.safetensors",
                            lambda tmp: save_file({"w": torch.zeros(2)}, tmp))
        assert (path.stat().st_mode & 0o777) == 0o666 & ~mask


def test_follow_umask_fixes_every_file_of_a_folder_and_no_link_target(tmp_path, umask):
    umask(0o027)
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours")
    outside.chmod(0o600)
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    for f in (folder / "a.safetensors", folder / "sub" / "b.json"):
        f.write_text("x")
        f.chmod(0o600)
    (folder / "link").symlink_to(outside)
    follow_umask(folder)
    assert {f.name: f.stat().st_mode & 0o777 for f in folder.rglob("*") if f.is_file()
            and not f.is_symlink()} == {"a.safetensors": 0o640, "b.json": 0o640}
    assert outside.stat().st_mode & 0o777 == 0o600


def test_current_umask_reads_it_and_leaves_it(umask):
    for mask in (0o022, 0o077, 0o002):
        umask(mask)
        assert current_umask() == mask
        assert os.umask(mask) == mask  # still set


def test_only_temps_of_dead_writers_or_this_process_are_removed(tmp_path):
    with live_process() as live:
        names = {
            "live": f".manifest.json.{HOST}.{live.pid}.0123abcd.tmp",  # another rank, writing
            "other_host": f".manifest.json.elsewhere-7.{dead_pid()}.0123abcd.tmp",
            "dead": f".manifest.json.{HOST}.{dead_pid()}.0123abcd.tmp",
            "own": f".plan.json.{HOST}.{os.getpid()}.0123abcd.tmp",
            "legacy": ".config.json.q9x_ab1z.tmp",  # an older version's mkstemp name
        }
        for name in names.values():
            (tmp_path / name).write_text("{")
        remove_dead_temps(tmp_path)
        left = {p.name for p in tmp_path.iterdir()}
        assert left == {names["live"], names["other_host"]}
        assert not temp_is_orphan(names["live"]) and temp_is_orphan(names["dead"])
        remove_dead_temps(tmp_path, "plan.json")  # by name: other files' temps are not looked at
        assert {p.name for p in tmp_path.iterdir()} == left
    remove_dead_temps(tmp_path)  # its writer has gone now
    assert {p.name for p in tmp_path.iterdir()} == {names["other_host"]}


def test_every_tiny_model_builder_leaves_the_umasks_mode(tmp_path, umask):
    """The demo's and the tests' models: save_pretrained, save_file and sentence-transformers'
    save all go through safetensors, which leaves 0600 whatever the umask."""
    from dinov2clip.data import tiny_models as tm

    umask(0o002)
    for build in (tm.build_tiny_dinov2, tm.build_tiny_dinov3, tm.build_tiny_clip,
                  tm.build_tiny_siglip, tm.build_tiny_bert, tm.build_tiny_sentence_transformer):
        build(tmp_path / build.__name__)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert sum(p.suffix == ".safetensors" for p in files) == 6
    assert {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files
            if p.stat().st_mode & 0o777 != 0o664} == {}
