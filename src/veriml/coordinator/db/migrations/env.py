"""Alembic environment: the connection comes from :func:`veriml.coordinator.db.tables.migrate`.

On PostgreSQL an advisory lock serialises replicas that start together, so each migration
runs once; SQLite serialises writers itself.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from veriml.coordinator.db.tables import VERSION_TABLE, metadata

_LOCK_ID = 0x7665726D6C  # "verml"

connection = context.config.attributes["connection"]
if connection.dialect.name == "postgresql":
    connection.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _LOCK_ID})
context.configure(
    connection=connection,
    target_metadata=metadata,
    version_table=VERSION_TABLE,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
