"""Revisions of the witness table."""
