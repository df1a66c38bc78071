"""Alembic migrations of the coordinator schema; run by :func:`veriml.coordinator.db.migrate`."""
