"""What the samples drawn from a run are conditioned on: class labels, embeddings, guidance, a
mask of known entries, a linear observation. Each is read and checked against the run before
anything is drawn; a value that does not fit is an :class:`~scoresde.checks.OptionError` naming
its option.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from ..checks import OptionError
from ..data import load_mask, load_observation
from ..guidance import classifier_free_guidance
from ..labels import chunk_labels
from ..observe import LinearObservation, mask_matrix
from ..sampling import solve_inverse
from ..sampling.inverse import DEFAULT_SOLVER, INVERSE_METHODS, _method_option_names
from ..utils import keyword_default, one_line

__all__ = ["INVERSE_OPTIONS", "parse_seeds", "parse_label", "class_labels", "embeddings",
           "mask_values", "inverse_problem", "inverse_solver"]

# The inverse methods' options that a draw from a run takes (each method says which are its own).
INVERSE_OPTIONS = ("particles", "step_size", "jump", "resample")


def parse_seeds(text: str) -> list[int]:
    """Seeds as a command gives them, ranges ``a-b`` (inclusive) and integers joined by commas:
    ``"0-63"``, ``"0,5,9-12"``; an :class:`OptionError` of ``seeds`` otherwise."""
    seeds = []
    try:
        for part in str(text).split(","):
            low, dash, high = part.strip().partition("-")
            low = int(low)
            high = int(high) if dash else low
            if low < 0 or high < low:
                raise ValueError
            seeds.extend(range(low, high + 1))
    except ValueError:
        raise OptionError("seeds", f"expected seeds as ranges 'a-b' (inclusive, 0 <= a <= b) and "
                                   f"integers joined by commas, e.g. 0-63 or 0,5,9-12; got "
                                   f"{text!r}") from None
    return seeds


def parse_label(label):
    """A label as given (``"all"``, ``"3"``, ``3`` or None) as None, ``"all"`` or an integer
    class (its range is the model's to check)."""
    if label is None or label == "all" or isinstance(label, (int, np.integer)):
        return label
    try:
        return int(label)
    except ValueError:
        raise OptionError("label", f"expected an integer class or 'all', got {label!r}") from None


def named_label(label, class_names):
    """``label`` with a class name of ``class_names`` (a run's, by label) replaced by its label,
    as the text a command gives (``"b_sea"`` -> ``"1"``); anything else as it is. A name wins
    over a number: with class folders ``1``, ``10``, ``2`` (labels 0, 1, 2 in sorted order),
    ``"1"`` is the folder ``1``. A text that is no class of the run, no number and not ``"all"``
    is an :class:`OptionError` listing the classes."""
    if not isinstance(label, str) or label == "all":
        return label
    names = list(class_names or ())
    if label in names:
        return str(names.index(label))
    try:
        int(label)
        return label
    except ValueError:
        pass
    known = f"the run's classes are {', '.join(names)}" if names else "the run's classes have " \
        "no names"
    raise OptionError("label", f"unknown class {label!r}: {known} (or give a number, or 'all')")


def class_labels(model, label, guidance: float, n: int) -> torch.Tensor | None:
    """The ``(n,)`` class labels of ``label`` (None, a class or ``"all"``) for ``model``, checked
    with the guidance weight; None without a label."""
    if label is None:
        if guidance != 0:
            raise OptionError("guidance", "--guidance needs --label")
        return None
    if getattr(model, "embed_dim", 0):
        raise OptionError("label", "this run is conditioned on embeddings, not classes; give "
                                   "--embedding FILE")
    if not model.num_classes:
        raise OptionError("label", "this run is unconditional; train with --conditional")
    try:
        labels = chunk_labels(parse_label(label), 0, n, model.num_classes)
        classifier_free_guidance(model, labels, guidance)
    except OptionError:
        raise
    except ValueError as err:
        raise OptionError("label/guidance", str(err)) from None
    return labels


def embeddings(model, path, guidance: float, n: int) -> torch.Tensor:
    """The ``(n, E)`` embeddings of the ``.npy`` at ``path`` (one row for all, or ``n`` rows),
    checked with the guidance weight against the run."""
    if not model.embed_dim:
        raise OptionError("embedding", "this run is not conditioned on embeddings; train with "
                                       "--conditional on an .npz whose y holds floats (N, E)")
    try:
        e = torch.from_numpy(np.load(path, allow_pickle=False)).float()
    except (OSError, ValueError, RuntimeError) as err:
        raise OptionError("embedding", one_line(err)) from None
    if e.ndim not in (1, 2) or e.shape[-1] != model.embed_dim:
        raise OptionError("embedding", f"expected one embedding ({model.embed_dim},) or one per "
                                       f"sample ({n}, {model.embed_dim}), got shape "
                                       f"{tuple(e.shape)}")
    e = e.expand(n, -1) if e.ndim == 1 else e
    if e.shape[0] != n:
        raise OptionError("embedding", f"expected one embedding or {n} (one per sample), got "
                                       f"{e.shape[0]}")
    try:
        classifier_free_guidance(model, e, guidance)
    except ValueError as err:
        raise OptionError("embedding", one_line(err)) from None
    return e.contiguous()


def mask_values(path, shape: tuple, n: int):
    """``(mask, values)`` of the mask file at ``path``, each of the data's ``shape`` or with 1
    or ``n`` rows in front (expanded chunk by chunk)."""
    try:
        known, values = load_mask(path, shape)
    except ValueError as err:
        raise OptionError("mask", str(err)) from None
    if known.ndim > len(shape) and known.shape[0] not in (1, n):
        raise OptionError("mask", f"the mask holds {known.shape[0]} rows; --n is {n}")
    return known, values


def inverse_problem(observe, inverse, known, shape: tuple, n: int, *, seeds, solver, steps,
                    options: dict) -> dict:
    """An observation file (or a mask with an inverse method) as the keywords of
    :func:`~scoresde.sampling.solve_inverse`: ``A``, ``y``, ``noise_std``, ``method``, the
    method's own ``method_options`` (``options`` given, its defaults otherwise), and ``solver`` and
    ``steps`` (None: the method's defaults)."""
    if seeds is not None:
        raise OptionError("seeds", "--inverse and --observe draw with --seed, not --seeds")
    if observe is not None and known is not None:
        raise OptionError("observe", "give --observe or --mask, not both")
    if observe is None and known is None:
        raise OptionError("inverse", "--inverse needs --observe or --mask")
    method = inverse or keyword_default(solve_inverse, "method")
    if observe is not None:
        try:
            a, y, noise_std = load_observation(observe, shape)
        except ValueError as err:
            raise OptionError("observe", str(err)) from None
    else:
        mask, values = known
        if mask.ndim > len(shape):
            raise OptionError("mask", "--inverse takes one mask of the data's shape (not one "
                                      "per row)")
        flat, rows = mask.reshape(-1), values.ndim > len(shape)
        values = values.reshape(values.shape[0] if rows else 1, -1)[:, flat].double()
        a, y, noise_std = mask_matrix(flat), values if rows else values[0], 0.0
    if y.ndim == 2 and y.shape[0] not in (1, n):
        raise OptionError("observe", f"y holds {y.shape[0]} rows; --n is {n}")
    try:  # before any chunk is drawn: y in the range of A when noiseless, and so on
        LinearObservation(a, y, noise_std, shape)
    except ValueError as err:
        raise OptionError("observe/mask", str(err)) from None
    own = [k for k in _method_option_names(method) if k in INVERSE_OPTIONS]
    wrong = [k for m in INVERSE_METHODS for k in _method_option_names(m)  # in the methods' order
             if k in INVERSE_OPTIONS and k in options and k not in own]
    if wrong:
        flag = wrong[0].replace("_", "-")
        raise OptionError(wrong[0], f"--{flag} does not apply to --inverse {method}")
    method_options = {k: options[k] if k in options else
                      keyword_default(INVERSE_METHODS[method], k) for k in own}
    return dict(A=a, y=y, noise_std=noise_std, method=method, method_options=method_options,
                solver=solver, steps=steps)


def inverse_solver(problem: dict) -> tuple[str | None, int]:
    """``(solver, steps)`` that ``solve_inverse`` runs for ``problem`` (solver None for smc)."""
    steps = problem["steps"] or keyword_default(solve_inverse, "steps")
    if problem["method"] == "smc":
        return None, steps
    return problem["solver"] or DEFAULT_SOLVER, steps


def file_identity(path) -> dict | None:
    """What names an input file in a fingerprint: its resolved path, size and time."""
    if path is None:
        return None
    stat = os.stat(path)
    return {"path": os.path.realpath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
