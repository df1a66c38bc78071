"""Alembic environment of the log schema: see :mod:`veriml.tlog.migrations`."""

from veriml.tlog.migrations import run_env

run_env()
