"""progress(): a tqdm bar on a terminal, plain throttled log lines anywhere else."""

import io
import logging
import re

import pytest
from tqdm import tqdm

from dinov2clip import terminal
from dinov2clip.terminal import LogProgress, clock_time, progress


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.INFO, logger="dinov2clip.progress")
    return lambda: [r.getMessage() for r in caplog.records if r.name == "dinov2clip.progress"]


def test_log_lines_are_throttled_and_carry_rate_and_eta(lines):
    clock = FakeClock()
    bar = LogProgress(total=1000, desc="extract", unit="img", every=5.0, clock=clock)
    for _ in range(24):  # 40 images a second for 12 s
        clock.now += 0.5
        bar.update(20)
    assert lines() == ["extract: 200/1,000 img (20%), 40 img/s, ETA 00:20",
                       "extract: 400/1,000 img (40%), 40 img/s, ETA 00:15"]  # at 5 s and 10 s
    clock.now += 1.0
    bar.update(20)
    assert len(lines()) == 2  # 1 s after the last line: nothing
    bar.set_postfix(loss="0.1234")
    bar.close()
    bar.close()  # once only
    assert lines()[2:] == ["extract: 500/1,000 img (50%), 38.5 img/s, done in 00:13 [loss=0.1234]"]
    assert not any("\r" in line for line in lines())


def test_the_rate_is_the_current_one_and_a_stall_has_no_eta(lines):
    clock = FakeClock()
    bar = LogProgress(total=100, desc="d", unit="it", every=5.0, clock=clock)
    clock.now += 5
    bar.update(50)  # 10/s
    clock.now += 10
    bar.update(0)  # nothing for 10 s
    assert lines() == ["d: 50/100 it (50%), 10 it/s, ETA 00:05",
                       "d: 50/100 it (50%), 0 it/s, ETA ?"]


def test_an_iterable_takes_its_length_and_logs_once_at_the_end(lines):
    clock = FakeClock()
    seen = list(LogProgress(range(7), desc="karpathy test", unit="shard", clock=clock))
    assert seen == list(range(7))
    assert lines() == ["karpathy test: 7/7 shard (100%), 0 shard/s, done in 00:00"]


def test_without_a_total_and_in_bytes(lines):
    clock = FakeClock()
    with LogProgress(desc="url list", unit="B", unit_scale=True, clock=clock) as bar:
        clock.now += 6
        bar.update(3_000_000)
    with LogProgress(desc="extract", unit="img", clock=clock) as bar:
        clock.now += 2
        bar.update(5)
    assert lines() == ["url list: 3 MB, 500 kB/s", "url list: 3 MB, 500 kB/s, done in 00:06",
                       "extract: 5 img, 2.5 img/s, done in 00:02"]


def test_clock_time():
    assert [clock_time(s) for s in (0, 59.6, 61, 3599, 3725)] == [
        "00:00", "01:00", "01:01", "59:59", "1:02:05"]


def test_a_terminal_gets_tqdm_anything_else_log_lines(monkeypatch, lines):
    monkeypatch.setattr(terminal.sys, "stderr", Stream(tty=True))
    bar = progress(total=3, desc="x", unit="img", smoothing=0.1)  # a tqdm-only option passes on
    assert isinstance(bar, tqdm)
    bar.update(3)
    bar.close()
    assert "\r" in terminal.sys.stderr.getvalue() and lines() == []
    piped = Stream(tty=False)
    monkeypatch.setattr(terminal.sys, "stderr", piped)
    bar = progress(total=3, desc="x", unit="img", smoothing=0.1)
    assert isinstance(bar, LogProgress)
    bar.update(3)
    bar.close()
    assert piped.getvalue() == ""  # through logging, not straight onto stderr
    assert re.fullmatch(r"x: 3/3 img \(100%\), [\d.,]+ img/s, done in 00:00", lines()[0])


def test_no_tqdm_is_called_anywhere_but_progress():
    from pathlib import Path

    import dinov2clip

    root = Path(dinov2clip.__file__).parent
    users = [p.relative_to(root).as_posix() for p in root.rglob("*.py")
             if re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(), re.M)]
    assert users == ["terminal.py"]
