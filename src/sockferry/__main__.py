"""``python -m sockferry`` runs the command line."""

from sockferry.cli import run

run()
