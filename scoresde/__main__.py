"""``python -m scoresde`` runs the ``scoresde`` command."""

from .cli import main

main(prog_name="scoresde")
