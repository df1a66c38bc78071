"""Fixtures shared by the whole suite.

PostgreSQL: tests that need the server at 127.0.0.1:5432 take the ``postgres_url`` fixture.
Where the server is unreachable they skip with the reason, unless VERIML_REQUIRE_POSTGRES=1
(as .ci/run sets), in which case they fail.

The SDK's cache (``VERIML_CACHE_DIR``: the checkpoints each log was seen at, pulled models) is
a fresh folder for every test, never the user's: a test that shows a client one log must not
meet a checkpoint another test (or the developer) stored for a log with the same key.

The user's directories (platformdirs: the config file, the state home) are a fresh folder for
every test too, so that neither the developer's ``veriml config set`` nor one test's state
reaches another test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from _vectors import VECTORS

POSTGRES_ADMIN_URL = os.environ.get(
    "VERIML_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def vectors_dir() -> Path:
    """tests/vectors: test vectors made by other implementations, vendored in the repository."""
    return VECTORS


@pytest.fixture(scope="session")
def _postgres_server() -> str:
    import sqlalchemy

    try:
        engine = sqlalchemy.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # any failure to connect means "no server here"
        reason = f"PostgreSQL unreachable at {POSTGRES_ADMIN_URL}: {exc.__class__.__name__}"
        if os.environ.get("VERIML_REQUIRE_POSTGRES") == "1":
            pytest.fail(reason + " (VERIML_REQUIRE_POSTGRES=1)")
        pytest.skip(reason)
    return POSTGRES_ADMIN_URL


@pytest.fixture
def postgres_url(_postgres_server: str) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL schema, dropped after the test."""
    import sqlalchemy

    schema = f"veriml_test_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(_postgres_server)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{_postgres_server}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture(scope="session", autouse=True)
def _session_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The SDK cache of fixtures wider than one test (and of what they start)."""
    folder = tmp_path_factory.mktemp("veriml-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VERIML_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _test_cache_dir(_session_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own SDK cache (created on first use)."""
    folder = _session_cache_dir / f"test-{uuid.uuid4().hex[:12]}"
    monkeypatch.setenv("VERIML_CACHE_DIR", str(folder))
    return folder


@pytest.fixture(autouse=True)
def _user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own XDG folders and config file: nothing is read from or left in $HOME."""
    root = tmp_path_factory.mktemp("user")
    for variable, name in (
        ("XDG_CONFIG_HOME", "config"),
        ("XDG_DATA_HOME", "data"),
        ("XDG_STATE_HOME", "state"),
    ):
        monkeypatch.setenv(variable, str(root / name))
    monkeypatch.setenv("VERIML_CONFIG", str(root / "config" / "veriml" / "config.toml"))
    for variable in ("VERIML_HOME", "VERIML_URL", "VERIML_LOG_VKEY"):
        monkeypatch.delenv(variable, raising=False)
    return root
