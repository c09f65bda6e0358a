"""Training into a run folder as the ``train`` command does: the folder chosen, checked, and
removed again when training fails before its first checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from ..checks import OptionError
from ..config import option_default
from ..runs import RUNS, check_run_folder, find_run, is_run, new_run_dir, removed_on_failure
from ..training import train

__all__ = ["train_run"]


def _word(value) -> str:
    return value if isinstance(value, str) else type(value).__name__.lower()


def train_run(run: str | os.PathLike | None = None, *, resume: bool = False,
              root: str | os.PathLike = RUNS, say: Callable[[str], None] | None = None,
              **options) -> tuple[Path, dict]:
    """Train into the folder ``run``, or a new numbered one under ``root``
    (``runs/00003-vp-moons``); with ``resume``, continue ``run`` or the most recent run under
    ``root``, with the run's own options but for those given (:func:`~scoresde.train`).

    A ``run`` to resume that is absent or has no checkpoint yet is started there, so that a job
    requeued before its first checkpoint can always pass the same folder. A folder this call
    created is removed if training stops before its first checkpoint. Under ``torchrun`` every
    process must be given the same ``run``. ``say`` is told which folder was chosen when it was
    not given, and that a run to resume is started; ``options`` go to :func:`~scoresde.train`.

    Returns:
        ``(path, result)``: the run folder and :func:`~scoresde.train`'s result.

    Raises:
        OptionError: no ``run`` under ``torchrun``; ``run`` is a file, a folder that training
            may not write (:func:`~scoresde.runs.check_run_folder`), or, without ``resume``, a
            folder that is not empty; ``resume`` without ``run`` and no run under ``root``.
    """
    say = say or (lambda line: None)
    if run is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise OptionError("run", "give the run folder under torchrun: every process must train "
                                 "into the same one")
    path = None if run is None else Path(run)
    if path is not None and path.exists() and not path.is_dir():
        raise OptionError("run", f"{path} is a file, not a run folder")
    note = None
    if resume and path is None:
        path = find_run(None, root, trainable=True)
        note = f"using run {path} (most recent under ./{root})"
    elif resume and not is_run(path):
        note = f"no checkpoint in {path} yet: starting the run there"
    elif not resume:
        if path is None:
            data = "latent" if options.get("latent") else options.get(
                "data", option_default("data"))
            path = new_run_dir(root, _word(options.get("sde", option_default("sde"))), _word(data))
        if path.exists() and any(path.iterdir()):
            raise OptionError("run", f"{path} already exists; pass --resume to continue it or "
                                     "choose another --run")
    try:
        check_run_folder(path)
    except ValueError as err:
        raise OptionError("run", str(err)) from None
    if note is not None:
        say(note)
    with removed_on_failure(path):
        return path, train(path, resume=resume, **options)
