"""Argument checks shared by every layer: one message style for integers, numbers and choices.

Each check returns the value in its plain Python type, or raises ``ValueError`` with one line
that names the argument, says what is accepted and shows what was given. ``bool`` is refused
where a number is expected (``True`` is an ``int`` to Python, never a step count to a user).

Checks of tensor values (times in ``[0, T]``, labels in range) must read the tensor back to the
host, which makes a GPU wait. Inside :func:`trusted_values` they are skipped: for callers whose
values are valid by construction, such as the training loop.
"""

from __future__ import annotations

import math
import numbers
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator

__all__ = ["OptionError", "check_int", "check_number", "check_choice", "trusted_values",
           "values_trusted"]

_TRUST = threading.local()


class OptionError(ValueError):
    """A value that does not fit, raised by a task for one of its options.

    ``option`` names the keyword (``"label"``; ``"observe/mask"`` for two together; None for
    the options as a whole), which the command shows as its flag (``--label``)."""

    def __init__(self, option: str | None, message: str):
        super().__init__(message)
        self.option = option

    def __reduce__(self):  # from one rank of a torchrun job to the others
        return type(self), (self.option, str(self))


@contextmanager
def trusted_values() -> Iterator[None]:
    """Skip the value checks of tensors (times, labels) in this thread while the block runs:
    the training loop's times come from ``sample_time`` and its labels from the data, so a GPU
    step need not wait for the device to confirm them."""
    before = values_trusted()
    _TRUST.on = True
    try:
        yield
    finally:
        _TRUST.on = before


def values_trusted() -> bool:
    """Whether this thread is inside :func:`trusted_values`."""
    return getattr(_TRUST, "on", False)


def _bounds(low, high, low_open: bool, high_open: bool) -> str:
    """`` >= 1``, `` in (0, 1]``, ... : the accepted range as words for a message."""
    if low is not None and high is not None:
        return f" in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def _inside(v: float, low, high, low_open: bool, high_open: bool) -> bool:
    if low is not None and not (v > low if low_open else v >= low):
        return False
    return high is None or (v < high if high_open else v <= high)


def check_int(name: str, value, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` after checking it is an integer (not a bool) in ``[low, high]``.

    Raises:
        ValueError: ``value`` is not an integer, or lies outside the bounds given.
    """
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or not _inside(int(value), low, high, False, False):
        raise ValueError(f"{name} must be an integer{_bounds(low, high, False, False)}, "
                         f"got {value!r}")
    return int(value)


def check_number(name: str, value, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False,
                 finite: bool = True) -> float:
    """``value`` as a ``float`` after checking it is a real number (not a bool) in the bounds.

    Args:
        name: the argument's name, for the message.
        value: what the caller gave.
        low, high: bounds, ``None`` for none; closed unless ``low_open`` / ``high_open``.
        finite: refuse infinities (NaN is always refused).

    Raises:
        ValueError: ``value`` is not a number, is NaN (or infinite with ``finite``), or lies
            outside the bounds.
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if ok:
        v = float(value)
        ok = not math.isnan(v) and (math.isfinite(v) or not finite) \
            and _inside(v, low, high, low_open, high_open)
    if not ok:
        kind = "a finite number" if finite else "a number"
        raise ValueError(f"{name} must be {kind}{_bounds(low, high, low_open, high_open)}, "
                         f"got {value!r}")
    return float(value)


def check_choice(name: str, value, choices: Iterable[str]) -> str:
    """``value`` after checking it is one of ``choices`` (a tuple, or a dict's keys).

    Raises:
        ValueError: ``value`` is not one of them; the message lists them.
    """
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value
