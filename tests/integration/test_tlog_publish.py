"""Static publishing: the tree written to an fsspec URL is byte for byte what the server serves,
grows incrementally, and is never written over another log's tree."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import httpx
import pytest

from _servers import serve
from _vectors import GO_NOTES, go_tree_files
from veriml.core.errors import LogInconsistencyError
from veriml.core.keys import generate_key
from veriml.tlog.checkpoint import open_checkpoint
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.merkle import leaf_hash, verify_inclusion
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.publish import publish_log, tile_paths_between
from veriml.tlog.server import create_log_app
from veriml.tlog.tiles import TileHashReader, TilePath, tiles_for_size

ORIGIN = "example.com/publish-test"


def entry(i: int) -> bytes:
    return b'{"type":"pub","n":%d}' % i


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


@pytest.fixture
def log(tmp_path: Path, signer: NoteSigner) -> Iterator[Log]:
    opts = LogOptions(batch_interval=0.0, batch_size=4096)
    with Log.open(f"sqlite:///{tmp_path}/log.db", signer, options=opts) as opened:
        yield opened


@pytest.fixture(params=["memory", "file"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "file":
        yield f"file://{tmp_path}/published"
        return
    url = f"memory://veriml-publish-{uuid.uuid4().hex}"
    yield url
    fs, root = fsspec.core.url_to_fs(url)
    fs.rm(root, recursive=True)


def published_files(url: str) -> dict[str, bytes]:
    fs, root = fsspec.core.url_to_fs(url)
    root = root.rstrip("/")
    return {
        path[len(root) + 1 :]: fs.cat_file(path)
        for path in fs.find(root)
        if not path.endswith(".tmp")
    }


def assert_same_as_server(log: Log, url: str) -> dict[str, bytes]:
    files = published_files(url)
    with serve(create_log_app(log, allow_add=False)) as base, httpx.Client(base_url=base) as http:
        for rel, data in files.items():
            response = http.get("/" + rel)
            assert response.status_code == 200, rel
            assert response.content == data, rel
    return files


def test_the_published_tree_is_what_the_server_serves(log: Log, target: str) -> None:
    log.add_many([entry(i) for i in range(600)])
    report = publish_log(log, target)
    assert (report.old_size, report.size) == (0, 600)
    files = assert_same_as_server(log, target)
    expected = {p.to_path() for p in tile_paths_between(0, 600)} | {"checkpoint"}
    assert set(files) == expected
    assert {p.to_path() for p in tiles_for_size(600)} <= set(files)


def test_publishing_again_writes_only_what_changed(log: Log, target: str) -> None:
    log.add_many([entry(i) for i in range(600)])
    publish_log(log, target)
    again = publish_log(log, target)
    # Nothing new: the partial tiles are rewritten, the full ones are not.
    assert again.old_size == again.size == 600
    assert again.files == len(tile_paths_between(600, 600)) + 1

    log.add_many([entry(i) for i in range(600, 1000)])
    report = publish_log(log, target)
    assert (report.old_size, report.size) == (600, 1000)
    written = {p.to_path() for p in tile_paths_between(600, 1000)}
    assert "tile/0/000" not in written  # full at 600: never rewritten
    files = assert_same_as_server(log, target)
    # The partial tiles of the earlier size stay, for clients holding its checkpoint.
    assert "tile/0/002.p/88" in files
    assert "tile/0/003.p/232" in files


def test_a_client_can_verify_proofs_from_the_static_files(
    log: Log, target: str, signer: NoteSigner
) -> None:
    log.add_many([entry(i) for i in range(700)])
    publish_log(log, target)
    files = published_files(target)
    checkpoint, _ = open_checkpoint(
        files["checkpoint"], NoteVerifier.from_vkey(signer.vkey), origin=ORIGIN
    )
    reader = TileHashReader(
        checkpoint.size, checkpoint.root_hash, lambda p: files[TilePath.to_path(p)]
    )
    for index in (0, 299, 699):
        proof = reader.inclusion_proof(index)
        verify_inclusion(leaf_hash(entry(index)), index, 700, proof, checkpoint.root_hash)


def test_another_logs_tree_is_never_overwritten(log: Log, target: str, tmp_path: Path) -> None:
    other_signer = NoteSigner(ORIGIN, generate_key())
    with Log.open(
        f"sqlite:///{tmp_path}/other.db", other_signer, options=LogOptions(batch_interval=0.0)
    ) as other:
        other.add_many([b"fork-%d" % i for i in range(10)])
        publish_log(other, target)
    log.add_many([entry(i) for i in range(20)])
    before = published_files(target)
    with pytest.raises(LogInconsistencyError):
        publish_log(log, target)
    assert published_files(target) == before


def test_a_log_of_the_go_vector_entries_publishes_the_go_tree_byte_for_byte(tmp_path: Path) -> None:
    # tests/vectors/go-tlog-tiles: 1000 entries "entry i", written by Go's sumdb/tlog and
    # signed with the example.com/log key of tests/vectors/go-sumdb-note/notes.json.
    keys = json.loads(GO_NOTES.read_text())["signer_keys"]
    signer = NoteSigner.from_skey(keys["example.com/log"])
    expected = go_tree_files()
    opts = LogOptions(batch_size=1000, batch_interval=1.0)
    with Log.open(f"sqlite:///{tmp_path}/go.db", signer, options=opts) as log:
        log.add_many([b"entry %d" % i for i in range(1000)])
        assert log.size == 1000
        target = f"file://{tmp_path}/published"
        publish_log(log, target)
        assert published_files(target) == expected
        with serve(create_log_app(log)) as base, httpx.Client(base_url=base) as http:
            for rel, data in expected.items():
                assert http.get("/" + rel).content == data, rel
