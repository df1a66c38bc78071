"""The coordinator schema is Alembic's: an empty SQLite or PostgreSQL database is migrated at
start-up to exactly the tables ``db.metadata`` describes, twice is harmless, and a restart
keeps the state and the log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from _coordinator import make_signed_model, running_coordinator
from veriml.coordinator.db import tables as db

TABLES = {"models", "nodes", "descriptor_nonces", "inferences"}


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


def test_migrations_build_exactly_the_declared_schema(db_url: str) -> None:
    engine = db.open_engine(db_url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
            tables = set(sa.inspect(conn).get_table_names())
        assert [d for d in diff if not _is_version_table(d)] == []
        assert tables >= TABLES | {db.VERSION_TABLE}
        db.migrate(engine)  # again: nothing to do, nothing breaks
        with engine.connect() as conn:
            version = conn.execute(sa.text(f"SELECT version_num FROM {db.VERSION_TABLE}"))
            assert version.scalar_one() == _head()
    finally:
        engine.dispose()


def _head() -> str:
    """The one head revision of the migration scripts (two heads would be a broken chain)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(db.MIGRATIONS))
    (head,) = ScriptDirectory.from_config(config).get_heads()
    return str(head)


def _is_version_table(diff: object) -> bool:
    return (
        isinstance(diff, tuple)
        and diff[0] == "remove_table"
        and getattr(diff[1], "name", None) == db.VERSION_TABLE
    )


def test_a_restart_keeps_models_nodes_and_the_log(tmp_path: Path, db_url: str) -> None:
    model = make_signed_model(tmp_path)
    home = tmp_path / "home"
    with running_coordinator(home, db_url=db_url) as (url, _):
        record = model.post(url).json()
        before = httpx.get(url + "/log/checkpoint").text
        size = httpx.get(url + "/healthz").json()["log_size"]
        info = httpx.get(url + "/v1/info").json()
    with running_coordinator(home, db_url=db_url) as (url, _):
        assert httpx.get(url + "/v1/info").json() == info  # same keys, same log
        assert httpx.get(url + "/log/checkpoint").text == before
        got = httpx.get(f"{url}/v1/models/{record['digest']}").json()
        assert got["log_index"] == record["log_index"]
        again = model.post(url)
        assert again.status_code == 200
        assert httpx.get(url + "/healthz").json()["log_size"] == size


def test_two_replicas_on_one_database_share_state(tmp_path: Path, db_url: str) -> None:
    model = make_signed_model(tmp_path)
    home = tmp_path / "home"
    blobs = str(tmp_path / "blobs")
    with (
        running_coordinator(home, db_url=db_url, blobs_url=blobs) as (first, _),
        running_coordinator(home, db_url=db_url, blobs_url=blobs) as (second, _),
    ):
        created = model.post(first)
        size = httpx.get(first + "/healthz").json()["log_size"]
        again = model.post(second)
        assert created.status_code == 201
        assert again.status_code == 200
        assert again.json()["log_index"] == created.json()["log_index"]
        assert httpx.get(second + "/healthz").json()["log_size"] == size
