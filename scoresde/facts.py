"""The library's names and defaults that a command shows before it runs anything, remembered so
that ``--help`` and a mistyped option are answered without importing torch.

A fact is read from the library the first time it is asked for (which imports it) and written,
when the process ends, to ``facts-DIGEST.json`` under :func:`cache_dir`, where ``DIGEST`` is
that of this package's version and source files (their sizes and modification times): any
change to the library reads every fact again. A cache that cannot be written costs the next
call its time, nothing else.
This module imports nothing of the library until a fact is missing.
"""

from __future__ import annotations

import atexit
import hashlib
import inspect
import json
import os
from importlib import import_module
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir", "library", "names", "value", "default"]

CACHE_ENV = "SCORESDE_CACHE"  # where computed statistics and remembered facts are kept
_PACKAGE = Path(__file__).resolve().parent
_known: dict | None = None  # the facts read so far, and the file they are kept in
_where: Path | None = None
_missed: list[str] = []  # the facts this process read from the library


def cache_dir() -> Path:
    """``$SCORESDE_CACHE``, else ``$XDG_CACHE_HOME/scoresde``, else ``~/.cache/scoresde``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "scoresde"


def library(dotted: str):
    """The library's object at ``dotted``: ``"sample"`` is ``scoresde.sample``,
    ``"losses.WEIGHTINGS"`` is ``scoresde.losses.WEIGHTINGS`` (importing what it needs)."""
    module, _, name = dotted.rpartition(".")
    return getattr(import_module(f"scoresde.{module}" if module else "scoresde"), name)


def names(table: str) -> list:
    """The names of the library table ``table`` (a tuple's entries, a dict's keys)."""
    return _fact(f"names:{table}", lambda: list(library(table)))


def value(dotted: str):
    """The library's value at ``dotted``: a number, a string, or a table of them (a dict's keys
    come back as strings)."""
    return _fact(f"value:{dotted}", lambda: library(dotted))


def default(function: str, keyword: str):
    """The default of the keyword ``keyword`` of the library function ``function``."""
    return _fact(f"default:{function}:{keyword}", lambda: inspect.signature(
        library(function)).parameters[keyword].default)


def _path() -> Path:
    global _where
    if _where is not None:
        return _where
    from . import __version__

    h = hashlib.sha256(__version__.encode())
    for folder, _, files in sorted(os.walk(_PACKAGE)):
        for name in sorted(f for f in files if f.endswith(".py")):
            stat = os.stat(os.path.join(folder, name))
            h.update(f"{os.path.relpath(os.path.join(folder, name), _PACKAGE)} {stat.st_size} "
                     f"{stat.st_mtime_ns}\n".encode())
    _where = cache_dir() / f"facts-{h.hexdigest()[:16]}.json"
    return _where


def _fact(key: str, read):
    global _known
    if _known is None:
        try:
            _known = json.loads(_path().read_text())
        except (OSError, ValueError):
            _known = {}
    if key not in _known:
        if not _missed:  # written once, when the process ends: one write for all it read
            atexit.register(_save, _known)
        _missed.append(key)
        _known[key] = json.loads(json.dumps(read()))  # as the file gives it back
    return _known[key]


def _save(known: dict) -> None:
    """Write the facts (atomically); a folder that cannot be written is left as it is."""
    from .files import write_atomically

    text = json.dumps(known).encode()
    try:
        _path().parent.mkdir(parents=True, exist_ok=True)
        write_atomically(_path(), lambda f: f.write(text))
    except OSError:
        pass
