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
from veriml.coordinator import db

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
            assert version.scalar_one() == "0002"
    finally:
        engine.dispose()


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
        record = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers).json()
        before = httpx.get(url + "/log/checkpoint").text
        info = httpx.get(url + "/v1/info").json()
    with running_coordinator(home, db_url=db_url) as (url, _):
        assert httpx.get(url + "/v1/info").json() == info  # same keys, same log
        assert httpx.get(url + "/log/checkpoint").text == before
        assert httpx.get(f"{url}/v1/models/{record['digest']}").json()["log_index"] == 0
        again = httpx.post(url + "/v1/models", content=model.tar(), headers=model.headers)
        assert again.status_code == 200
        assert httpx.get(url + "/healthz").json()["log_size"] == 1


def test_two_replicas_on_one_database_share_state(tmp_path: Path, db_url: str) -> None:
    model = make_signed_model(tmp_path)
    home = tmp_path / "home"
    blobs = str(tmp_path / "blobs")
    with (
        running_coordinator(home, db_url=db_url, blobs_url=blobs) as (first, _),
        running_coordinator(home, db_url=db_url, blobs_url=blobs) as (second, _),
    ):
        created = httpx.post(first + "/v1/models", content=model.tar(), headers=model.headers)
        again = httpx.post(second + "/v1/models", content=model.tar(), headers=model.headers)
        assert created.status_code == 201
        assert again.status_code == 200
        assert again.json()["log_index"] == created.json()["log_index"]
        assert httpx.get(second + "/healthz").json()["log_size"] == 1
