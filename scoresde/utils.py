"""Small helpers shared by every layer: broadcasting, reductions, times, seeding and devices.

Also :class:`CountedScore`, the wrapper that counts a score function's real calls: the samplers
and the likelihood both report ``nfe`` through it.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import os
import random
import socket
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, TextIO

import numpy as np
import torch

from .files import write_atomically

__all__ = ["append_dims", "batch_sum", "time_vector", "CountedScore", "write_atomically",
           "is_inside", "file_digest", "one_line", "keyword_default",
           "LOCK", "FolderBusyError", "folder_lock",
           "seed_everything", "make_generator", "seed_from", "resolve_device", "raw_values"]

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def raw_values(x, raw_scale: float = 1.0, raw_offset: float = 0.0):
    """A data set's raw values of its model values ``x`` (a tensor or an array):
    ``x raw_scale + raw_offset`` (e.g. pixel levels of images held in ``[-1, 1]``)."""
    return x * raw_scale + raw_offset


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton axes to a per-sample tensor so it broadcasts against data.

    Args:
        v: tensor of shape ``(B,)`` (or any shape with ``v.ndim <= ndim``).
        ndim: rank of the data it will multiply, e.g. ``x.ndim``.

    Returns:
        ``v`` viewed with shape ``(B, 1, ..., 1)`` of rank ``ndim``.
    """
    missing = ndim - v.ndim
    if missing < 0:
        raise ValueError(f"append_dims: tensor has rank {v.ndim}, more than the target rank {ndim}")
    return v[(...,) + (None,) * missing]


def batch_sum(x: torch.Tensor) -> torch.Tensor:
    """Sum ``x`` of shape ``(B, *dims)`` over every axis but the first; returns shape ``(B,)``."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def time_vector(t: float, x: torch.Tensor) -> torch.Tensor:
    """Time ``t`` as a tensor of shape ``(B,)`` in the dtype and device of ``x`` ``(B, *dims)``."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


class CountedScore:
    """Wrap a score function, count its real calls in ``calls`` and check its output's shape.

    Args:
        score_fn: ``score_fn(x, t)`` with ``x`` of shape ``(B, *dims)`` and ``t`` of shape
            ``(B,)``, returning a tensor of ``x``'s shape.

    Raises:
        TypeError: ``score_fn`` is not callable.
        ValueError: (on a call) the score's shape differs from ``x``'s.
    """

    def __init__(self, score_fn: ScoreFn):
        if not callable(score_fn):
            raise TypeError(f"score_fn must be callable as score_fn(x, t), got {type(score_fn)}")
        self.score_fn, self.calls = score_fn, 0

    def __call__(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        out = self.score_fn(x, t)
        if out.shape != x.shape:
            raise ValueError(f"score_fn returned shape {tuple(out.shape)} for x of shape "
                             f"{tuple(x.shape)}; it must return the score in x's shape")
        return out


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and PyTorch's global random number generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A ``torch.Generator`` on ``device`` seeded with ``seed``; ``None`` when ``seed`` is None."""
    if seed is None:
        return None
    gen = torch.Generator(device=torch.device(device))
    gen.manual_seed(int(seed))
    return gen


def seed_from(generator: torch.Generator | None) -> int:
    """An integer seed in ``[0, 2^31 - 1)`` drawn from ``generator`` on the generator's own device.

    For libraries seeded by an integer (NumPy, scikit-learn, torchsde's Brownian motion), so that
    one ``torch.Generator`` drives everything; a CUDA generator works as well as a CPU one.
    """
    device = generator.device if generator is not None else None
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=device))


def resolve_device(device: torch.device | str | None = None) -> torch.device:
    """Turn ``None``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` into a usable ``torch.device``.

    Raises:
        ValueError: the name is not a device, or CUDA was asked for on a machine without it.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda' or 'cuda:N'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'cpu'")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r} requested but MPS is not available; use 'cpu'")
    return dev


def one_line(message: object) -> str:
    """A message (an exception's text) on one line, its whitespace runs made single spaces."""
    return " ".join(str(message).split())


def keyword_default(function: Callable, name: str):
    """The default of keyword ``name`` of ``function``: one source for a default, its signature."""
    return inspect.signature(function).parameters[name].default


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's contents (hex), read a megabyte at a time."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_inside(path: str | os.PathLike, folder: str | os.PathLike) -> bool:
    """Whether ``path`` is ``folder`` or lies under it, links resolved."""
    real, top = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([real, top]) == top


# ----- one writer per folder ----------------------------------------------------------------------
LOCK = "writer.lock"  # the lock file of folder_lock


class FolderBusyError(RuntimeError):
    """Another process is writing the folder (it holds the folder's :data:`LOCK`)."""


@contextmanager
def folder_lock(folder: str | os.PathLike, stale: Sequence[str] = ()) -> Iterator[None]:
    """Hold the one-writer lock of ``folder`` (created if absent) while the block runs.

    The lock is the operating system's lock on ``writer.lock`` (``flock``), so it dies with the
    process that holds it: a writer killed by SIGKILL leaves no lock behind that blocks the next
    start. The file names its holder (pid, host, start time) for the error others get. On a
    network file system it is as reliable as the file system's locks.

    Args:
        folder: the folder.
        stale: suffixes (e.g. ``".pt"``) of the temporary files (``.tmp-*SUFFIX``, from
            :func:`write_atomically`) that only the lock's holder writes: those a killed
            holder left are removed once the lock is held. Other writers' temporary files in
            the folder (a sampler writing its output there) are left alone.

    Raises:
        FolderBusyError: another process holds the lock (the message names it).
    """
    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    handle = open(os.path.join(folder, LOCK), "a+")
    try:
        if not _try_lock(handle):
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderBusyError(f"{folder} is being written by {holder}; wait for it to "
                                  "finish, stop it, or choose another folder")
        handle.truncate(0)
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        for suffix in stale:
            for tmp in glob.glob(os.path.join(glob.escape(folder), f".tmp-*{suffix}")):
                os.unlink(tmp)
        yield
    finally:
        handle.close()  # closing the file releases the lock


def _try_lock(handle: TextIO) -> bool:
    """Take an exclusive lock on the open file without waiting; False if another holds it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt
        handle.seek(0)
        try:
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
