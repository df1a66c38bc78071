"""The auditor's per-entry callback: every entry once, in log order, and a raise fails the audit
without recording the checkpoint (how ``veriml log audit`` folds the ledger in the same pass)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core.errors import FormatError, RootMismatchError
from veriml.core.keys import generate_key
from veriml.tlog.audit import AuditState, audit
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.tiles import build_tiles

SIGNER = NoteSigner("example.com/callback-log", generate_key())
VERIFIER = NoteVerifier.from_vkey(SIGNER.vkey)


def write_log(folder: Path, entries: list[bytes], *, root: bytes | None = None) -> str:
    """A static tile tree of ``entries`` with a checkpoint signed over ``root`` (default: the
    entries' real root)."""
    if folder.exists():
        shutil.rmtree(folder)
    for path, data in build_tiles(entries).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    real = root_from_leaf_hashes([leaf_hash(e) for e in entries])
    cp = Checkpoint(SIGNER.name, len(entries), real if root is None else root)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint").write_bytes(sign_checkpoint(cp, [SIGNER]))
    return str(folder)


def entries(n: int) -> list[bytes]:
    return [f"entry {i}".encode() for i in range(n)]


@settings(max_examples=12, deadline=None)
@given(size=st.integers(min_value=0, max_value=700))
def test_every_entry_is_seen_once_in_log_order(size: int) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        log = write_log(Path(tmp) / "log", entries(size))
        seen: list[tuple[int, bytes]] = []
        report = audit(log, VERIFIER, on_entry=lambda i, e: seen.append((i, e)))
    assert report.size == size
    assert seen == list(enumerate(entries(size)))


def test_a_raising_callback_fails_the_audit_and_keeps_the_state(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(300))
    state = tmp_path / "state.json"
    audit(log, VERIFIER, state_path=state)
    before = state.read_bytes()
    log = write_log(tmp_path / "log", entries(600))

    def refuse(index: int, entry: bytes) -> None:
        if index == 450:
            raise FormatError("the fold refuses this entry", index=index)

    with pytest.raises(FormatError) as caught:
        audit(log, VERIFIER, state_path=state, on_entry=refuse)
    assert caught.value.evidence["index"] == 450
    # The failed audit recorded nothing: the previous checkpoint is still the one kept.
    assert state.read_bytes() == before
    loaded = AuditState.load(state)
    assert loaded is not None
    assert loaded.size == 300


def test_what_the_callback_folded_is_only_trusted_when_audit_returns(tmp_path: Path) -> None:
    # A checkpoint over another root: the callback saw the entries, but the audit fails.
    log = write_log(tmp_path / "log", entries(10), root=bytes(32))
    seen: list[int] = []
    with pytest.raises(RootMismatchError):
        audit(log, VERIFIER, on_entry=lambda i, _: seen.append(i))
    assert seen == list(range(10))
