"""The coordinator's tables (SQLAlchemy 2 Core) and the start-up migration to them.

The schema is owned by Alembic (``veriml/coordinator/migrations``): :func:`open_engine`
creates the engine and runs ``alembic upgrade head`` programmatically, so users need no
``alembic.ini``. The metadata below is what the migrations build; a test compares the two.
The transparency log keeps its own ``tlog_*`` tables in the same (or another) database.

A ``models`` row is written *before* its log entry with ``log_index`` NULL (pending; it
reserves a signed model's ``name@version`` and is invisible to readers) and completed with the
index after the append; ``claimed_at`` lets exactly one replica finish a pending row left by a
crash.
An ``inferences`` row works the same way: written pending (``log_index`` NULL, the answer
without its ``log`` member, the entry and its RFC 9162 leaf hash) before the entry is
appended, completed with the index and inclusion proof after it.

``namespaces`` records which publisher key owns each model namespace (and the log index of its
``namespace`` entry); ``beacon_keys`` holds the secret key of every randomness epoch the
coordinator committed to (docs/verification.md, "Randomness"): shared by the replicas on one
database, revealed in the log when the next epoch begins. The database is the coordinator's
own, never served.

``disputes`` holds every open dispute (docs/verification.md, "Persistence"): its parties and
claim, the challenged receipt, the model, mode and stored-input digests, the log index of its
``challenge`` entry (NULL until appended), the reveals recorded so far and the move asked
now, so a restarted coordinator resumes it where it stopped. ``claim`` is unique: two replicas
cannot open one claim twice. ``owner``/``lease_until`` let one replica drive each dispute; a
row is deleted once the dispute's verdict is logged.

Timestamps the protocol signs or logs stay RFC 3339 strings; times the coordinator only
compares (liveness, heartbeat order, nonce expiry) are Unix seconds as floats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from veriml.core.errors import StorageError

__all__ = [
    "VERSION_TABLE",
    "beacon_keys",
    "descriptor_nonces",
    "disputes",
    "inferences",
    "metadata",
    "migrate",
    "models",
    "namespaces",
    "nodes",
    "open_engine",
    "ping",
]

VERSION_TABLE = "coordinator_alembic_version"
MIGRATIONS = Path(__file__).with_name("migrations")

metadata = sa.MetaData()

models = sa.Table(
    "models",
    metadata,
    sa.Column("digest", sa.String(71), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("version", sa.String(128), nullable=False),
    sa.Column("task", sa.String(256)),
    sa.Column("license", sa.String(256)),
    sa.Column("publisher_key_id", sa.String(71)),
    sa.Column("publisher_key", sa.Text),
    sa.Column("files_digest", sa.String(71), nullable=False),
    sa.Column("signature", sa.String(71)),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("manifest", sa.JSON, nullable=False),
    sa.Column("io", sa.JSON, nullable=False),
    sa.Column("card", sa.JSON),
    sa.Column("parents", sa.JSON, nullable=False),
    sa.Column("datasets", sa.JSON, nullable=False),
    sa.Column("log_index", sa.BigInteger),
    sa.Column("registered_at", sa.String(32), nullable=False),
    sa.Column("submitted_by", sa.String(71)),
    sa.Column("claimed_at", sa.Float),
    # Only a signed model reserves its name@version: an unsigned one owns no name.
    sa.Index(
        "uq_models_signed_name_version",
        "name",
        "version",
        unique=True,
        sqlite_where=sa.text("publisher_key_id IS NOT NULL"),
        postgresql_where=sa.text("publisher_key_id IS NOT NULL"),
    ),
    sa.Index("ix_models_task", "task"),
    sa.Index("ix_models_publisher", "publisher_key_id"),
)

nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.String(71), primary_key=True),
    sa.Column("operator", sa.String(128), nullable=False),
    sa.Column("endpoint", sa.String(2048), nullable=False),
    sa.Column("descriptor", sa.JSON, nullable=False),
    sa.Column("public_key", sa.Text, nullable=False),
    sa.Column("log_index", sa.BigInteger, nullable=False),
    sa.Column("registered_at", sa.String(32), nullable=False),
    sa.Column("last_seen", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float),
    sa.Column("failed_at", sa.Float),
    sa.Column("active", sa.Integer, nullable=False, server_default="0"),
    sa.Column("queued", sa.Integer, nullable=False, server_default="0"),
    sa.Column("capacity", sa.Integer, nullable=False, server_default="1"),
    sa.Column("cached", sa.JSON, nullable=False),
)

descriptor_nonces = sa.Table(
    "descriptor_nonces",
    metadata,
    sa.Column("nonce", sa.String(128), primary_key=True),
    sa.Column("seen_at", sa.Float, nullable=False),
)

inferences = sa.Table(
    "inferences",
    metadata,
    sa.Column("id", sa.String(256), primary_key=True),
    sa.Column("model", sa.String(71), nullable=False),
    sa.Column("policy", sa.String(256), nullable=False),
    sa.Column("request_digest", sa.String(71), nullable=False),
    sa.Column("log_index", sa.BigInteger),
    sa.Column("response", sa.JSON, nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("entry", sa.Text),
    sa.Column("leaf_hash", sa.String(64)),
    sa.Column("claimed_at", sa.Float),
)


namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("namespace", sa.String(256), primary_key=True),
    sa.Column("owner", sa.String(71), nullable=False),
    sa.Column("owner_key", sa.Text, nullable=False),
    sa.Column("model", sa.String(71), nullable=False),
    sa.Column("log_index", sa.BigInteger),
)

beacon_keys = sa.Table(
    "beacon_keys",
    metadata,
    sa.Column("epoch", sa.BigInteger, primary_key=True),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("log_index", sa.BigInteger),
)


disputes = sa.Table(
    "disputes",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("inference", sa.String(256), nullable=False),
    sa.Column("defendant", sa.String(71), nullable=False),
    sa.Column("challenger", sa.String(256), nullable=False),
    sa.Column("claim", sa.String(71), nullable=False),
    sa.Column("receipt", sa.JSON, nullable=False),
    sa.Column("model", sa.String(71), nullable=False),
    sa.Column("mode", sa.String(16), nullable=False),
    sa.Column("policy", sa.String(256), nullable=False),
    sa.Column("inputs", sa.JSON, nullable=False),
    sa.Column("parties", sa.JSON, nullable=False),
    sa.Column("opened", sa.BigInteger),
    sa.Column("reveals", sa.JSON, nullable=False),
    sa.Column("move", sa.JSON),
    sa.Column("rounds", sa.Integer, nullable=False, server_default="0"),
    sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("owner", sa.String(64)),
    sa.Column("lease_until", sa.Float, nullable=False, server_default="0"),
    sa.UniqueConstraint("claim", name="uq_disputes_claim"),
    sa.Index("ix_disputes_defendant", "defendant"),
)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def open_engine(url: str, *, migrate_schema: bool = True) -> Engine:
    """An engine on ``url`` (SQLite file or PostgreSQL), migrated to the latest schema."""
    try:
        if url.startswith("sqlite"):
            path = sa.engine.make_url(url).database
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        raise StorageError("cannot open the coordinator database", reason=str(exc)) from exc
    if migrate_schema:
        try:
            migrate(engine)
        except BaseException:
            engine.dispose()
            raise
    return engine


def ping(engine: Engine) -> None:
    """A round trip to the database (``GET /healthz``); a :class:`StorageError` (503) when
    it does not answer."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StorageError("coordinator database unreachable", reason=str(exc)[:200]) from exc


def migrate(engine: Engine, revision: str = "head") -> None:
    """Run the Alembic migrations up to ``revision`` on ``engine`` (idempotent)."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, revision)
    except SQLAlchemyError as exc:
        raise StorageError("coordinator database migration failed", reason=str(exc)) from exc
