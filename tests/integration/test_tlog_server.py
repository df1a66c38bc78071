"""The log's HTTP API, mounted under a prefix: tiles, checkpoint, proofs, POST add, and
problem JSON for every kind of bad request."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from _servers import serve
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.merkle import (
    leaf_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.publish import tile_paths_between
from veriml.tlog.server import create_log_app, create_log_router
from veriml.tlog.storage import MAX_ENTRY_SIZE
from veriml.tlog.tiles import TilePath, decode_entry_bundle

ORIGIN = "example.com/server-test"
SIZE = 70_000 // 100  # 700: two full level-0 tiles, one partial, a partial level-1 tile
PREFIX = "/v1/log"


def entry(i: int) -> bytes:
    return b'{"type":"test","n":%d}' % i


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory, signer: NoteSigner) -> Iterator[Log]:
    db = tmp_path_factory.mktemp("server") / "log.db"
    with Log.open(f"sqlite:///{db}", signer, options=LogOptions(batch_interval=0.0)) as opened:
        opened.add_many([entry(i) for i in range(SIZE)])
        yield opened


@pytest.fixture(scope="module")
def client(log: Log) -> Iterator[httpx.Client]:
    app = FastAPI()
    app.include_router(create_log_router(log, allow_add=True), prefix=PREFIX)
    with serve(app) as url, httpx.Client(base_url=url, timeout=30, follow_redirects=True) as c:
        yield c


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status
    for field in ("type", "title", "detail"):
        assert body[field], field


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(entry(i)) for i in range(n)]


def current(client: httpx.Client, signer: NoteSigner) -> Checkpoint:
    response = client.get(f"{PREFIX}/checkpoint")
    checkpoint, _ = open_checkpoint(
        response.content, NoteVerifier.from_vkey(signer.vkey), origin=ORIGIN
    )
    return checkpoint


def test_checkpoint_is_signed_plain_text_and_not_cached(
    client: httpx.Client, signer: NoteSigner
) -> None:
    response = client.get(f"{PREFIX}/checkpoint")
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache"
    checkpoint = current(client, signer)
    assert checkpoint.size >= SIZE
    assert checkpoint.root_hash == root_from_leaf_hashes(leaves(checkpoint.size))


def test_every_tile_matches_the_tree_recomputed_from_entries(
    client: httpx.Client, signer: NoteSigner
) -> None:
    size = current(client, signer).size
    hashes = leaves(size)
    for path in tile_paths_between(0, size):
        response = client.get(f"{PREFIX}/{path.to_path()}")
        assert response.status_code == 200, path.to_path()
        assert response.headers["content-type"] == "application/octet-stream"
        full = path.width == 256
        assert ("immutable" in response.headers["cache-control"]) == full
        start = path.index * 256
        if path.level == "entries":
            assert decode_entry_bundle(response.content) == [
                entry(i) for i in range(start, start + path.width)
            ]
        elif path.level == 0:
            assert response.content == b"".join(hashes[start : start + path.width])
        else:
            assert path.level == 1
            expected = [
                root_from_leaf_hashes(hashes[i * 256 : (i + 1) * 256])
                for i in range(start, start + path.width)
            ]
            assert response.content == b"".join(expected)


def test_a_narrower_partial_tile_is_a_prefix_of_the_wider_one(client: httpx.Client) -> None:
    wide = client.get(f"{PREFIX}/tile/0/002.p/{SIZE - 512}").content
    narrow = client.get(f"{PREFIX}/tile/0/002.p/10").content
    assert narrow == wide[: 10 * 32]


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/003",
        "tile/0/002",
        "tile/0/002.p/255",
        "tile/1/000",
        "tile/2/000.p/1",
        "tile/entries/003.p/1",
        "tile/0/x001/000",
    ],
)
def test_tiles_beyond_the_tree_are_not_found(client: httpx.Client, path: str) -> None:
    assert_problem(client.get(f"{PREFIX}/{path}"), 404)


@pytest.mark.parametrize(
    "path",
    [
        "tile/0/1",
        "tile/0/0000",
        "tile/00/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/01",
        "tile/0/001/000",
        "tile/0/x1/000",
        "tile/a/000",
        "tile/entries",
        "tile/0/000.p/",
        "tile/0/000.q/5",
        "tile//000",
    ],
)
def test_invalid_tile_paths_are_bad_requests(client: httpx.Client, path: str) -> None:
    assert_problem(client.get(f"{PREFIX}/{path}"), 400)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rest=st.text(alphabet="0123456789x./pentris-", max_size=24))
def test_the_tile_router_answers_every_path_with_the_parser_verdict(
    client: httpx.Client, rest: str
) -> None:
    response = client.get(f"{PREFIX}/tile/{rest}")
    try:
        TilePath.from_path("tile/" + rest)
    except FormatError:
        # Paths the HTTP layer normalises (e.g. "a/../b") may route elsewhere: never a 2xx/5xx.
        assert 400 <= response.status_code < 500
    else:
        assert response.status_code in (200, 404)


def test_inclusion_proofs_by_index_and_hash_verify(
    client: httpx.Client, signer: NoteSigner
) -> None:
    cp = current(client, signer)
    for index in (0, 1, 255, 256, SIZE - 1):
        by_index = client.get(f"{PREFIX}/proof/inclusion", params={"index": index, "size": cp.size})
        assert by_index.status_code == 200
        body = by_index.json()
        proof = [base64.b64decode(h) for h in body["proof"]]
        verify_inclusion(leaf_hash(entry(index)), index, cp.size, proof, cp.root_hash)
        by_hash = client.get(
            f"{PREFIX}/proof/inclusion",
            params={"hash": leaf_hash(entry(index)).hex(), "size": cp.size},
        )
        assert by_hash.json() == body


def test_consistency_proofs_verify(client: httpx.Client, signer: NoteSigner) -> None:
    cp = current(client, signer)
    hashes = leaves(cp.size)
    for old in (1, 7, 256, 300, cp.size):
        response = client.get(f"{PREFIX}/proof/consistency", params={"old": old, "new": cp.size})
        proof = [base64.b64decode(h) for h in response.json()["proof"]]
        verify_consistency(old, cp.size, proof, root_from_leaf_hashes(hashes[:old]), cp.root_hash)


@pytest.mark.parametrize(
    ("endpoint", "params", "status"),
    [
        ("inclusion", {"index": 5}, 400),
        ("inclusion", {"index": 10, "size": 10}, 400),
        ("inclusion", {"index": -1, "size": 10}, 400),
        ("inclusion", {"index": "1e3", "size": 10}, 400),
        ("inclusion", {"index": 0, "size": 10**30}, 400),
        ("inclusion", {"index": 0, "size": 2**62}, 404),
        ("inclusion", {"hash": "zz", "size": 10}, 400),
        ("inclusion", {"hash": "00" * 32, "size": 10}, 404),
        ("inclusion", {"hash": "00" * 32, "index": 1, "size": 10}, 400),
        ("consistency", {"old": 10, "new": 5}, 400),
        ("consistency", {"old": 1, "new": 2**62}, 404),
        ("consistency", {"old": "01", "new": 5}, 400),
    ],
)
def test_bad_proof_parameters_get_problem_json(
    client: httpx.Client, endpoint: str, params: dict[str, object], status: int
) -> None:
    assert_problem(client.get(f"{PREFIX}/proof/{endpoint}", params=params), status)


def test_post_add_answers_the_durable_index(client: httpx.Client, log: Log) -> None:
    response = client.post(f"{PREFIX}/add", content=b'{"type":"posted"}')
    assert response.status_code == 200
    index = response.json()["index"]
    assert log.entries(index, index + 1) == [b'{"type":"posted"}']


def test_oversize_entries_are_refused_with_413(client: httpx.Client, log: Log) -> None:
    before = log.size
    response = client.post(f"{PREFIX}/add", content=b"x" * (MAX_ENTRY_SIZE + 1))
    assert_problem(response, 413)
    assert log.size == before


def test_add_is_absent_unless_allowed(log: Log) -> None:
    app = FastAPI()
    app.include_router(create_log_router(log), prefix="/ro")
    with serve(app) as url, httpx.Client(base_url=url) as c:
        assert c.post("/ro/add", content=b"x").status_code in (404, 405)
        assert c.get("/ro/checkpoint").status_code == 200


def test_read_only_logs_serve_the_same_bytes(
    log: Log, client: httpx.Client, tmp_path: Path
) -> None:
    ro = Log.open_readonly(log.storage.url)
    try:
        assert ro.checkpoint() == client.get(f"{PREFIX}/checkpoint").content
        assert ro.read_tile(TilePath(0, 0, 256)) == client.get(f"{PREFIX}/tile/0/000").content
    finally:
        ro.close()


def test_the_standalone_app_speaks_problem_json_and_gzip(log: Log) -> None:
    app = create_log_app(log, allow_add=False, prefix="/log")
    with serve(app) as url, httpx.Client(base_url=url) as http:
        assert_problem(http.get("/log/nothing-here"), 404)
        assert_problem(http.get("/log/add"), 404)
        bundle = http.get("/log/tile/entries/000", headers={"Accept-Encoding": "gzip"})
        assert bundle.headers["content-encoding"] == "gzip"
        assert decode_entry_bundle(bundle.content) == [entry(i) for i in range(256)]


def test_a_failing_database_is_a_503(tmp_path: Path, signer: NoteSigner) -> None:
    with Log.open(f"sqlite:///{tmp_path}/broken.db", signer) as broken:
        broken.add(b"x")
        with broken.storage.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE tlog_tiles")
        app = FastAPI()
        app.include_router(create_log_router(broken), prefix="/b")
        with serve(app) as url, httpx.Client(base_url=url) as http:
            assert_problem(http.get("/b/tile/0/000.p/1"), 503)


def test_the_largest_entry_fits_its_entry_bundle(client: httpx.Client, log: Log) -> None:
    biggest = b"y" * MAX_ENTRY_SIZE
    index = client.post(f"{PREFIX}/add", content=biggest).json()["index"]
    size = log.published_size
    bundle = TilePath("entries", index // 256, min(256, size - index // 256 * 256))
    entries = decode_entry_bundle(client.get(f"{PREFIX}/{bundle.to_path()}").content)
    assert entries[index % 256] == biggest
