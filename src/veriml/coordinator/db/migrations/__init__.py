"""Alembic migrations of the coordinator schema.

Run by :func:`veriml.coordinator.db.tables.migrate`.
"""
