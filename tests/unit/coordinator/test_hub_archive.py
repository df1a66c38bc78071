"""Pure pieces of the hub: tar extraction round-trips any safe folder exactly and never writes
outside its destination; byte ranges agree with Python slicing (RFC 9110 §14.1.2)."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.coordinator.hub.archive import ArchiveLimits, extract_tar
from veriml.coordinator.hub.routes import RangeNotSatisfiableError, parse_range
from veriml.core.errors import FormatError, LimitExceededError

LIMITS = ArchiveLimits(max_bytes=1 << 20, max_files=100, max_depth=8)
_name = st.text(alphabet="abcdefgh0123456789_-.", min_size=1, max_size=8).filter(
    lambda n: n not in (".", "..")
)
_path = st.lists(_name, min_size=1, max_size=4).map(tuple)


def _extract(data: bytes, dest: Path, limits: ArchiveLimits = LIMITS) -> int:
    return extract_tar(io.BytesIO(data), dest, limits)


@settings(max_examples=40, deadline=None)
@given(files=st.dictionaries(_path, st.binary(max_size=600), min_size=1, max_size=8))
def test_any_safe_folder_round_trips_through_extraction(
    files: dict[tuple[str, ...], bytes],
) -> None:
    # A path may not be both a file and a folder.
    paths = sorted(files)
    files = {p: d for p, d in files.items() if not any(q[: len(p)] == p and q != p for q in paths)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        for parts, data in files.items():
            info = tarfile.TarInfo("/".join(parts))
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "out"
        dest.mkdir()
        assert _extract(buf.getvalue(), dest) == len(files)
        found = {p.relative_to(dest).parts: p.read_bytes() for p in dest.rglob("*") if p.is_file()}
        assert found == files


def test_a_duplicate_member_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as archive:
        for data in (b"first", b"second"):
            info = tarfile.TarInfo("model.onnx")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    with pytest.raises(FormatError, match="twice"):
        _extract(buf.getvalue(), tmp_path)


def test_a_compressed_archive_cannot_expand_past_the_limit(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as archive:
        info = tarfile.TarInfo("zeros")
        info.size = 4 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    assert len(buf.getvalue()) < LIMITS.max_bytes  # small on the wire
    with pytest.raises(LimitExceededError):
        _extract(buf.getvalue(), tmp_path)


def test_garbage_is_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(FormatError):
        _extract(b"this is not a tar archive" * 40, tmp_path)


@given(size=st.integers(0, 300), start=st.integers(0, 400), length=st.integers(0, 400))
def test_a_byte_range_is_the_slice_it_names(size: int, start: int, length: int) -> None:
    blob = bytes(range(256)) * 2
    blob = blob[:size]
    end = start + length
    if start >= size:
        with pytest.raises(RangeNotSatisfiableError):
            parse_range(f"bytes={start}-{end}", size)
        return
    first, last = parse_range(f"bytes={start}-{end}", size)
    assert blob[first : last + 1] == blob[start : end + 1]
    if length:
        first, last = parse_range(f"bytes=-{length}", size) if size else (0, -1)
        assert blob[first : last + 1] == blob[-length:]


@pytest.mark.parametrize(
    "header", ["bytes=0-1,3-4", "items=0-1", "bytes=5-2", "bytes=x-1", "bytes"]
)
def test_ranges_the_hub_does_not_serve_mean_the_whole_blob(header: str) -> None:
    assert parse_range(header, 100) is None


class _Counting(io.BytesIO):
    """The archive's bytes, counting how many the extractor read."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        self.read_bytes += len(data)
        return data


@pytest.mark.parametrize(
    "kind",
    [tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE],
)
def test_an_oversized_extended_header_is_refused_before_it_is_read(
    tmp_path: Path, kind: bytes
) -> None:
    info = tarfile.TarInfo("././@LongLink")
    info.type = kind
    info.size = 16 << 20
    source = _Counting(info.tobuf(format=tarfile.GNU_FORMAT) + b"a" * (16 << 20))
    with pytest.raises(LimitExceededError, match="extended header") as refused:
        extract_tar(source, tmp_path, LIMITS)
    assert refused.value.evidence["size"] == 16 << 20
    assert source.read_bytes < 1 << 20  # the header's 16 MB were never read


def test_an_extended_header_within_the_bound_is_read(tmp_path: Path) -> None:
    name = "/".join(["n" * 250] * 4)  # GNU writes this 1 KB name in a long-name header
    info = tarfile.TarInfo(name)
    info.size = 2
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b"ok"))
    assert extract_tar(io.BytesIO(buf.getvalue()), tmp_path, LIMITS) == 1
    assert (tmp_path / name).read_bytes() == b"ok"


def test_a_name_the_file_system_cannot_hold_is_refused_as_the_uploaders_error(
    tmp_path: Path,
) -> None:
    info = tarfile.TarInfo("n" * 256)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as archive:
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(FormatError, match="too long"):
        extract_tar(io.BytesIO(buf.getvalue()), tmp_path, LIMITS)


def test_a_gnu_sparse_header_is_refused_before_its_extension_blocks(tmp_path: Path) -> None:
    info = tarfile.TarInfo("sparse")
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    with pytest.raises(FormatError, match="sparse"):
        extract_tar(io.BytesIO(bytes(header) + b"\0" * 4096), tmp_path, LIMITS)


@pytest.mark.parametrize("mode", ["w:gz", "w:bz2", "w:xz"])
def test_an_archive_that_expands_beyond_the_ratio_is_refused(tmp_path: Path, mode: str) -> None:
    info = tarfile.TarInfo("zeros")
    info.size = 4 << 20
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as archive:
        archive.addfile(info, io.BytesIO(b"\0" * info.size))
    limits = ArchiveLimits(
        max_bytes=64 << 20, max_files=10, max_depth=4, max_ratio=20, ratio_floor=1 << 20
    )
    with pytest.raises(LimitExceededError, match="compression ratio"):
        extract_tar(io.BytesIO(buf.getvalue()), tmp_path, limits)
    # The same archive within a generous ratio is extracted whole.
    generous = ArchiveLimits(max_bytes=64 << 20, max_files=10, max_depth=4)
    (tmp_path / "ok").mkdir()
    assert extract_tar(io.BytesIO(buf.getvalue()), tmp_path / "ok", generous) == 1
