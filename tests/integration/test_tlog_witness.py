"""A witness on a real socket: restarts keep its memory, the log-side client gets verified
cosignatures, and collect_cosignatures enforces a quorum."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from _servers import free_port, serve
from veriml.core.errors import (
    LogInconsistencyError,
    NodeUnavailableError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import generate_key
from veriml.tlog._witness_store import StoredCheckpoint, WitnessStore
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.client import verify_checkpoint_note
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import consistency_proof, leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.witness import (
    WitnessClient,
    WitnessConflictError,
    collect_cosignatures,
    create_witness_app,
)

ORIGIN = "example.com/log"
OTHER = "other.example/log"


class Log:
    def __init__(self, prefix: str = "entry") -> None:
        self.signer = NoteSigner(ORIGIN, _LOG_KEY)
        self.prefix = prefix
        self.leaves: list[bytes] = []

    def grow(self, n: int) -> None:
        self.leaves += [
            leaf_hash(f"{self.prefix} {len(self.leaves) + i}".encode()) for i in range(n)
        ]

    def signed(self, size: int | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        cp = Checkpoint(ORIGIN, size, root_from_leaf_hashes(self.leaves[:size]))
        return sign_checkpoint(cp, [self.signer])

    def proof(self, old: int, new: int) -> list[bytes]:
        return consistency_proof(old, new, self.leaves)


_LOG_KEY = generate_key()


@pytest.fixture
def log() -> Log:
    log = Log()
    log.grow(20)
    return log


def _witness(name: str) -> CosignatureSigner:
    return CosignatureSigner(name, generate_key())


def _app(state: Path, signer: CosignatureSigner, log: Log) -> object:
    return create_witness_app(state, signer, [NoteVerifier.from_vkey(log.signer.vkey)])


def test_witness_remembers_its_latest_checkpoint_across_restarts(tmp_path: Path, log: Log) -> None:
    signer = _witness("witness.example/w1")
    verifier = CosignatureVerifier.from_vkey(signer.vkey)
    state = tmp_path / "witness.db"
    port = free_port()
    with serve(_app(state, signer, log), port=port) as url:
        client = WitnessClient(url, verifier)
        client.add_checkpoint(0, [], log.signed(8))
        client.close()
    fork = Log(prefix="forged")
    fork.grow(20)
    with serve(_app(state, signer, log), port=port) as url:
        client = WitnessClient(url, verifier)
        # A fresh start from 0 is refused: the witness still knows size 8.
        with pytest.raises(WitnessConflictError) as conflict:
            client.add_checkpoint(0, [], fork.signed(20))
        assert conflict.value.latest_size == 8
        # A fork that does not extend the cosigned size-8 tree is never cosigned.
        with pytest.raises(LogInconsistencyError):
            client.add_checkpoint(8, fork.proof(8, 20), fork.signed(20))
        # The honest log continues.
        sig = client.add_checkpoint(8, log.proof(8, 20), log.signed(20))
        assert sig.name == "witness.example/w1"
        client.close()


def test_collect_cosignatures_meets_the_quorum_and_the_note_verifies(
    tmp_path: Path, log: Log
) -> None:
    signers = [_witness(f"witness.example/w{i}") for i in range(2)]
    verifiers = [CosignatureVerifier.from_vkey(s.vkey) for s in signers]
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(serve(_app(tmp_path / f"{i}.db", s, log)))
            for i, s in enumerate(signers)
        ]
        clients = [WitnessClient(u, v) for u, v in zip(urls, verifiers, strict=True)]
        sizes: dict[str, int] = {}
        note = collect_cosignatures(clients, sizes, log.proof, log.signed(5), quorum=2)
        assert sizes == {"witness.example/w0": 5, "witness.example/w1": 5}
        # We "forget" the sizes: the 409 tells us, and the retry carries the right proof.
        note = collect_cosignatures(clients, {}, log.proof, log.signed(20), quorum=2)
        for c in clients:
            c.close()
    signed = verify_checkpoint_note(
        note, NoteVerifier.from_vkey(log.signer.vkey), witnesses=verifiers, quorum=2
    )
    assert signed.checkpoint.size == 20
    assert sorted(signed.witnesses) == ["witness.example/w0", "witness.example/w1"]
    with pytest.raises(SignatureError):
        verify_checkpoint_note(
            log.signed(20),
            NoteVerifier.from_vkey(log.signer.vkey),
            witnesses=verifiers,
            quorum=1,
        )


def test_quorum_fails_closed_when_a_witness_is_down(tmp_path: Path, log: Log) -> None:
    up, down = _witness("witness.example/up"), _witness("witness.example/down")
    with serve(_app(tmp_path / "up.db", up, log)) as url:
        clients = [
            WitnessClient(url, CosignatureVerifier.from_vkey(up.vkey)),
            WitnessClient(
                f"http://127.0.0.1:{free_port()}",
                CosignatureVerifier.from_vkey(down.vkey),
                timeout=2,
            ),
        ]
        with pytest.raises(NodeUnavailableError):
            clients[1].add_checkpoint(0, [], log.signed(3))
        with pytest.raises(VerificationError) as failed:
            collect_cosignatures(clients, {}, log.proof, log.signed(3), quorum=2)
        assert failed.value.evidence["cosigned"] == 1
        # One of two is enough for quorum 1, and the note carries that one cosignature.
        note = collect_cosignatures(clients, {}, log.proof, log.signed(3), quorum=1)
        assert b"witness.example/up" in note
        for c in clients:
            c.close()


def test_quorum_failure_from_a_fork_is_a_log_inconsistency(tmp_path: Path, log: Log) -> None:
    signer = _witness("witness.example/w1")
    with serve(_app(tmp_path / "w.db", signer, log)) as url:
        client = WitnessClient(url, CosignatureVerifier.from_vkey(signer.vkey))
        collect_cosignatures([client], {}, log.proof, log.signed(10), quorum=1)
        fork = Log(prefix="forged")
        fork.grow(20)
        with pytest.raises(LogInconsistencyError):
            collect_cosignatures([client], {}, fork.proof, fork.signed(20), quorum=1)
        client.close()


def test_client_rejects_a_cosignature_from_another_key(tmp_path: Path, log: Log) -> None:
    signer = _witness("witness.example/w1")
    impostor = CosignatureVerifier.from_vkey(_witness("witness.example/w1").vkey)
    with serve(_app(tmp_path / "w.db", signer, log)) as url:
        client = WitnessClient(url, impostor)
        with pytest.raises(SignatureError):
            client.add_checkpoint(0, [], log.signed(4))
        client.close()


@pytest.mark.postgres
def test_witness_state_in_postgresql_keeps_the_same_guarantees(postgres_url: str, log: Log) -> None:
    store = WitnessStore.open(postgres_url)
    first = StoredCheckpoint(4, bytes(32), b"a")
    assert store.compare_and_swap(OTHER, expected=None, new=first)
    assert not store.compare_and_swap(OTHER, expected=None, new=first)
    newer = StoredCheckpoint(9, b"\1" * 32, b"b")
    assert store.compare_and_swap(OTHER, expected=first, new=newer)
    assert not store.compare_and_swap(
        ORIGIN, expected=first, new=StoredCheckpoint(6, bytes(32), b"c")
    )
    assert store.latest(OTHER) == newer
    store.close()

    signer = _witness("witness.example/pg")
    verifier = CosignatureVerifier.from_vkey(signer.vkey)
    app = create_witness_app(postgres_url, signer, [NoteVerifier.from_vkey(log.signer.vkey)])
    with serve(app) as url, WitnessClient(url, verifier) as client:
        client.add_checkpoint(0, [], log.signed(7))
        with pytest.raises(WitnessConflictError):
            client.add_checkpoint(0, [], log.signed(9))
        client.add_checkpoint(7, log.proof(7, 20), log.signed(20))


def test_client_maps_each_refusal_to_its_error(tmp_path: Path, log: Log) -> None:
    signer = _witness("witness.example/w1")
    verifier = CosignatureVerifier.from_vkey(signer.vkey)
    impostor = Log()
    impostor.signer = NoteSigner(ORIGIN, generate_key())
    impostor.grow(3)
    stranger = NoteSigner("stranger.example/log", generate_key())
    unknown = sign_checkpoint(
        Checkpoint("stranger.example/log", 1, root_from_leaf_hashes([leaf_hash(b"x")])), [stranger]
    )
    with serve(_app(tmp_path / "w.db", signer, log)) as url, WitnessClient(url, verifier) as client:
        with pytest.raises(SignatureError):  # 403: not signed by the trusted log key
            client.add_checkpoint(0, [], impostor.signed())
        with pytest.raises(VerificationError) as err:  # 404: a log this witness doesn't know
            client.add_checkpoint(0, [], unknown)
        assert err.value.evidence["status"] == 404
        with pytest.raises(VerificationError) as err:  # 400: old size beyond the checkpoint
            client.add_checkpoint(9, [], log.signed(3))
        assert err.value.evidence["status"] == 400
