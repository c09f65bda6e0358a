"""SIGINT and SIGTERM during training: a clean stop at the end of the step, with its checkpoint.

:class:`Interrupts` takes the two signals while training runs; the loop asks it, after each
step, whether to stop (:meth:`Interrupts.due`), writes that step's checkpoint and raises
:class:`TrainingInterrupted`, so a resumed run goes on bit-identically.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from .loop import Process

__all__ = ["Interrupts", "TrainingInterrupted"]


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by SIGINT or SIGTERM, after saving what there was to save.

    A ``KeyboardInterrupt`` for SIGTERM too, so that no ``except Exception`` (say in a sweep
    script) swallows a request to stop.

    Attributes:
        step: the step whose checkpoint was written on the way out, where a resumed run goes
            on; None when the signal came before the first step (nothing was trained, and the
            run folder holds what it held).
        steps: the run's total; None with ``step`` None.
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        signum: the signal's number (a command's usual exit status is ``128 + signum``).
        run_dir: the run folder.
    """

    def __init__(self, signum: int, run_dir: str | os.PathLike, step: int | None = None,
                 steps: int | None = None):
        self.signum, self.run_dir = int(signum), os.fspath(run_dir)
        self.step, self.steps = step, steps
        self.signal_name = signal.Signals(self.signum).name
        from .runs import has_checkpoint

        if step is not None:
            where = f"at step {step} of {steps}: saved the checkpoint of step {step} in {run_dir}"
        elif has_checkpoint(run_dir):
            where = f"before training resumed: {run_dir} is as it was"
        else:
            where = f"before the first step: nothing was trained in {run_dir}"
        super().__init__(f"interrupted ({self.signal_name}) {where}")

    def __reduce__(self):
        return type(self), (self.signum, self.run_dir, self.step, self.steps)


class Interrupts:
    """SIGINT and SIGTERM as a clean stop of training, for as long as this context is open.

    It takes the two signals in the main thread only (elsewhere it does nothing), and leaves
    alone a signal that is ignored (``SIG_IGN``: a job a shell started in the background) or
    whose handler was not set from Python; on close the previous handlers come back exactly as
    they were, however the block ends.

    Before :meth:`watching` (while the data, the model and the checkpoint are set up) a signal
    raises :class:`TrainingInterrupted` at once, with ``step=None``: nothing to save. While
    watching (the loop) the first signal is only noted, and :meth:`due` tells the loop to stop
    at the end of the step; a later SIGTERM is ignored until the checkpoint of that step is
    written (a scheduler and ``torchrun`` may each send one), while a second SIGINT (Ctrl-C
    pressed again) raises ``KeyboardInterrupt`` at once, without saving. A kill that cannot be
    caught (SIGKILL) stops at once too. Either way the previous checkpoint stays whole (writes
    are atomic).
    After watching the run is complete, and signals are ignored until the context closes.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.phase = "before"  # then "watching", then "after"
        self.signum = 0  # the first signal noted while watching
        self._agreed = None  # several processes: the last step's all_reduce, read a step later
        self._previous = {}

    def __enter__(self) -> "Interrupts":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous = signal.getsignal(signum)
                if previous is not None and previous != signal.SIG_IGN:
                    self._previous[signum] = previous
                    signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        while self._previous:
            signal.signal(*self._previous.popitem())

    def _handle(self, signum: int, frame) -> None:
        if self.phase == "before":
            raise TrainingInterrupted(signum, self.run_dir)
        if self.phase == "watching" and not self.signum:
            self.signum = signum
        elif self.phase == "watching" and signum == signal.SIGINT:  # Ctrl-C again: now
            raise KeyboardInterrupt(f"interrupted twice: stopped without saving; {self.run_dir} "
                                    "keeps its last checkpoint, if any")

    @contextlib.contextmanager
    def watching(self):
        """The loop's span: signals are noted, for :meth:`due`."""
        self.phase = "watching"
        try:
            yield self
        finally:
            self.phase = "after"

    def due(self, proc: Process) -> int:
        """The signal to stop on at the end of this step (the same on every rank), 0 to go on.

        One process reads its flag: no device sync, no collective. Several processes agree on
        the largest signal any rank noted with one ``all_reduce`` (MAX) of one integer per
        step, read a step later, so that the host waits for the previous step only (a stop
        comes one step after the signal); that is the whole per-step cost.
        """
        if proc.world == 1:
            return self.signum
        agreed = self._agreed
        self._agreed = torch.full((1,), self.signum, dtype=torch.int32, device=proc.device)
        dist.all_reduce(self._agreed, op=dist.ReduceOp.MAX)
        return 0 if agreed is None else int(agreed.item())
