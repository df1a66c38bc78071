"""Fixtures shared by the whole suite.

PostgreSQL: tests that need the server at 127.0.0.1:5432 take the ``postgres_url`` fixture.
Where the server is unreachable they skip with the reason, unless VERIML_REQUIRE_POSTGRES=1
(as .ci/run sets), in which case they fail.
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
