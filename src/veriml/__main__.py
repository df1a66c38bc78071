"""``python -m veriml`` runs the CLI."""

from veriml.cli import main

main()
