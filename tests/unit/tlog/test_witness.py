"""The witness (c2sp.org/tlog-witness add-checkpoint): status codes, cosignatures, and that it
never cosigns a checkpoint inconsistent with one it cosigned."""

from __future__ import annotations

import base64
import hashlib
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _servers import serve
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key
from veriml.tlog._witness_store import StoredCheckpoint, WitnessStore
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import EMPTY_ROOT, consistency_proof, leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSignature, NoteSigner, NoteVerifier, open_note
from veriml.tlog.witness import (
    MAX_PROOF_LINES,
    SIZE_CONTENT_TYPE,
    AddCheckpointRequest,
    Witness,
    WitnessRejectedError,
    create_witness_app,
)

ORIGIN = "example.com/log"
NOW = 1_700_000_000


class Log:
    """An in-memory log that signs checkpoints, for driving the witness."""

    def __init__(self, signer: NoteSigner, prefix: str = "entry") -> None:
        self.signer = signer
        self.leaves: list[bytes] = []
        self.prefix = prefix

    def grow(self, n: int) -> None:
        self.leaves += [
            leaf_hash(f"{self.prefix} {len(self.leaves) + i}".encode()) for i in range(n)
        ]

    def checkpoint(self, size: int | None = None) -> Checkpoint:
        size = len(self.leaves) if size is None else size
        return Checkpoint(ORIGIN, size, root_from_leaf_hashes(self.leaves[:size]))

    def signed(self, size: int | None = None) -> bytes:
        return sign_checkpoint(self.checkpoint(size), [self.signer])

    def proof(self, old: int, new: int | None = None) -> tuple[bytes, ...]:
        new = len(self.leaves) if new is None else new
        return tuple(consistency_proof(old, new, self.leaves)) if 0 < old < new else ()

    def request(self, old: int, size: int | None = None) -> bytes:
        size = len(self.leaves) if size is None else size
        return AddCheckpointRequest(old, self.proof(old, size), self.signed(size)).to_bytes()


@pytest.fixture(scope="module")
def log_signer() -> NoteSigner:
    return NoteSigner(ORIGIN, generate_key())


@pytest.fixture(scope="module")
def witness_signer() -> CosignatureSigner:
    return CosignatureSigner("witness.example/w1", generate_key())


@pytest.fixture
def log(log_signer: NoteSigner) -> Log:
    log = Log(log_signer)
    log.grow(10)
    return log


@pytest.fixture
def http(
    tmp_path: Path, log_signer: NoteSigner, witness_signer: CosignatureSigner
) -> Iterator[httpx.Client]:
    verifier = NoteVerifier.from_vkey(log_signer.vkey)
    app = create_witness_app(tmp_path / "w.db", witness_signer, [verifier], clock=lambda: NOW)
    with serve(app) as url, httpx.Client(base_url=url) as client:
        yield client
    app.state.witness.store.close()


def post(http: httpx.Client, body: bytes) -> tuple[int, str, str]:
    r = http.post("/add-checkpoint", content=body)
    return r.status_code, r.text, r.headers.get("content-type", "")


def test_first_checkpoint_gets_a_verifiable_timestamped_cosignature(
    http: httpx.Client, log: Log, witness_signer: CosignatureSigner
) -> None:
    status, body, _ = post(http, log.request(0))
    assert status == 200
    lines = body.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("— witness.example/w1 ")
    sig = NoteSignature.from_line(lines[0])
    verifier = CosignatureVerifier.from_vkey(witness_signer.vkey)
    assert verifier.verify(log.checkpoint().to_bytes(), sig.signature) == NOW
    # The spec's client recipe: the response appended to the note opens with the witness key.
    opened = open_note(log.signed() + body.encode(), [verifier])
    assert [s.name for s in opened.verified] == ["witness.example/w1"]


def test_growing_log_is_cosigned_after_a_consistency_proof(http: httpx.Client, log: Log) -> None:
    assert post(http, log.request(0, 3))[0] == 200
    assert post(http, log.request(3, 7))[0] == 200
    assert post(http, log.request(7, 10))[0] == 200
    # Re-submitting the same checkpoint (old == size, same root) is fine.
    assert post(http, log.request(10, 10))[0] == 200


def test_wrong_old_size_gets_409_with_the_latest_size(http: httpx.Client, log: Log) -> None:
    assert post(http, log.request(0, 6))[0] == 200
    status, body, ctype = post(http, log.request(0, 10))
    assert (status, body) == (409, "6\n")
    assert ctype.startswith(SIZE_CONTENT_TYPE)
    status, body, _ = post(http, log.request(4, 10))
    assert (status, body) == (409, "6\n")


