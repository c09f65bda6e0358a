"""What a command may write, checked before any work starts: nothing the user had is replaced.

Every file a command writes (samples, figures) goes through :func:`check_output` and every run
folder ``train`` writes through :func:`scoresde.runs.check_run_folder`, so the rule lives here
and there only:

- never one of the command's own inputs (a run's checkpoint, a mask, an observation, the data);
- never a run's own files (``config.json``, ``checkpoint.pt``, ``metrics.jsonl``, the lock), nor
  anything inside the chunk folder (``OUT.parts``) of another output;
- never two outputs of one command on one path (the samples and their figure);
- never an existing file, unless the caller says ``replace`` (the command's ``--force``), or the
  file holds the very result being asked for (see :func:`scoresde.sample_files.write_in_chunks`);
- only in a folder where a file can really be created (checked by creating one).

:func:`samples_name` gives the default sample file name, which differs whenever the samples do.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

from .runs import RUN_FILES, run_files
from .utils import is_inside, write_atomically

__all__ = ["PARTS_SUFFIX", "check_output", "same_path", "samples_name"]

PARTS_SUFFIX = ".parts"  # an output's chunk folder, OUT.parts (sample_files.parts_dir)


def same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: the same resolved path (links followed), or the same
    file on disk (hard links, case-insensitive file systems)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(path: str | os.PathLike, *, inputs: Iterable = (), others: Iterable = (),
                 replace: bool = False, suffixes: tuple[str, ...] | None = None) -> Path:
    """Check that ``path`` may be written by a command, before any work starts.

    Args:
        path: the file to write.
        inputs: the files the command reads (None entries are skipped); a run folder among them
            stands for its files (:func:`scoresde.runs.run_files`), any other folder (image
            data) for everything inside it.
        others: the command's other outputs (e.g. the samples beside their figure).
        replace: whether an existing file at ``path`` may be replaced (``--force``).
        suffixes: the suffixes the file may have, e.g. ``(".npz",)``; None for any.

    Returns:
        ``path`` as a ``Path``.

    Raises:
        ValueError: ``path`` is a folder, one of the inputs, a run's own file, inside another
            output's chunk folder, another output of the command, has the wrong suffix, or its
            folder cannot be written.
        FileExistsError: a file exists at ``path`` and ``replace`` is False.
    """
    path = Path(path)
    if suffixes is not None and path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {path}: expected a file ending in "
                         f"{' or '.join(suffixes)}")
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder")
    reason = _protected(path, inputs, others)
    if reason:
        raise ValueError(f"will not write {path}: {reason}")
    _check_writable(path.parent if str(path.parent) else Path("."), path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists; pass --force to replace it, or choose "
                              "another --out")
    return path


def _protected(path: Path, inputs: Iterable, others: Iterable) -> str | None:
    """Why ``path`` must never be written, or None."""
    for item in inputs:
        if item is None:
            continue
        item = Path(item)
        if item.is_dir() and not any(f.exists() for f in run_files(item)):  # a data folder
            if is_inside(path, item):
                return f"it is inside the data folder {item}, whose files are read as data"
            continue
        files = run_files(item) if item.is_dir() else [item]
        if any(same_path(path, f) for f in files if f.exists()):
            return f"it is an input of the command ({item})"
    for item in others:
        if item is not None and same_path(item, path):
            return "the command writes another of its outputs there"
    if path.name in RUN_FILES and path.parent.is_dir() and any(
            (path.parent / name).exists() for name in RUN_FILES):
        return f"it is a file of the run folder {path.parent}"
    for parent in Path(os.path.abspath(path)).parents:
        if parent.name.endswith(PARTS_SUFFIX):
            return f"it is inside {parent}, the chunks of another output"
    return None


def _check_writable(folder: Path, path: Path) -> None:
    """Create (and remove) a file in ``folder``: ``os.access`` says yes where a file system
    such as /proc says no."""
    if not folder.is_dir():
        raise ValueError(f"cannot write {path}: {folder} is not a folder")
    probe = folder / f".tmp-probe-{os.getpid()}"
    try:
        write_atomically(probe, lambda f: None)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write {path}: no file can be created in {folder} "
                         f"({err.strerror or err})") from None


def samples_name(stem: str, *, solver: str | None, steps: int | None, n: int,
                 seed: int | None, extras: dict) -> str:
    """The default name of a sample file: ``STEM-SOLVER-STEPS-nN-seedS[-HASH].npz``.

    The name spells out the solver, steps, number and seed (``seeds`` for one seed per
    sample), and ends in 8 hex digits of a hash of ``extras`` when there are any: everything
    else the samples depend on that is not at its default (labels, guidance, masks,
    observations, the solver's options, the device, the seed list...). Two commands whose
    samples differ never get the same default name.
    """
    parts = [stem] + [str(v) for v in (solver, steps) if v is not None] + [f"n{n}"]
    parts.append(f"seed{seed}" if seed is not None else "seeds")
    if extras:
        text = json.dumps(extras, sort_keys=True, default=str)
        parts.append(hashlib.sha256(text.encode()).hexdigest()[:8])
    return "-".join(parts) + ".npz"
