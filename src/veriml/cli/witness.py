"""`veriml witness` commands (being written)."""

import typer


def register(root: typer.Typer) -> None:
    """Add this module's commands to the root app."""
