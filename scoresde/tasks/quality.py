"""The sample quality the ``fid`` command reports: of a run's samples, or of a file's images.

:func:`run_fid` and :func:`file_fid` check the options as the command names them (a bad one is an
:class:`~scoresde.checks.OptionError`), call :func:`scoresde.quality.run_quality` or
:func:`scoresde.quality.file_quality`, and return the record the command prints.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..checks import OptionError
from ..data import get_dataset
from ..distributed import Ranks
from ..features import EXTRACTORS
from ..config import migrate
from ..quality import FID_N, file_quality, fid_steps, run_images, run_quality
from ..runs import read_config
from ..utils import keyword_default, resolve_device
from .conditions import named_label, parse_label
from ..progress import Progress
from .sampling import Say, progress_steps, tell

__all__ = ["run_fid", "file_fid"]


def _check_features(features) -> None:
    """An extractor by name, or a TorchScript file that is there."""
    if (isinstance(features, (str, os.PathLike)) and os.fspath(features) not in EXTRACTORS
            and not Path(features).is_file()):
        raise OptionError("features", f"{features!r} is neither one of {', '.join(EXTRACTORS)} "
                                      "nor a file")


def _warn_small_n(n: int, say: Say | None) -> None:
    """Say (through ``say``, or as a warning) that FID is biased below :data:`FID_N` samples."""
    if n < FID_N:
        tell(f"N={n} < {FID_N:,}: FID is biased upward at small N and comparable only between "
             "equal N (KID is unbiased)", say, stacklevel=3)


def run_fid(run: str | os.PathLike, *, n: int = keyword_default(run_quality, "n"),
            solver: str = keyword_default(run_quality, "solver"),
            steps: int | None = None, seed: int = 0,
            batch_size: int = keyword_default(run_quality, "batch_size"), label=None,
            guidance: float = 0.0, features="digits", device="cpu", say: Say | None = None,
            progress: bool = True, **sample_options) -> dict:
    """FID, KID, precision and recall of ``n`` samples of the run in ``run`` against its
    training images: :func:`scoresde.quality.run_quality` with the command's options.

    ``label`` is a class, ``"all"`` (each class in turn) or None (the unconditional score), as
    an int or as the command's text; ``guidance`` needs a label. ``sample_options`` are
    ``eps``, ``grid`` and the solver's own (``rtol``, ``atol``, ...). The record says how the
    samples were seeded (``"seeds"``): chunk ``k`` of ``batch_size`` samples from ``(seed,
    k)``, as :func:`~scoresde.tasks.sample_run` draws them. Fewer samples than
    :data:`~scoresde.quality.FID_N` are said to be too few (through ``say``, a function of a
    line; a warning without one). ``progress`` shows the sampling's steps on stderr
    (:mod:`scoresde.progress`; the chunks for ``ode`` and ``torchsde``).
    """
    _check_features(features)
    if isinstance(label, str) and label != "all":  # a class by its name, perhaps
        label = named_label(label, migrate(read_config(run)).get("class_names"))
    label = parse_label(label)
    if guidance != 0 and label is None:
        raise OptionError("guidance", "--guidance needs --label")
    job = Ranks.of_job()  # under torchrun, rank 0 speaks and shows its share of the chunks
    if job.lead:
        _warn_small_n(n, say)
    steps = fid_steps(solver) if steps is None else steps
    chunks, per = len(job.share(range(-(-n // batch_size)))), progress_steps(solver, steps)
    with Progress(chunks * (per or 1), unit="step" if per else "chunk", desc="fid",
                  enabled=progress and job.lead) as bar:
        bar.within(per or 1)  # the first chunk

        def chunk_done(done: int, total: int) -> None:
            if done == 0:  # the reference statistics are ready: the sampling's clock starts
                return bar.start()
            drawn = -(-done // batch_size)
            bar.set(drawn * (per or 1))
            bar.within((drawn + 1) * (per or 1))

        if per:
            sample_options["callback"] = bar.tick
        record = run_quality(run, features=features, n=n, solver=solver, steps=steps,
                             seed=seed, batch_size=batch_size, device=resolve_device(device),
                             label=label, guidance=guidance, progress=chunk_done,
                             **sample_options)
    record["seeds"] = f"chunk k of {batch_size} from (seed {seed}, k); KID subsets from {seed}"
    return record


def file_fid(samples: str | os.PathLike, *, data=None, run: str | os.PathLike | None = None,
             features="digits", seed: int = 0, device="cpu",
             say: Say | None = None) -> tuple[dict, str]:
    """The scores of the images in the file ``samples`` (:func:`scoresde.quality.file_quality`)
    against the data ``data`` or the training images of the run ``run`` (one of the two).

    Returns:
        ``(record, name)``: the scores, and the name of the data compared with.
    """
    _check_features(features)
    if not Path(samples).is_file():
        raise OptionError("samples", f"{samples} does not exist")
    if (data is None) == (run is None):
        raise OptionError(None, "give --data or --run (whose data the samples are compared "
                                f"with){', not both' if data is not None else ''}")
    dataset = get_dataset(data) if data is not None else run_images(run)
    try:
        record = file_quality(samples, dataset, features=features, seed=seed,
                              device=resolve_device(device))
    except ValueError as err:  # the file's images do not fit: said with the file's name
        raise OptionError("samples", f"{samples}: {err}") from None
    _warn_small_n(record["n"], say)
    return record, dataset.name
