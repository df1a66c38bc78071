"""The blob store: content-addressed, streamed, written once, verified on read."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core import Digest
from veriml.core.digest import CHUNK_SIZE
from veriml.core.errors import DigestMismatchError, InvalidModelError, StorageError
from veriml.models import BlobRef, BlobStore


def memory_store(**kwargs: int) -> BlobStore:
    return BlobStore(f"memory://veriml-test-{uuid.uuid4().hex}", **kwargs)


def blob_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "sha256").rglob("*") if p.is_file())


def test_identical_files_are_stored_once(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "store"))
    (tmp_path / "a.bin").write_bytes(b"same bytes")
    (tmp_path / "b.bin").write_bytes(b"same bytes")
    da = store.put_file(tmp_path / "a.bin")
    db = store.put_file(tmp_path / "b.bin")
    assert da == db == Digest.of(b"same bytes")
    assert blob_files(tmp_path / "store") == [tmp_path / "store" / "sha256" / da.hex[:2] / da.hex]
    assert not list((tmp_path / "store" / "incoming").iterdir())


def test_file_urls_and_plain_paths_name_the_same_store(tmp_path: Path) -> None:
    digest = BlobStore(f"file://{tmp_path}").put_bytes(b"x")
    assert BlobStore(str(tmp_path)).cat(digest) == b"x"


class CountingStream(io.BytesIO):
    """Records the largest single read, to show the store never reads a stream whole."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None
        assert size > 0, "the store asked for the whole stream at once"
        self.largest = max(self.largest, size)
        return super().read(size)


def test_streams_are_hashed_chunk_by_chunk() -> None:
    store = memory_store()
    stream = CountingStream(b"\x07" * (3 * CHUNK_SIZE + 5))
    ref = store.put_stream(stream)
    assert ref == BlobRef(Digest.of(b"\x07" * (3 * CHUNK_SIZE + 5)), 3 * CHUNK_SIZE + 5)
    assert stream.largest <= CHUNK_SIZE


class FailingStream(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        if self.tell() >= 10:
            raise OSError("connection reset")
        return super().read(10)


def test_a_failed_upload_leaves_no_blob_and_no_temporary(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    with pytest.raises(OSError, match="connection reset"):
        store.put_stream(FailingStream(b"a" * 100))
    assert not (tmp_path / "sha256").exists()
    assert not list((tmp_path / "incoming").iterdir())


def test_size_limits_apply_while_streaming_and_from_stat(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "s"), max_size=10)
    with pytest.raises(StorageError, match="too large"):
        store.put_stream(io.BytesIO(b"x" * 11))
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(StorageError, match="too large"):
        store.put_file(tmp_path / "big")
    assert not (tmp_path / "s" / "sha256").exists()


def test_a_corrupted_blob_fails_on_read(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path))
    digest = store.put_bytes(b"original")
    Path(store.path(digest)).write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError) as info:
        store.cat(digest)
    assert info.value.expected == digest
    with store.open(digest) as reader:
        assert reader.read(3) == b"tam"
        with pytest.raises(DigestMismatchError):
            reader.read()


def test_unknown_digests_are_a_storage_error() -> None:
    store = memory_store()
    missing = Digest.of(b"never stored")
    assert not store.has(missing)
    with pytest.raises(StorageError, match="no such blob"):
        store.open(missing)


def test_folders_round_trip_through_a_manifest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "model.onnx").write_bytes(b"graph")
    (src / "sub" / "weights.bin").write_bytes(b"\x00" * 1000)
    store = memory_store()
    manifest = store.put_folder(src)
    assert manifest == {
        "model.onnx": BlobRef(Digest.of(b"graph"), 5),
        "sub/weights.bin": BlobRef(Digest.of(b"\x00" * 1000), 1000),
    }
    store.get_folder(manifest, tmp_path / "dst")
    assert (tmp_path / "dst" / "sub" / "weights.bin").read_bytes() == b"\x00" * 1000


@pytest.mark.parametrize("name", ["../escape", "/etc/passwd", "a/../../b", "a\\..\\b", ""])
def test_a_manifest_cannot_write_outside_the_destination(tmp_path: Path, name: str) -> None:
    store = memory_store()
    ref = BlobRef(store.put_bytes(b"payload"), 7)
    with pytest.raises(InvalidModelError, match="escapes"):
        store.get_folder({name: ref}, tmp_path / "dst")
    assert not (tmp_path / "escape").exists()


def test_put_folder_refuses_symlinks(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "link").symlink_to("/etc/hostname")
    with pytest.raises(InvalidModelError, match="symlink"):
        memory_store().put_folder(tmp_path / "m")


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=2000), min_size=1, max_size=5))
def test_what_is_put_is_what_is_read_under_its_sha256(blobs: list[bytes]) -> None:
    store = memory_store()
    digests = [store.put_bytes(b) for b in blobs]
    for blob, digest in zip(blobs, digests, strict=True):
        assert digest == Digest.of(blob)
        assert store.cat(digest) == blob
        assert store.size(digest) == len(blob)


def test_a_corrupted_blob_is_not_left_in_a_restored_folder(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path / "store"))
    digest = store.put_bytes(b"original")
    Path(store.path(digest)).write_bytes(b"tampered")
    with pytest.raises(DigestMismatchError):
        store.get_folder({"model.onnx": BlobRef(digest, 8)}, tmp_path / "dst")
    assert not (tmp_path / "dst" / "model.onnx").exists()
