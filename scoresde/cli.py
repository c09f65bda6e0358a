"""The ``scoresde`` command: turns strings into objects, writes files, reports progress."""

from __future__ import annotations

import click

from . import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="scoresde")
def main() -> None:
    """Score-based generative modelling with stochastic differential equations.

    \b
    Examples:
      scoresde --version
    """


if __name__ == "__main__":  # pragma: no cover
    main()
