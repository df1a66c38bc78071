"""The model digest is exactly model_signing's OMS root digest of the folder."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_signing import hashing as ms_hashing
from model_signing import signing as ms_signing

from veriml.core import Digest
from veriml.core.errors import InvalidModelError
from veriml.models import model_digest
from veriml.models.digest import files_digest, hash_manifest, manifest_entries
from veriml.models.signing import signed_digest


def write_files(root: Path, files: dict[str, bytes], order: list[str]) -> None:
    for name in order:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(files[name])


def test_digest_is_the_subject_digest_model_signing_signs(tmp_path: Path, ec_key: Path) -> None:
    model = tmp_path / "m"
    write_files(model, {"a.bin": b"a" * 5000, "sub/b.txt": b"b"}, ["a.bin", "sub/b.txt"])
    sig = model / "model.sig"
    ms_signing.Config().use_elliptic_key_signer(private_key=ec_key).set_hashing_config(
        ms_hashing.Config().set_ignored_paths(paths=["model.sig"])
    ).sign(model, sig)
    bundle = json.loads(sig.read_text())
    assert "dsseEnvelope" in bundle
    assert model_digest(model) == signed_digest(sig)


def test_digest_of_one_file_is_sha256_of_its_sha256(tmp_path: Path) -> None:
    # The OMS root is SHA-256 over the concatenated per-file digests, sorted by path.
    (tmp_path / "only.bin").write_bytes(b"hello")
    assert model_digest(tmp_path) == Digest.of(Digest.of(b"hello").raw)


def test_signature_file_and_git_metadata_do_not_change_the_digest(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    before = model_digest(tmp_path)
    (tmp_path / "model.sig").write_text("{}")
    (tmp_path / ".gitattributes").write_text("*.bin lfs")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    assert model_digest(tmp_path) == before


def test_ignored_paths_are_left_out_and_outside_paths_are_irrelevant(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    before = model_digest(tmp_path)
    (tmp_path / "notes.txt").write_text("scratch")
    assert model_digest(tmp_path, ignore=["notes.txt"]) == before
    assert model_digest(tmp_path, ignore=[tmp_path / "notes.txt"]) == before
    assert model_digest(tmp_path, ignore=["/etc/passwd", "../x"]) != before


def test_any_changed_added_or_reordered_file_changes_the_digest(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"\x00" * 100)
    (tmp_path / "b.bin").write_bytes(b"b")
    before = model_digest(tmp_path)
    (tmp_path / "a.bin").write_bytes(b"\x00" * 99 + b"\x01")
    changed = model_digest(tmp_path)
    (tmp_path / "c.bin").write_bytes(b"")
    added = model_digest(tmp_path)
    (tmp_path / "a.bin").rename(tmp_path / "d.bin")  # now sorts after b.bin and c.bin
    reordered = model_digest(tmp_path)
    assert len({before, changed, added, reordered}) == 4


def test_root_digest_does_not_bind_file_names_only_their_order(tmp_path: Path) -> None:
    # A property of the OMS root digest (SHA-256 over the per-file digests in path order):
    # renaming a file without changing the order keeps the digest. Signatures bind names
    # (the signed manifest lists them); see test_model_signing for verify catching renames.
    (tmp_path / "w.bin").write_bytes(b"weights")
    before = model_digest(tmp_path)
    (tmp_path / "w.bin").rename(tmp_path / "v.bin")
    assert model_digest(tmp_path) == before


def test_files_digest_binds_names_where_the_root_digest_does_not(tmp_path: Path) -> None:
    # {model.onnx: X, x.onnx: Y} and {a.onnx: X, model.onnx: Y} share a root digest but run
    # different graphs; the layout digest that receipts carry tells them apart.
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (first / "model.onnx").write_bytes(b"X")
    (first / "x.onnx").write_bytes(b"Y")
    (second / "a.onnx").write_bytes(b"X")
    (second / "model.onnx").write_bytes(b"Y")
    assert model_digest(first) == model_digest(second)
    layouts = [files_digest(manifest_entries(hash_manifest(d))) for d in (first, second)]
    assert layouts[0] != layouts[1]


def test_a_symlink_in_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    os.symlink("/etc/hostname", tmp_path / "link")
    with pytest.raises(InvalidModelError, match="symlink"):
        model_digest(tmp_path)


def test_a_file_is_not_a_model_folder(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"graph")
    with pytest.raises(InvalidModelError, match="folder"):
        model_digest(tmp_path / "model.onnx")


names = st.lists(
    st.sampled_from(["a", "b", "c.bin", "d/e", "d/f.onnx", "g/h/i", "z"]),
    min_size=1,
    max_size=7,
    unique=True,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    names=names,
    data=st.data(),
    workers=st.sampled_from([1, 2, 4]),
    chunk=st.sampled_from([1, 7, 4096, 8 << 20]),
)
def test_digest_does_not_depend_on_worker_count_chunk_size_or_file_order(
    names: list[str], data: st.DataObject, workers: int, chunk: int
) -> None:
    contents = {n: data.draw(st.binary(max_size=3000), label=n) for n in names}
    shuffled = data.draw(st.permutations(names), label="order")
    with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
        write_files(Path(a), contents, names)
        write_files(Path(b), contents, list(shuffled))
        reference = model_digest(Path(a), max_workers=1)
        assert model_digest(Path(b), max_workers=workers, chunk_size=chunk) == reference
        removed = Path(b) / names[0].split("/")[0]
        shutil.rmtree(removed) if removed.is_dir() else removed.unlink()
        assert model_digest(Path(b)) != reference


def test_progress_counts_every_hashed_byte_in_order_against_the_total(tmp_path: Path) -> None:
    """``progress`` sees the hashed bytes grow to the total of the files the digest covers
    (not the signature, git metadata or ignored paths); the digest is unchanged."""
    files = {"a.bin": os.urandom(3 << 20), "sub/b.bin": b"b" * 1000, "c": b""}
    write_files(tmp_path, files, sorted(files))
    (tmp_path / "model.sig").write_bytes(b"x" * 500)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_bytes(b"y" * 70)
    (tmp_path / "skip.txt").write_bytes(b"z" * 90)
    calls: list[tuple[int, int | None]] = []
    value = model_digest(tmp_path, ignore=["skip.txt"], progress=lambda *c: calls.append(c))
    assert value == model_digest(tmp_path, ignore=["skip.txt"])
    total = sum(map(len, files.values()))
    assert calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert {t for _, t in calls} == {total}
