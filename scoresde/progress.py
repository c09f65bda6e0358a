"""Progress of long loops on stderr, for a terminal and for a log file alike.

In a terminal, a tqdm bar with the rate and the time left. Anywhere else (a log file, a pipe, a
scheduler's output) full lines, never a carriage return: one when :func:`line_every` seconds
have passed since the last (30 by default; ``SCORESDE_PROGRESS_S`` sets another), and one at the
end when any was written. Training, sampling, likelihoods and FID all report through
:class:`Progress`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import TextIO

from tqdm import tqdm

__all__ = ["Progress", "line_every"]

_LINE_EVERY_S = 30.0


def line_every() -> float:
    """Seconds between two progress lines away from a terminal: ``SCORESDE_PROGRESS_S`` when
    set (a number >= 0), else 30."""
    value = os.environ.get("SCORESDE_PROGRESS_S")
    if value is None:
        return _LINE_EVERY_S
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"SCORESDE_PROGRESS_S must be a number of seconds >= 0, got {value!r}")
    return seconds


class Progress:
    """``total`` units of work (``unit``: "step", "chunk", ...) done one ``update`` at a time.

    Args:
        total: the units in all; initial: those already done (a resumed loop).
        desc: what the loop does ("sampling"), the line's first word ("": none).
        enabled: False shows nothing (``--quiet``, ``--json``, a rank other than 0).
        stream: where to write (stderr by default); a terminal gets a bar.
        last: away from a terminal, a line at the end whenever a unit was done, not only after
            earlier lines (training's summary); in a terminal, the bar is left on the screen.
    """

    def __init__(self, total: float, *, unit: str, desc: str, initial: float = 0,
                 enabled: bool = True, stream: TextIO | None = None, last: bool = False):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.initial, self.unit, self.desc = total, initial, unit, desc
        self.enabled = enabled
        isatty = getattr(self.stream, "isatty", None)
        self.tty = enabled and callable(isatty) and isatty()
        self.bar = tqdm(total=total, initial=initial, file=self.stream, unit=unit,
                        desc=desc or None, dynamic_ncols=True, leave=last,
                        disable=not self.tty)
        self.last = last
        self.end = total  # where the piece of work under way ends (see within)
        # the interval is read only where lines are written (a bad one stops nothing else)
        self.every = line_every() if enabled and not self.tty else None
        self.n = initial
        self.shown_n = None
        self.postfix = ""
        self.t0 = self.shown = time.perf_counter()
        self.lines = 0

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close(finished=exc[0] is None)

    def start(self) -> None:
        """Start the clock now: the work before (statistics computed first, a model loaded) is
        not in the rate and the time left."""
        self.t0 = self.shown = time.perf_counter()
        if self.tty:
            self.bar.reset(total=self.total)
            self.bar.update(self.n)

    def within(self, end: float) -> None:
        """The units up to ``end`` are the piece of work under way (a chunk): :meth:`tick`
        does not pass it."""
        self.end = end

    def tick(self, *_) -> None:
        """One more unit, never past the end of the piece under way (a solver may call back
        more or less often than it has steps); as a callback, its arguments are ignored."""
        self.set(min(self.n + 1, self.end))

    def update(self, n: float = 1, postfix: str | None = None) -> None:
        """``n`` more units done; ``postfix`` (e.g. ``"loss=0.41"``) shown beside them."""
        self.set(self.n + n, postfix)

    def set(self, done: float, postfix: str | None = None) -> None:
        """``done`` units done in all."""
        self.n = min(done, self.total)
        if postfix is not None:
            self.postfix = postfix
        if self.tty:
            if postfix is not None:
                self.bar.set_postfix_str(postfix, refresh=False)
            self.bar.update(self.n - self.bar.n)
        elif self.enabled and time.perf_counter() - self.shown >= self.every:
            self._line()

    def _line(self) -> None:
        now = self.shown = time.perf_counter()
        self.shown_n = self.n
        n = f"{self.n:g}" if isinstance(self.n, float) else self.n
        done = self.n - self.initial
        rate = done / (now - self.t0) if now > self.t0 and done > 0 else 0.0
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        line = (f"{self.desc + ': ' if self.desc else ''}{self.unit} {n}/{self.total:g} "
                f"{100 * self.n / self.total if self.total else 100:3.0f}% "
                f"[{tqdm.format_interval(now - self.t0)}<"
                f"{tqdm.format_interval(left) if left == left else '?'}, "
                f"{rate:.3g} {self.unit}/s]{' ' + self.postfix if self.postfix else ''}")
        self.stream.write(line + "\n")
        self.stream.flush()
        self.lines += 1

    def close(self, finished: bool = True) -> None:
        """End the bar; away from a terminal, a last line when any was written before (with
        ``last``: when a unit was done)."""
        self.bar.close()
        wrote = self.lines or (self.last and self.n > self.initial)
        if not self.tty and self.enabled and wrote and finished and self.shown_n != self.n:
            self._line()
