"""The publish archive is a standard tar stream of exactly the folder's files, made lazily."""

from __future__ import annotations

import io
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.client._publish import model_files, tar_stream
from veriml.core.errors import InvalidModelError

names = st.text("abcdefghij_-.", min_size=1, max_size=12).filter(lambda n: n not in (".", ".."))
folders = st.dictionaries(
    st.lists(names, min_size=1, max_size=3).map(lambda parts: "/".join(parts)),
    st.binary(max_size=3000),
    min_size=1,
    max_size=6,
)


def _write(root: Path, files: dict[str, bytes]) -> dict[str, bytes]:
    written: dict[str, bytes] = {}
    for name, data in files.items():
        path = root / name
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        except (IsADirectoryError, FileExistsError, NotADirectoryError):
            continue  # "a" and "a/b" cannot both be files
        written[name] = data
    return {n: d for n, d in written.items() if (root / n).is_file()}


@settings(max_examples=40, deadline=None)
@given(files=folders, chunk=st.integers(1, 5000))
def test_the_tar_stream_holds_exactly_the_folders_files(
    files: dict[str, bytes], chunk: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        expected = _write(root, files)
        data = b"".join(tar_stream(root, chunk=chunk))
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            got = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]
        assert got == expected
        assert len(data) % tarfile.BLOCKSIZE == 0


def test_the_stream_yields_bounded_chunks_for_a_large_file(tmp_path: Path) -> None:
    (tmp_path / "big.bin").write_bytes(b"\1" * (3 << 20))
    sizes = [len(c) for c in tar_stream(tmp_path, chunk=1 << 20)]
    assert max(sizes) <= 1 << 20
    assert sum(sizes) > 3 << 20


def test_a_symlink_in_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "link").symlink_to(tmp_path / "a")
    with pytest.raises(InvalidModelError):
        model_files(tmp_path)
