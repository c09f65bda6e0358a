"""Tasks: one function for each thing the command does with a run.

Each takes plain keywords (the command's options, by the same names) and returns arrays,
numbers and the record the command prints; none prints or parses. A notebook user calling a
task with the command's options gets the command's arrays, bit for bit.

- :func:`sample_run`, :func:`sample_cascade_run`: samples from a run (labels, embeddings,
  guidance, masks, observations, latents, the data-statistics rule) into a resumable ``.npz``
  and a figure.
- :func:`run_likelihood`: the held-out log-likelihood, bits/dim, the gap to the entropy.
- :func:`run_fid`, :func:`file_fid`: FID, KID, precision and recall of a run's samples (or of
  a file's images) as the ``fid`` command reports them, with its checks and seeds
  (:func:`~scoresde.quality.run_quality` is the library's call underneath).
- :func:`ema_run`, :func:`sweep_ema`: a run's EMA of any length (from its power-function EMA
  snapshots) as a run folder, and a sweep of lengths measured by FID or likelihood.
- :func:`train_run`: training into a run folder, chosen (a new numbered one, or the most recent
  to resume) and removed again if training fails before its first checkpoint;
  :func:`~scoresde.train` underneath.

:mod:`.reports` says what each record holds in words (and as strict JSON), as the commands
print it.
"""

from ..quality import run_quality
from ..training import train
from .likelihood import run_likelihood
from .cascades import sample_cascade_run
from .quality import file_fid, run_fid
from .ema import ema_run, sweep_ema
from .sampling import data_statistics, sample_run
from .training import train_run

__all__ = ["sample_run", "sample_cascade_run", "run_likelihood", "run_fid", "file_fid",
           "run_quality", "train", "train_run", "data_statistics", "ema_run", "sweep_ema"]