def test_never_cosigned_log_reports_size_zero_on_conflict(http: httpx.Client, log: Log) -> None:
    assert post(http, log.request(3, 10))[:2] == (409, "0\n")


@pytest.mark.parametrize("bit", [0, 7, 200])
def test_corrupted_consistency_proof_gets_422(http: httpx.Client, log: Log, bit: int) -> None:
    assert post(http, log.request(0, 5))[0] == 200
    proof = list(log.proof(5, 10))
    raw = bytearray(b"".join(proof))
    raw[bit // 8 % len(raw)] ^= 1 << (bit % 8)
    bad = tuple(bytes(raw[i : i + 32]) for i in range(0, len(raw), 32))
    status, _, _ = post(http, AddCheckpointRequest(5, bad, log.signed(10)).to_bytes())
    assert status == 422


def test_proof_from_size_zero_must_be_empty(http: httpx.Client, log: Log) -> None:
    body = AddCheckpointRequest(0, (bytes(32),), log.signed()).to_bytes()
    assert post(http, body)[0] == 422


def test_empty_tree_must_have_the_empty_root(http: httpx.Client, log_signer: NoteSigner) -> None:
    good = sign_checkpoint(Checkpoint(ORIGIN, 0, EMPTY_ROOT), [log_signer])
    assert post(http, AddCheckpointRequest(0, (), good).to_bytes())[0] == 200
    bad = sign_checkpoint(Checkpoint(ORIGIN, 0, bytes(32)), [log_signer])
    assert post(http, AddCheckpointRequest(0, (), bad).to_bytes())[0] == 422


def test_split_view_at_the_same_size_gets_422(
    http: httpx.Client, log: Log, log_signer: NoteSigner
) -> None:
    assert post(http, log.request(0, 10))[0] == 200
    fork = Log(log_signer, prefix="forged")
    fork.grow(10)
    assert post(http, fork.request(10, 10))[0] == 422


def test_fork_is_never_cosigned_and_does_not_move_the_witness(
    http: httpx.Client, log: Log, log_signer: NoteSigner
) -> None:
    assert post(http, log.request(0, 5))[0] == 200
    fork = Log(log_signer, prefix="forged")
    fork.grow(12)
    # The fork's own proof from 5 binds its own (different) 5-leaf root: it must fail.
    assert post(http, fork.request(5, 12))[0] == 422
    # The honest log still continues from 5, so the witness did not move.
    assert post(http, log.request(5, 10))[0] == 200
    latest = http.get(f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint")
    assert latest.status_code == 200
    assert latest.text.startswith(log.checkpoint(10).to_text())


def test_unknown_origin_gets_404(http: httpx.Client) -> None:
    other = NoteSigner("other.example/log", generate_key())
    leaves = [leaf_hash(b"x")]
    note = sign_checkpoint(
        Checkpoint("other.example/log", 1, root_from_leaf_hashes(leaves)), [other]
    )
    assert post(http, AddCheckpointRequest(0, (), note).to_bytes())[0] == 404


def test_checkpoint_without_a_trusted_signature_gets_403(http: httpx.Client, log: Log) -> None:
    impostor = Log(NoteSigner(ORIGIN, generate_key()))
    impostor.grow(10)
    assert post(http, impostor.request(0))[0] == 403


def test_bad_signature_by_the_trusted_key_gets_403(http: httpx.Client, log: Log) -> None:
    signed = bytearray(log.signed())
    # Flip a bit inside the base64 signature (keep it valid base64: swap a letter).
    line_start = signed.rindex("— ".encode())
    pos = line_start + len("— example.com/log ") + 20
    signed[pos] = ord("A") if signed[pos] != ord("A") else ord("B")
    body = AddCheckpointRequest(0, (), bytes(signed)).to_bytes()
    assert post(http, body)[0] == 403


def test_old_size_above_checkpoint_size_gets_400(http: httpx.Client, log: Log) -> None:
    body = AddCheckpointRequest(11, (), log.signed(10)).to_bytes()
    assert post(http, body)[0] == 400


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"old 1\n",
        b"new 0\n\nx",
        b"old 01\n\nx",
        b"old -1\n\nx",
        b"old 0\nnot-base64!\n\nx",
        b"old 0\n" + base64.b64encode(bytes(31)) + b"\n\nx",
        b"old 0\n\nnot a note",
    ],
)
def test_malformed_requests_get_400(http: httpx.Client, body: bytes) -> None:
    assert post(http, body)[0] == 400


