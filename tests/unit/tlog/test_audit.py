"""The auditor replays a tiled log from its entries and refuses anything that does not add up:
tampered tiles or bundles, a rollback, a split view, a bad signature."""

from __future__ import annotations

import shutil
import tempfile
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from veriml.core.errors import (
    Error,
    FormatError,
    LogInconsistencyError,
    NotFoundError,
    RootMismatchError,
    SignatureError,
)
from veriml.core.keys import generate_key
from veriml.tlog.audit import AuditState, audit
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import Note, NoteSigner, NoteVerifier
from veriml.tlog.tiles import build_tiles

GO_VKEY = "example.com/log+9d2609c6+AbHE3xwXzOkKA81MBX/HTU4u4k3f4qjJxf2NCkWh8ILz"
ORIGIN = "example.com/log"
SIGNER = NoteSigner(ORIGIN, generate_key())
VERIFIER = NoteVerifier.from_vkey(SIGNER.vkey)


def write_log(
    folder: Path, entries: list[bytes], *, witnesses: tuple[CosignatureSigner, ...] = ()
) -> Path:
    """Publish the tree of ``entries`` as a static tile tree with a signed checkpoint."""
    if folder.exists():
        shutil.rmtree(folder)
    for path, data in build_tiles(entries).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    cp = Checkpoint(ORIGIN, len(entries), root_from_leaf_hashes([leaf_hash(e) for e in entries]))
    note = sign_checkpoint(cp, [SIGNER])
    if witnesses:
        sigs = [w.sign(cp, 1_700_000_000) for w in witnesses]
        note = Note.from_bytes(note).add_signatures(*sigs).to_bytes()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "checkpoint").write_bytes(note)
    return folder


def entries(n: int, prefix: str = "entry") -> list[bytes]:
    return [f"{prefix} {i}".encode() for i in range(n)]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_go_tile_tree_audits_clean(vectors_dir: Path) -> None:
    url = (vectors_dir / "go-tlog-tiles").as_uri()
    report = audit(url, NoteVerifier.from_vkey(GO_VKEY))
    assert (report.size, report.entries) == (1000, 1000)
    # 3 full and 1 partial level-0 tiles, the partial level-1 tile.
    assert report.tiles == 5


def test_go_tile_tree_rejects_another_log_key(vectors_dir: Path) -> None:
    with pytest.raises(SignatureError):
        audit((vectors_dir / "go-tlog-tiles").as_uri(), VERIFIER)


@pytest.mark.parametrize("size", [1, 255, 256, 257, 1000, 65536 + 300])
def test_every_shape_of_tree_audits_clean(tmp_path: Path, size: int) -> None:
    log = write_log(tmp_path / "log", entries(size))
    report = audit(str(log), VERIFIER)
    assert report.size == size
    assert report.entries == size


def test_tampered_level0_tile_is_detected(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(600))
    flip(log / "tile/0/001", 77)
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER)
    assert err.value.evidence["tile"] == "tile/0/001"
    assert err.value.evidence["hash_index"] == 2


def test_tampered_partial_tile_is_detected(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(600))
    flip(log / "tile/1/000.p/2", 40)
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER)
    assert err.value.evidence["tile"] == "tile/1/000.p/2"


def test_tampered_entry_bundle_is_detected(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(600))
    flip(log / "tile/entries/002.p/88", 5)
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER)
    assert err.value.evidence["tile"] == "tile/0/002.p/88"


def test_rewritten_entries_with_matching_tiles_miss_the_signed_root(tmp_path: Path) -> None:
    honest = entries(200)
    log = write_log(tmp_path / "log", honest)
    forged = write_log(tmp_path / "forged", [*honest[:100], b"forged", *honest[101:]])
    shutil.copy(log / "checkpoint", forged / "checkpoint")
    with pytest.raises(RootMismatchError) as err:
        audit(str(forged), VERIFIER)
    assert err.value.check == "root"


def test_truncated_bundle_is_a_format_error(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(10))
    path = log / "tile/entries/000.p/10"
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(FormatError):
        audit(str(log), VERIFIER)


def test_missing_tile_is_reported(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(300))
    (log / "tile/0/000").unlink()
    with pytest.raises(NotFoundError):
        audit(str(log), VERIFIER)


