"""The ``scoresde`` command: a module per command, each parsing its options, calling one
library task, printing.

The only package that talks to click. Errors: bad input exits with status 2, a failure while
running with status 1; either way one line on stderr, no traceback (``SCORESDE_DEBUG=1`` shows
it), and no partial output: files are written to a temporary name and renamed when complete.
"""

from __future__ import annotations

import click

from .. import __version__
from .common import CTX, Main
from .convert import convert
from .demo import demo
from .ema import ema
from .fid import fid
from .likelihood import likelihood
from .sample import sample
from .train import train

__all__ = ["main"]


@click.group(cls=Main, context_settings=CTX,
             commands=[train, sample, likelihood, fid, ema, demo, convert])
@click.version_option(__version__, prog_name="scoresde")
def main() -> None:
    """Score-based generative modelling with stochastic differential equations.

    \b
    Examples:
      scoresde demo                                # train, sample, likelihood, one figure
      scoresde train --sde vp                      # a 2D toy into a new folder under ./runs
      scoresde sample --solver pc --steps 1000     # from the most recent run
      scoresde likelihood                          # held-out log-likelihood in nats
      scoresde fid --solver dpmpp_2m --steps 20    # FID, KID, precision/recall of images
      scoresde ema --sweep 0.02:0.30:12            # choose the EMA's length after training
    """


if __name__ == "__main__":  # pragma: no cover
    main()