def test_too_many_proof_lines_are_malformed() -> None:
    lines = b"".join(base64.b64encode(bytes(32)) + b"\n" for _ in range(MAX_PROOF_LINES + 1))
    with pytest.raises(FormatError):
        AddCheckpointRequest.from_bytes(b"old 5\n" + lines + b"\nx")


def test_oversized_body_gets_400(http: httpx.Client) -> None:
    assert post(http, b"old 0\n\n" + b"a" * (300 * 1024))[0] == 400


@given(
    old=st.integers(0, 2**63 - 1),
    proof=st.lists(st.binary(min_size=32, max_size=32), max_size=MAX_PROOF_LINES),
    note=st.binary(max_size=200),
)
def test_request_round_trips(old: int, proof: list[bytes], note: bytes) -> None:
    req = AddCheckpointRequest(old, tuple(proof), note)
    assert AddCheckpointRequest.from_bytes(req.to_bytes()) == req


@given(st.binary(max_size=300))
def test_request_parser_accepts_only_the_canonical_encoding(data: bytes) -> None:
    try:
        req = AddCheckpointRequest.from_bytes(b"old 0\n" + data)
    except FormatError:
        return
    assert req.to_bytes() == b"old 0\n" + data


def test_monitoring_endpoint_is_404_before_any_cosignature(http: httpx.Client) -> None:
    assert http.get(f"/{hashlib.sha256(ORIGIN.encode()).hexdigest()}/checkpoint").status_code == 404
    assert http.get(f"/{'0' * 64}/checkpoint").status_code == 404


def test_stale_compare_and_swap_loses(tmp_path: Path) -> None:
    store = WitnessStore.open(tmp_path / "s.db")
    first = StoredCheckpoint(4, bytes(32), b"a")
    assert store.compare_and_swap(ORIGIN, expected=None, new=first)
    assert not store.compare_and_swap(ORIGIN, expected=None, new=first)
    assert store.compare_and_swap(ORIGIN, expected=first, new=StoredCheckpoint(9, b"\1" * 32, b"b"))
    # A request that checked against size 4 cannot overwrite size 9 (no rollback).
    assert not store.compare_and_swap(
        ORIGIN, expected=first, new=StoredCheckpoint(6, bytes(32), b"c")
    )
    latest = store.latest(ORIGIN)
    assert latest is not None
    assert latest.size == 9
    store.close()


def test_concurrent_requests_from_the_same_size_cosign_only_one(
    http: httpx.Client, log: Log
) -> None:
    assert post(http, log.request(0, 4))[0] == 200
    results: list[int] = []
    barrier = threading.Barrier(6)

    def submit(size: int) -> None:
        body = log.request(4, size)
        barrier.wait()
        results.append(post(http, body)[0])

    threads = [threading.Thread(target=submit, args=(s,)) for s in (5, 6, 7, 8, 9, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [200] + [409] * 5


@settings(max_examples=40, deadline=None)
@given(pos=st.integers(0, 10**6), value=st.integers(0, 255), old=st.sampled_from([0, 4]))
def test_mutated_requests_get_a_4xx_never_a_crash_or_a_bad_cosignature(
    log_signer: NoteSigner, witness_signer: CosignatureSigner, pos: int, value: int, old: int
) -> None:
    log = Log(log_signer)
    log.grow(10)
    with tempfile.TemporaryDirectory() as tmp:
        store = WitnessStore.open(Path(tmp) / "w.db")
        witness = Witness(store, witness_signer, [NoteVerifier.from_vkey(log_signer.vkey)])
        if old:
            witness.add_checkpoint(log.request(0, old))
        body = bytearray(log.request(old, 10))
        body[pos % len(body)] = value
        status, line = _submit(witness, bytes(body))
        store.close()
    assert status in (200, 400, 403, 404, 409, 422)
    if status == 200:
        # Whatever was accepted is the honest checkpoint (a no-op mutation, or one in a part
        # no trusted signature covers, like an unknown key's signature line).
        sig = NoteSignature.from_line(line.decode().rstrip("\n"))
        verifier = CosignatureVerifier.from_vkey(witness_signer.vkey)
        verifier.verify(log.checkpoint(10).to_bytes(), sig.signature)


def _submit(witness: Witness, body: bytes) -> tuple[int, bytes]:
    try:
        return 200, witness.add_checkpoint(body)
    except WitnessRejectedError as rejected:
        return rejected.status, b""
