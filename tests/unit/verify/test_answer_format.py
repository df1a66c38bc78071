"""The result file's evidence members round-trip and refuse malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.client import LogEvidence, NodeEvidence
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key
from veriml.tlog import Checkpoint, NoteSigner, sign_checkpoint

hashes = st.lists(st.binary(min_size=32, max_size=32), max_size=64).map(tuple)
_SIGNER = NoteSigner("test.veriml.local/log", generate_key())


@given(index=st.integers(0, (1 << 63) - 1), proof=hashes, size=st.integers(1, 1 << 40))
def test_log_evidence_round_trips_through_json(
    index: int, proof: tuple[bytes, ...], size: int
) -> None:
    note = sign_checkpoint(Checkpoint(_SIGNER.name, size, b"\x01" * 32), [_SIGNER])
    evidence = LogEvidence(index, proof, note)
    assert LogEvidence.from_json(evidence.to_json()) == evidence


@given(
    index=st.integers(0, (1 << 63) - 1),
    entry=st.none() | st.binary(min_size=1, max_size=512),
    proof=st.none() | hashes,
)
def test_node_evidence_round_trips_through_json(
    index: int, entry: bytes | None, proof: tuple[bytes, ...] | None
) -> None:
    evidence = NodeEvidence("sha256:" + "ab" * 32, index, entry, proof)
    assert NodeEvidence.from_json(evidence.to_json()) == evidence


@pytest.mark.parametrize(
    "bad",
    [
        {"index": -1, "inclusion_proof": [], "checkpoint": "x"},
        {"index": 0, "inclusion_proof": ["AAAA"], "checkpoint": "x"},
        {"index": 0, "inclusion_proof": [], "checkpoint": ""},
        {"index": True, "inclusion_proof": [], "checkpoint": "x"},
        {"index": 0, "inclusion_proof": ["not base64!"], "checkpoint": "x"},
    ],
)
def test_malformed_log_evidence_is_a_format_error(bad: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        LogEvidence.from_json(bad)
