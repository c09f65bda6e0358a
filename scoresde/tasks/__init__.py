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
- :func:`~scoresde.train`: training into a run folder.
"""

from ..quality import run_quality
from ..training import train
from .likelihood import run_likelihood
from .cascades import sample_cascade_run
from .quality import file_fid, run_fid
from .sampling import data_statistics, sample_run

__all__ = ["sample_run", "sample_cascade_run", "run_likelihood", "run_fid", "file_fid",
           "run_quality", "train", "data_statistics"]