def test_growth_is_consistent_and_the_state_follows(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    all_entries = entries(1000)
    log = write_log(tmp_path / "log", all_entries[:300])
    first = audit(str(log), VERIFIER, state_path=state)
    assert first.previous_size is None
    write_log(log, all_entries)
    second = audit(str(log), VERIFIER, state_path=state)
    assert second.previous_size == 300
    saved = AuditState.load(state)
    assert saved is not None
    assert (saved.size, saved.root_hash) == (1000, second.root_hash)
    # Auditing the same checkpoint again is fine.
    assert audit(str(log), VERIFIER, state_path=state).previous_size == 1000


@pytest.mark.parametrize("old", [1, 255, 256, 300, 512, 999])
def test_previous_size_anywhere_in_the_tree_is_proven(tmp_path: Path, old: int) -> None:
    state = tmp_path / "audit.json"
    all_entries = entries(1000)
    log = write_log(tmp_path / "log", all_entries[:old])
    audit(str(log), VERIFIER, state_path=state)
    write_log(log, all_entries)
    assert audit(str(log), VERIFIER, state_path=state).previous_size == old


def test_rollback_is_detected_and_the_state_kept(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    log = write_log(tmp_path / "log", entries(600))
    audit(str(log), VERIFIER, state_path=state)
    before = state.read_bytes()
    write_log(log, entries(400))
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER, state_path=state)
    assert err.value.check == "rollback"
    assert err.value.evidence["previous_size"] == 600
    assert state.read_bytes() == before


def test_split_view_at_the_same_size_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    log = write_log(tmp_path / "log", entries(500))
    audit(str(log), VERIFIER, state_path=state)
    write_log(log, entries(500, prefix="other"))
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER, state_path=state)
    assert err.value.check == "split view"


def test_fork_that_rewrites_history_is_detected(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    honest = entries(500)
    log = write_log(tmp_path / "log", honest)
    audit(str(log), VERIFIER, state_path=state)
    write_log(log, [*honest[:499], b"rewritten", *entries(300, prefix="more")])
    with pytest.raises(LogInconsistencyError) as err:
        audit(str(log), VERIFIER, state_path=state)
    assert err.value.check == "consistency"
    saved = AuditState.load(state)
    assert saved is not None
    assert saved.size == 500


def test_state_of_another_log_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "audit.json"
    AuditState("other.example/log", 1, bytes(32), "x").save(state)
    log = write_log(tmp_path / "log", entries(3))
    with pytest.raises(FormatError):
        audit(str(log), VERIFIER, state_path=state)


def test_witness_quorum_is_enforced(tmp_path: Path) -> None:
    w1, w2 = (CosignatureSigner(f"witness.example/w{i}", generate_key()) for i in (1, 2))
    verifiers = [CosignatureVerifier.from_vkey(w.vkey) for w in (w1, w2)]
    log = write_log(tmp_path / "log", entries(50), witnesses=(w1,))
    report = audit(str(log), VERIFIER, witnesses=verifiers, quorum=1)
    assert report.witnesses == ("witness.example/w1",)
    with pytest.raises(SignatureError):
        audit(str(log), VERIFIER, witnesses=verifiers, quorum=2)


def test_progress_reaches_the_tree_size(tmp_path: Path) -> None:
    log = write_log(tmp_path / "log", entries(700))
    seen: list[tuple[int, int]] = []
    audit(str(log), VERIFIER, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(256, 700), (512, 700), (700, 700)]


def test_audit_streams_instead_of_holding_the_log(tmp_path: Path) -> None:
    n = 60_000
    log = write_log(tmp_path / "log", entries(n, prefix="a somewhat longer entry text"))
    tracemalloc.start()
    try:
        audit(str(log), VERIFIER)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Holding the entries and their leaf hashes alone would take about 8 MiB.
    assert peak < 2 * 2**20


@given(
    origin=st.from_regex(r"[a-z]{1,10}\.example/[a-z]{1,8}", fullmatch=True),
    size=st.integers(0, 2**63 - 1),
    root=st.binary(min_size=32, max_size=32),
    note=st.text(max_size=50),
)
def test_state_round_trips(origin: str, size: int, root: bytes, note: str) -> None:
    state = AuditState(origin, size, root, note)
    assert AuditState.from_bytes(state.to_bytes()) == state


@pytest.mark.parametrize(
    "data", [b"", b"{}", b"[]", b'{"version": 2}', b'{"version": 1, "origin": "x"}', b"\xff"]
)
def test_malformed_state_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        AuditState.from_bytes(data)


@settings(max_examples=25, deadline=None)
@given(size=st.integers(1, 700), pick=st.integers(0, 10**6), bit=st.integers(0, 7))
def test_any_flipped_bit_in_any_served_file_fails_the_audit(size: int, pick: int, bit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = write_log(Path(tmp) / "log", entries(size))
        files = sorted(p for p in log.rglob("*") if p.is_file())
        target = files[pick % len(files)]
        data = bytearray(target.read_bytes())
        data[(pick // len(files)) % len(data)] ^= 1 << bit
        target.write_bytes(bytes(data))
        with pytest.raises(Error):
            audit(str(log), VERIFIER)


@settings(max_examples=15, deadline=None)
@given(sizes=st.lists(st.integers(0, 800), min_size=2, max_size=4))
def test_a_growing_log_always_audits_consistent(sizes: list[int]) -> None:
    sizes.sort()
    all_entries = entries(sizes[-1])
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state.json"
        previous = None
        for size in sizes:
            report = audit(
                str(write_log(Path(tmp) / "log", all_entries[:size])), VERIFIER, state_path=state
            )
            assert report.previous_size == previous
            previous = size
