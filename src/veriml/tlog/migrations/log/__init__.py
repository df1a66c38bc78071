"""Alembic migrations of the log tables (:mod:`veriml.tlog.migrations`)."""
