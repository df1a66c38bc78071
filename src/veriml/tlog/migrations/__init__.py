"""Alembic migrations of the log's tables and of the witness's table.

Two script folders, each with a version table of its own, so the log, the witness and the
coordinator (``coordinator_alembic_version``, :mod:`veriml.coordinator.db.tables`) can share one
database:

``log/``      ``tlog_state``, ``tlog_entries``, ``tlog_tiles``, ``tlog_checkpoints``
              (:mod:`veriml.tlog.storage`); version table ``tlog_alembic_version``.
``witness/``  ``witness_latest_checkpoint`` (:mod:`veriml.tlog._witness_store`); version
              table ``witness_alembic_version``.

A database made before the migrations existed (its tables by ``create_all``, no version table)
is adopted: each folder's first revision creates only the tables and indexes that are missing,
then records itself, and later revisions upgrade it like any other. :func:`upgrade` runs in one
transaction, under ``BEGIN IMMEDIATE`` on SQLite and an advisory lock on PostgreSQL, so
processes that start together on one database migrate it once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from veriml.core.errors import StorageError

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = ["LOG", "WITNESS", "Schema", "head", "run_env", "upgrade"]

_HERE = Path(__file__).parent


@dataclass(frozen=True, slots=True)
class Schema:
    """One script folder: where it is, its version table, its PostgreSQL advisory lock."""

    name: str
    folder: Path
    version_table: str
    lock_id: int


LOG = Schema("log", _HERE / "log", "tlog_alembic_version", 0x766D6C746C6F67)  # "vmltlog"
WITNESS = Schema("witness", _HERE / "witness", "witness_alembic_version", 0x766D6C7774)  # "vmlwt"


def _config(schema: Schema) -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(schema.folder))
    config.attributes["schema"] = schema
    return config


def head(schema: Schema) -> str:
    """The one head revision of ``schema``'s scripts."""
    from alembic.script import ScriptDirectory

    (found,) = ScriptDirectory.from_config(_config(schema)).get_heads()
    return str(found)


def upgrade(engine: Engine, schema: Schema, metadata: sa.MetaData, revision: str = "head") -> None:
    """Migrate ``engine``'s database to ``revision`` of ``schema`` (idempotent); ``metadata``
    is what the scripts build (for autogenerate and the schema test)."""
    from alembic import command

    config = _config(schema)
    config.attributes["metadata"] = metadata
    try:
        with engine.connect() as conn:
            if conn.dialect.name == "sqlite":
                # The write lock from the start: a second process waits, then finds the work done.
                conn.exec_driver_sql("BEGIN IMMEDIATE")
            elif conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": schema.lock_id})
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
            conn.commit()
    except SQLAlchemyError as exc:
        raise StorageError(
            f"{schema.name} database migration failed", reason=str(exc).splitlines()[0]
        ) from exc


def run_env() -> None:
    """The body of each folder's ``env.py``: run the migrations on the connection
    :func:`upgrade` opened, inside its transaction, with the folder's own version table."""
    from alembic import context

    attributes = context.config.attributes
    schema: Schema = attributes["schema"]
    connection = attributes["connection"]
    context.configure(
        connection=connection,
        target_metadata=attributes["metadata"],
        version_table=schema.version_table,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
