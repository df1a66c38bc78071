"""Alembic migrations of the witness table (:mod:`veriml.tlog.migrations`)."""
