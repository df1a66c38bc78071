"""The log's and the witness's tables are Alembic's (veriml.tlog.migrations): an empty SQLite or
PostgreSQL database is migrated to exactly the declared tables, twice is harmless, a database an
older version made with ``create_all`` is adopted with its data, and the log, the witness and
the coordinator share one database, each with its own version table."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

import veriml
from veriml.coordinator.db import tables as db
from veriml.core.keys import generate_key
from veriml.tlog import _witness_store, migrations, storage
from veriml.tlog._witness_store import StoredCheckpoint, WitnessStore
from veriml.tlog.log import Log
from veriml.tlog.note import NoteSigner

SCHEMAS = {
    "log": (migrations.LOG, storage.metadata),
    "witness": (migrations.WITNESS, _witness_store.metadata),
}
SIGNER = NoteSigner("example.com/migrations", generate_key())


@pytest.fixture(params=["sqlite", "postgres"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres_url"))
    return f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    made = sa.create_engine(url)
    yield made
    made.dispose()


def differences(engine: sa.Engine, metadata: sa.MetaData) -> list[object]:
    """What ``metadata`` declares that the database does not have, or has otherwise; tables
    it does not declare (the other schemas', the version tables) are not its business."""
    own = set(metadata.tables)

    def include(obj: object, name: str | None, kind: str, *_: object) -> bool:
        return kind != "table" or name in own

    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"include_object": include})
        return list(compare_metadata(context, metadata))


def version(engine: sa.Engine, table: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalar_one())


@pytest.mark.parametrize("which", SCHEMAS)
def test_migrations_build_exactly_the_declared_schema(engine: sa.Engine, which: str) -> None:
    schema, metadata = SCHEMAS[which]
    migrations.upgrade(engine, schema, metadata)
    assert differences(engine, metadata) == []
    migrations.upgrade(engine, schema, metadata)  # again: nothing to do, nothing breaks
    assert version(engine, schema.version_table) == migrations.head(schema)
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == set(metadata.tables) | {schema.version_table}


def test_a_log_made_by_create_all_is_adopted_with_its_entries(
    url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an older version left: the tables, entries and checkpoints, no version table."""
    with monkeypatch.context() as older:
        older.setattr(storage, "upgrade", lambda e, _s, m: m.create_all(e))
        log = Log.open(url, SIGNER)
        indexes = [log.add(b"entry %d" % i) for i in range(5)]
        log.close()
    assert migrations.LOG.version_table not in sa.inspect(engine).get_table_names()
    log = Log.open(url, SIGNER)
    try:
        assert version(engine, migrations.LOG.version_table) == migrations.head(migrations.LOG)
        assert differences(engine, storage.metadata) == []
        assert log.add(b"entry 5") == indexes[-1] + 1
        assert log.entries(0, 6)[2] == b"entry 2"
    finally:
        log.close()


def test_a_witness_table_made_by_create_all_is_adopted_with_its_memory(
    url: str, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    remembered = StoredCheckpoint(8, b"\x01" * 32, b"note")
    with monkeypatch.context() as older:
        older.setattr(_witness_store, "upgrade", lambda e, _s, m: m.create_all(e))
        WitnessStore(engine).compare_and_swap("o", expected=None, new=remembered)
    store = WitnessStore(engine)
    assert store.latest("o") == remembered
    assert version(engine, migrations.WITNESS.version_table) == migrations.head(migrations.WITNESS)
    assert differences(engine, _witness_store.metadata) == []


def test_the_log_the_witness_and_the_coordinator_share_one_database(url: str) -> None:
    coordinator = db.open_engine(url)
    log = Log.open(url, SIGNER)
    witness = WitnessStore.open(url)
    try:
        log.add(b"shared")
        for schema, metadata in SCHEMAS.values():
            assert version(coordinator, schema.version_table) == migrations.head(schema)
            assert differences(coordinator, metadata) == []
        assert version(coordinator, db.VERSION_TABLE) != ""
        db.migrate(coordinator)  # each one's migrations leave the others' tables alone
        Log.open(url, SIGNER).close()
        assert witness.latest("nobody") is None
    finally:
        log.close()
        witness.close()
        coordinator.dispose()


def test_the_migration_scripts_are_package_files_the_wheel_ships() -> None:
    """Alembic reads them from the installed package, and the wheel takes the whole package
    folder (a wheel built from this tree lists them)."""
    package = Path(veriml.__file__).parent
    for schema, _ in SCHEMAS.values():
        assert schema.folder.is_relative_to(package)
        assert (schema.folder / "env.py").is_file()
        assert (schema.folder / "script.py.mako").is_file()
        assert list((schema.folder / "versions").glob("*_0001_initial.py"))
    pyproject = Path(__file__).parents[3] / "pyproject.toml"
    wheel = tomllib.loads(pyproject.read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    assert wheel["packages"] == ["src/veriml"]
    assert not wheel.get("exclude")
