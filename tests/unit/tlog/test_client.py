"""The read client computes proofs from tiles it has authenticated, never trusting the server,
and writes tlog-proof files that verify offline under a log key and witness policy."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from _servers import serve
from veriml.core.errors import (
    FormatError,
    NotFoundError,
    RootMismatchError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import generate_key
from veriml.tlog.audit import audit
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.client import LogClient, verify_checkpoint_note
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes, verify_consistency
from veriml.tlog.note import Note, NoteSigner, NoteVerifier
from veriml.tlog.proof import TlogProof, verify_tlog_proof
from veriml.tlog.tiles import build_tiles

GO_VKEY = "example.com/log+9d2609c6+AbHE3xwXzOkKA81MBX/HTU4u4k3f4qjJxf2NCkWh8ILz"
ORIGIN = "example.com/log"
SIGNER = NoteSigner(ORIGIN, generate_key())
VERIFIER = NoteVerifier.from_vkey(SIGNER.vkey)
WITNESSES = [CosignatureSigner(f"witness.example/w{i}", generate_key()) for i in range(3)]
WITNESS_KEYS = [CosignatureVerifier.from_vkey(w.vkey) for w in WITNESSES]


def go_tree(vectors_dir: Path) -> LogClient:
    return LogClient((vectors_dir / "go-tlog-tiles").as_uri(), NoteVerifier.from_vkey(GO_VKEY))


def publish(
    folder: Path, entries: list[bytes], *, size: int | None = None, cosigners: int = 0
) -> Path:
    """Write the tree of ``entries``; sign a checkpoint for ``size`` (default: all)."""
    for path, data in build_tiles(entries).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    size = len(entries) if size is None else size
    cp = Checkpoint(ORIGIN, size, root_from_leaf_hashes([leaf_hash(e) for e in entries[:size]]))
    note = Note.from_bytes(sign_checkpoint(cp, [SIGNER]))
    note = note.add_signatures(*(w.sign(cp, 1_700_000_000) for w in WITNESSES[:cosigners]))
    (folder / "checkpoint").write_bytes(note.to_bytes())
    return folder


@pytest.mark.parametrize("index", [0, 1, 255, 256, 511, 767, 768, 998, 999])
def test_go_tree_entries_come_with_verified_proofs(vectors_dir: Path, index: int) -> None:
    client = go_tree(vectors_dir)
    signed = client.checkpoint()
    entry, proof = client.entry(index, signed)
    assert entry == f"entry {index}".encode()
    assert client.inclusion_proof(index, signed) == proof


@pytest.mark.parametrize("old", [1, 2, 255, 256, 300, 768, 999, 1000])
def test_go_tree_consistency_proofs_verify(vectors_dir: Path, old: int) -> None:
    client = go_tree(vectors_dir)
    signed = client.checkpoint()
    proof = client.consistency_proof(old, signed)
    old_root = root_from_leaf_hashes([leaf_hash(f"entry {i}".encode()) for i in range(old)])
    cp = signed.checkpoint
    verify_consistency(old, cp.size, proof, old_root, cp.root_hash)
    client.verify_consistent(Checkpoint(ORIGIN, old, old_root), signed)
    with pytest.raises(VerificationError):
        client.verify_consistent(Checkpoint(ORIGIN, old, bytes(32)), signed)


def test_index_outside_the_tree_is_refused(vectors_dir: Path) -> None:
    client = go_tree(vectors_dir)
    with pytest.raises(FormatError):
        client.inclusion_proof(1000, client.checkpoint())


def test_tampered_tile_never_yields_a_proof(tmp_path: Path) -> None:
    log = publish(tmp_path, [b"e%d" % i for i in range(700)])
    data = bytearray((log / "tile/0/000").read_bytes())
    data[3] ^= 1
    (log / "tile/0/000").write_bytes(bytes(data))
    client = LogClient(str(log), VERIFIER)
    with pytest.raises(RootMismatchError):
        client.prove(0)


def test_tile_of_the_wrong_length_is_a_format_error(tmp_path: Path) -> None:
    log = publish(tmp_path, [b"e%d" % i for i in range(10)])
    (log / "tile/0/000.p/10").write_bytes(bytes(32 * 9))
    with pytest.raises(FormatError):
        LogClient(str(log), VERIFIER).prove(3)


def test_missing_partial_tile_falls_back_to_the_full_tile(tmp_path: Path) -> None:
    # The log grew to 512 and dropped the partial tiles of its size-300 checkpoint.
    all_entries = [b"e%d" % i for i in range(512)]
    log = publish(tmp_path / "log", all_entries, size=300)
    (log / "tile/1/000.p/1").write_bytes((log / "tile/1/000.p/2").read_bytes()[:32])
    assert not (log / "tile/0/001.p/44").exists()
    client = LogClient(str(log), VERIFIER)
    entry, _ = client.entry(299, client.checkpoint())
    assert entry == b"e299"


def test_missing_resource_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        LogClient(str(tmp_path), VERIFIER).checkpoint()


def test_proof_file_verifies_offline_with_its_entry(tmp_path: Path) -> None:
    entries = [b"entry %d" % i for i in range(300)]
    log = publish(tmp_path, entries, cosigners=2)
    client = LogClient(str(log), VERIFIER, witnesses=WITNESS_KEYS, quorum=2)
    data = client.prove(257).to_bytes()
    assert data.startswith(b"c2sp.org/tlog-proof@v1\n")
    index, cp = verify_tlog_proof(
        data, log=VERIFIER, witnesses=WITNESS_KEYS, quorum=2, entry=b"entry 257"
    )
    assert (index, cp.size) == (257, 300)
    # The entry travels in the proof's extra data, authenticated by the inclusion proof.
    assert verify_tlog_proof(data, log=VERIFIER)[0] == 257
    assert TlogProof.from_bytes(data).extra == b"entry 257"


def test_proof_file_is_rejected_under_the_wrong_policy(tmp_path: Path) -> None:
    log = publish(tmp_path, [b"entry %d" % i for i in range(20)], cosigners=1)
    data = LogClient(str(log), VERIFIER).prove(5).to_bytes()
    other_log = NoteVerifier.from_vkey(NoteSigner(ORIGIN, generate_key()).vkey)
    with pytest.raises(SignatureError):
        verify_tlog_proof(data, log=other_log)
    with pytest.raises(SignatureError):
        verify_tlog_proof(data, log=VERIFIER, witnesses=WITNESS_KEYS, quorum=2)
    with pytest.raises(RootMismatchError):
        verify_tlog_proof(data, log=VERIFIER, entry=b"entry 6")


def test_client_without_a_log_key_still_checks_proofs_against_the_root(tmp_path: Path) -> None:
    log = publish(tmp_path, [b"entry %d" % i for i in range(20)])
    client = LogClient(str(log), None)
    signed = client.checkpoint()
    assert not signed.signature_checked
    data = client.prove(7, signed).to_bytes()
    assert verify_tlog_proof(data, log=VERIFIER, entry=b"entry 7")[0] == 7


def test_checkpoint_policy_counts_only_trusted_valid_cosignatures(tmp_path: Path) -> None:
    note = (publish(tmp_path, [b"x"], cosigners=2) / "checkpoint").read_bytes()
    signed = verify_checkpoint_note(note, VERIFIER, witnesses=WITNESS_KEYS, quorum=2)
    assert signed.witnesses == ("witness.example/w0", "witness.example/w1")
    with pytest.raises(SignatureError):
        verify_checkpoint_note(note, VERIFIER, witnesses=WITNESS_KEYS[1:], quorum=2)
    with pytest.raises(SignatureError):
        verify_checkpoint_note(note, VERIFIER, witnesses=WITNESS_KEYS[:1], quorum=2)
    # A cosignature by a trusted witness that does not verify rejects the whole note.
    lines = note.decode().splitlines(keepends=True)
    bad = lines[-1][:-10] + ("A" if lines[-1][-10] != "A" else "B") + lines[-1][-9:]
    with pytest.raises(SignatureError):
        verify_checkpoint_note(
            "".join([*lines[:-1], bad]).encode(), VERIFIER, witnesses=WITNESS_KEYS
        )


@contextlib.contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve a static tile tree over HTTP on 127.0.0.1, like a CDN would."""
    with serve(Starlette(routes=[Mount("/", StaticFiles(directory=folder))])) as url:
        yield url + "/"


def test_http_client_and_audit_read_a_static_tree(vectors_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(vectors_dir / "go-tlog-tiles", tmp_path / "tree")
    with serve_folder(tmp_path / "tree") as url:
        with LogClient(url, NoteVerifier.from_vkey(GO_VKEY)) as client:
            entry, _ = client.entry(500, client.checkpoint())
        assert entry == b"entry 500"
        assert audit(url, NoteVerifier.from_vkey(GO_VKEY)).entries == 1000
        with pytest.raises(NotFoundError), LogClient(url + "nothing/", VERIFIER) as client:
            client.checkpoint()
