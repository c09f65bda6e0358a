"""Run folders: ``config.json``, ``checkpoint.pt`` (written atomically) and ``metrics.jsonl``.

A checkpoint holds state dicts and plain data only and is read with
``torch.load(weights_only=True)``; a file that carries code or other pickled objects is refused
before anything in it runs.
"""

from __future__ import annotations

import json
import os
import pickle

import torch

from .utils import write_atomically

__all__ = ["CONFIG", "CHECKPOINT", "METRICS", "save_checkpoint", "load_checkpoint",
           "write_config", "read_config", "append_metrics", "truncate_metrics"]

CONFIG, CHECKPOINT, METRICS = "config.json", "checkpoint.pt", "metrics.jsonl"


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``state`` (tensors, state dicts, numbers, strings) to ``path``: tmp, then rename."""
    write_atomically(os.fspath(path), lambda f: torch.save(state, f))


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict:
    """Read a checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file carries code or objects other than tensors and plain data (refused
            without running any of it), or is not a checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"refusing to load {path}: it holds objects other than tensors and plain "
                         f"data (weights_only load rejected it: {first})") from None
    except (RuntimeError, EOFError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from None
    if not isinstance(state, dict):
        raise ValueError(f"{path} is not a scoresde checkpoint (a {type(state).__name__})")
    return state


def write_config(run_dir: str | os.PathLike, config: dict) -> None:
    """Write ``config.json`` (atomically, indented, keys in order)."""
    text = json.dumps(config, indent=2).encode() + b"\n"
    write_atomically(os.path.join(run_dir, CONFIG), lambda f: f.write(text))


def read_config(run_dir: str | os.PathLike) -> dict:
    """Read ``config.json`` of a run folder.

    Raises:
        FileNotFoundError: the folder has no ``config.json``.
    """
    path = os.path.join(run_dir, CONFIG)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{run_dir} is not a run folder: no {CONFIG}")
    with open(path) as f:
        return json.load(f)


def append_metrics(run_dir: str | os.PathLike, record: dict) -> None:
    """Append one JSON line to ``metrics.jsonl``."""
    with open(os.path.join(run_dir, METRICS), "a") as f:
        f.write(json.dumps(record) + "\n")


def truncate_metrics(run_dir: str | os.PathLike, step: int) -> None:
    """Drop the records after ``step`` (from a run that stopped before its next checkpoint)."""
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        return
    with open(path) as f:
        keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= step]
    text = "".join(keep).encode()
    write_atomically(path, lambda f: f.write(text))
