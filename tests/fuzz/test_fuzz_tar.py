"""Hub uploads: a tar archive (plain, gzip, bzip2 or xz) extracts within its limits or is a
FormatError (LimitExceededError among them), and whatever it extracts stays inside the folder."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from _fuzzing import attempt, fuzz_settings, mutate, mutated_bytes
from _fuzzing import byte_edits as edits
from hypothesis import example, given
from hypothesis import strategies as st

from veriml.coordinator.hub.archive import ArchiveLimits, extract_tar
from veriml.core.errors import FormatError
from veriml.models.examples import build_mlp

LIMITS = ArchiveLimits(
    max_bytes=256 << 10, max_files=20, max_depth=6, max_header_bytes=4096, ratio_floor=64 << 10
)
CODECS: dict[str, Callable[[bytes], bytes]] = {
    "plain": lambda b: b,
    "gz": lambda b: gzip.compress(b, mtime=0),
    "bz2": bz2.compress,
    "xz": lzma.compress,
}
MEMBER_TYPES = [
    tarfile.REGTYPE,
    tarfile.AREGTYPE,
    tarfile.DIRTYPE,
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.FIFOTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    b"Z",
]
NAMES = [
    "model.onnx",
    "README.md",
    "sub/config.json",
    "sub",
    "./a",
    "a/../../b",
    "/etc/x",
    "a\\b",
    "a//b",
    ".",
    "",
    "x" * 300,
    "d/" * 10 + "f",
    "model.onnx/inner",
]
PAX_KEYS = ["path", "linkpath", "size", "uid", "mtime", "GNU.sparse.map", "GNU.sparse.size"]
PAX_KEYS += ["GNU.sparse.major", "GNU.sparse.minor", "GNU.sparse.name", "hdrcharset", "comment"]


def _tar(members: list[tuple[str, bytes, bytes]], fmt: int, pax: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, pax_headers=pax or None) as tar:
        for name, kind, data in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.mtime = 0
            info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            info.linkname = "model.onnx" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


VALID = _tar(
    [
        ("model.onnx", tarfile.REGTYPE, build_mlp((4, 8, 3)).SerializeToString()),
        ("README.md", tarfile.REGTYPE, b"---\nname: mlp\n---\n"),
        ("sub", tarfile.DIRTYPE, b""),
        ("sub/config.json", tarfile.REGTYPE, b"{}"),
    ],
    tarfile.PAX_FORMAT,
    {},
)
LONG = _tar([("d/" * 60 + "weights.bin", tarfile.REGTYPE, b"\0" * 100)], tarfile.GNU_FORMAT, {})
PAX = _tar([("a", tarfile.REGTYPE, b"1")], tarfile.PAX_FORMAT, {"comment": "x" * 100})
PLAIN = [VALID, LONG, PAX]
COMPRESSED = [CODECS[c](p) for c in ("gz", "bz2", "xz") for p in PLAIN[:2]]


# Built once: a strategy built inside the composite is cached by Hypothesis per example.
MEMBER_DATA = st.binary(max_size=64) | st.just(b"\0" * 300_000)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """An archive written member by member: names, types, pax headers drawn from the edges."""
    members = [
        (
            draw(st.sampled_from(NAMES) | st.text(max_size=12)),
            draw(st.sampled_from(MEMBER_TYPES)),
            draw(MEMBER_DATA),
        )
        for _ in range(draw(st.integers(0, 5)))
    ]
    pax = draw(st.dictionaries(st.sampled_from(PAX_KEYS), st.text(max_size=20), max_size=3))
    fmt = draw(st.sampled_from([tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]))
    try:
        raw = _tar(members, fmt, pax)
    except (ValueError, UnicodeError, tarfile.TarError):  # a member tarfile cannot write
        raw = b""
    return CODECS[draw(st.sampled_from(sorted(CODECS)))](raw)


@st.composite
def mutated_then_compressed(draw: st.DrawFn) -> bytes:
    """A plain archive edited, then compressed: the edits reach tarfile's header parser."""
    plain = mutate(draw(st.sampled_from(PLAIN)), draw(edits([b"ustar\x00", b"0000777\x00"])))
    return CODECS[draw(st.sampled_from(sorted(CODECS)))](plain)


archives = st.one_of(
    mutated_then_compressed(),
    mutated_bytes(COMPRESSED + PLAIN),
    structured(),
    st.binary(max_size=1024),
)
_WORK = Path(tempfile.mkdtemp(prefix="veriml-fuzz-tar-"))


def _extracted(dest: Path) -> tuple[int, int]:
    files = size = 0
    for root, dirs, names in os.walk(dest):
        for name in dirs + names:
            path = Path(root) / name
            assert not path.is_symlink()
            assert path.resolve().is_relative_to(dest.resolve())
        for name in names:
            files += 1
            size += (Path(root) / name).stat().st_size
    return files, size


@fuzz_settings(short=100)
@given(archives)
# Found by this target: a file "a", then a folder "a/b", made NotADirectoryError, reported as a
# StorageError (the hub's 503) rather than the FormatError of a malformed upload.
@example(
    _tar([("a", tarfile.REGTYPE, b"1"), ("a/b", tarfile.DIRTYPE, b"")], tarfile.PAX_FORMAT, {})
)
# Found by this target: tarfile reads pax GNU.sparse.* values with a bare int() (ValueError).
@example(_tar([("a", tarfile.REGTYPE, b"1")], tarfile.PAX_FORMAT, {"GNU.sparse.size": "x"}))
@example(_tar([("a", tarfile.REGTYPE, b"1")], tarfile.PAX_FORMAT, {"GNU.sparse.map": "1,x"}))
# Found by this target: a path that is not UTF-8 (surrogates in tarfile) raised on encode().
@example(_tar([("a\udcff", tarfile.REGTYPE, b"1")], tarfile.GNU_FORMAT, {}))
# Found by this target: tarfile read a gzip header cut short with ord(b"") (TypeError).
@example(b"\x1f\x8b\x08")
@example(b"\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\x00")
def test_an_upload_extracts_inside_its_limits_or_is_a_format_error(data: bytes) -> None:
    dest = Path(tempfile.mkdtemp(dir=_WORK))
    try:
        count, _ = attempt(
            lambda: extract_tar(io.BytesIO(data), dest, LIMITS),
            allowed=(FormatError,),
            size=len(data),
        )
        if count is not None:
            files, size = _extracted(dest)
            assert files == count
            assert size <= LIMITS.max_bytes
    finally:
        shutil.rmtree(dest)
