"""The ``veriml`` command line."""

from veriml.cli.app import app, main

__all__ = ["app", "main"]
