"""Work shared among the processes of a ``torchrun`` job: each rank does its share, rank 0 writes
the one output.

:func:`joined` joins torchrun's process group for the length of a call (gloo on the CPU, nccl
with each rank on its local GPU) and leaves it again if it joined it; it gives the call its
:class:`Ranks`. A call outside ``torchrun`` gets ``Ranks(0, 1)`` and no process group.

The collectives of :class:`Ranks` are called a fixed number of times per call, never once per
solver step or per chunk: ranks whose adaptive solvers take different numbers of steps, or that
hold different numbers of chunks, never wait for each other inside a collective that only some
of them reach. A rank that fails says so at the next one (:meth:`Ranks.agree`), so that the
others stop with it instead of waiting for it.
"""

from __future__ import annotations

import os
import pickle
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence, TypeVar

import torch
import torch.distributed as dist

__all__ = ["Ranks", "joined", "dist_setup"]

T = TypeVar("T")


def dist_setup(device: torch.device):
    """``(rank, world, device, owned)``: joins torchrun's process group when there is one (a
    CUDA ``device`` becomes this rank's local GPU); ``owned`` says whether this call joined it."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), device, False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), device, True
    return 0, 1, device, False


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``world`` processes, and the collectives the tasks use."""

    rank: int = 0
    world: int = 1

    @classmethod
    def of_job(cls) -> "Ranks":
        """The ranks :func:`joined` gives, read from torchrun's environment without joining."""
        return cls(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")))

    @property
    def lead(self) -> bool:
        """Whether this is rank 0, which writes the output and speaks for the job."""
        return self.rank == 0

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's share of ``items``: every ``world``-th, from the ``rank``-th."""
        return list(items[self.rank::self.world])

    def gather(self, value) -> list:
        """Every rank's ``value`` (picklable), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        out = [None] * self.world
        dist.all_gather_object(out, value)
        return out

    def collect(self, value) -> list | None:
        """Every rank's ``value`` (picklable), in rank order, on rank 0; None on the others."""
        if self.world == 1:
            return [value]
        out = [None] * self.world if self.lead else None
        dist.gather_object(value, out, dst=0)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` (picklable) on every rank."""
        if self.world == 1:
            return value
        box = [value if self.lead else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def agree(self, error: BaseException | None) -> None:
        """Raise on every rank if any rank had an ``error`` (None: this one had none): a rank
        raises its own, the others the first failed rank's (itself where it can be sent, so
        that bad input stays bad input; else a RuntimeError naming it and its rank)."""
        errors = self.gather(None if error is None else _portable(error))
        if error is not None:
            raise error
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            rank, sent = failed[0]
            if isinstance(sent, BaseException):
                raise sent
            raise RuntimeError(f"rank {rank} of {self.world} stopped: {sent}")


def _portable(error: BaseException):
    """``error`` itself if it survives pickling (to reach the other ranks), else its words."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:
        return f"{type(error).__name__}: {error}"


@contextmanager
def joined(device: torch.device) -> Iterator[tuple[Ranks, torch.device]]:
    """``(ranks, device)`` for a call: under ``torchrun`` the process group is joined (and left
    at the end if this call joined it) and ``device`` is this rank's; otherwise ``Ranks(0, 1)``
    and ``device`` as it is."""
    rank, world, device, owned = dist_setup(device)
    try:
        yield Ranks(rank, world), device
    finally:
        if owned:
            dist.destroy_process_group()
