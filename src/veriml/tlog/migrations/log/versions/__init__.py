"""Revisions of the log tables."""
