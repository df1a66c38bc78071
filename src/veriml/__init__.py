"""veriml: an open, self-hostable trust layer for AI."""

__version__ = "0.1.0"
