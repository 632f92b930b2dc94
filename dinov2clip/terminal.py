"""What goes to the terminal: rich tables for results, and progress, shared by every command.

Progress is a tqdm bar where stderr is a terminal. Anywhere else (a log file, nohup, a pipe, CI,
a batch job) a redrawn bar piles every `\\r` update into one endless line, so progress goes out
as a plain log line every LOG_EVERY_S seconds instead, and once at the end.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator

LOG_EVERY_S = 5.0  # a line per 5 s: a 10-minute stage logs ~120 lines, a minute's still shows
log = logging.getLogger("dinov2clip.progress")


def make_console():
    """A rich console; piped or logged output gets 120 columns so tables keep their headers."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 120)


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", unit_scale: bool = False, leave: bool = True, **tty_options):
    """A tqdm bar on a terminal, else a LogProgress with the same interface (iterate it, or
    update/set_postfix/close it, or use it as a context manager). tty_options (smoothing,
    mininterval, ...) are tqdm's, for the bar only; so is leave=False: a log has no line to
    clear, and a bar's last line there says how long its work took."""
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale,
                    leave=leave, **tty_options)
    return LogProgress(iterable, total=total, desc=desc, unit=unit, unit_scale=unit_scale)


class LogProgress:
    """Progress as log lines, "desc: n/total unit (x%), rate unit/s, ETA mm:ss", at most one per
    `every` seconds (the rate is over that stretch, so it is the current one) and a last line
    on close with the whole run's rate. `clock` is for tests."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", unit_scale: bool = False,
                 every: float = LOG_EVERY_S, clock: Callable[[], float] = time.monotonic):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.iterable, self.total, self.desc = iterable, total, desc
        self.unit, self.unit_scale, self.every, self.clock = unit.strip(), unit_scale, every, clock
        self.n, self.postfix, self.closed = 0, "", False
        self.start = self.last_t = clock()
        self.last_n = 0

    def __iter__(self) -> Iterator:
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        finished = self.total is not None and self.n >= self.total  # close() says the rest
        if now - self.last_t >= self.every and not finished:
            log.info(self._line(self.n - self.last_n, now - self.last_t))
            self.last_t, self.last_n = now, self.n

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs) -> None:
        """Shown at the end of the next line, as tqdm shows it after the bar."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            elapsed = self.clock() - self.start
            log.info(self._line(self.n, elapsed, done=elapsed))

    def _line(self, count: int, seconds: float, done: float | None = None) -> str:
        """count items in the last `seconds` make the rate; done: the whole run's duration."""
        rate = count / seconds if seconds > 0 else 0.0
        unit = "" if self.unit_scale else f" {self.unit}"  # scaled amounts carry their unit
        head = f"{self.desc}: {self._amount(self.n)}"
        if self.total:
            head += f"/{self._amount(self.total)}{unit} ({100.0 * self.n / self.total:.0f}%)"
        else:
            head += unit
        parts = [head, f"{self._amount(rate)}{unit}/s"]
        if done is not None:
            parts.append(f"done in {clock_time(done)}")
        elif self.total:
            parts.append(f"ETA {clock_time((self.total - self.n) / rate) if rate > 0 else '?'}")
        return ", ".join(parts) + (f" [{self.postfix}]" if self.postfix else "")

    def _amount(self, x: float) -> str:
        """1,234 or 12.5; with unit_scale (bytes) 1.23 MB."""
        if not self.unit_scale:
            return f"{x:,.0f}" if x >= 100 or x == int(x) else f"{x:.3g}"
        for prefix in ("", "k", "M", "G", "T"):
            if abs(x) < 999.5:
                return f"{x:.3g} {prefix}{self.unit}"
            x /= 1000.0
        return f"{x:.3g} P{self.unit}"


def clock_time(seconds: float) -> str:
    """mm:ss, or h:mm:ss from an hour on."""
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
