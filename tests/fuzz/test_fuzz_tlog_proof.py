"""C2SP tlog-proof files: any bytes parse (in the one form ``to_bytes`` writes) or are a
FormatError, and a proof verifies only for an entry the log holds, at its own index."""

from __future__ import annotations

import base64

from _fuzzing import attempt, fuzz_settings, mutated_bytes
from _tlog_examples import (
    CHECKPOINT,
    ENTRIES,
    LEAVES,
    LOG_KEY,
    PROOF_FILES,
    SIGNED_CHECKPOINT,
    WITNESS_KEY,
)
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, VerificationError
from veriml.tlog.proof import HEADER, TlogProof, verify_tlog_proof


@st.composite
def proof_files(draw: st.DrawFn) -> bytes:
    """Header, extra, index and hash lines, each drawn right or wrong, then a checkpoint."""
    lines = [draw(st.sampled_from([HEADER, HEADER + " ", "c2sp.org/tlog-proof@v2", ""]))]
    if draw(st.booleans()):
        extra = base64.b64encode(draw(st.sampled_from(ENTRIES[:3]) | st.binary(max_size=8)))
        lines.append("extra " + extra.decode())
    index = draw(st.integers(-1, 700) | st.sampled_from([2**63, 2**64]))
    lines.append(draw(st.sampled_from(["index {}", "index  {}", "index {}0", "{}"])).format(index))
    for _ in range(draw(st.integers(0, 12))):
        raw = draw(st.sampled_from(LEAVES[:4]) | st.binary(min_size=31, max_size=33))
        lines.append(base64.b64encode(raw).decode())
    checkpoint = draw(st.sampled_from([SIGNED_CHECKPOINT, CHECKPOINT.to_bytes(), b""]))
    return ("\n".join(lines) + "\n\n").encode() + checkpoint


inputs = st.one_of(mutated_bytes(PROOF_FILES), proof_files(), st.binary(max_size=300))


@fuzz_settings()
@given(inputs)
def test_a_tlog_proof_parses_in_one_form_and_verifies_only_a_logged_entry(data: bytes) -> None:
    proof, _ = attempt(lambda: TlogProof.from_bytes(data), allowed=(FormatError,), size=len(data))
    if proof is not None:
        assert proof.to_bytes() == data
    verified, _ = attempt(
        lambda: verify_tlog_proof(data, log=LOG_KEY, witnesses=[WITNESS_KEY], quorum=1),
        allowed=(FormatError, VerificationError),
        size=len(data),
    )
    if verified is not None:
        assert proof is not None
        index, checkpoint = verified
        assert checkpoint == CHECKPOINT
        assert proof.extra == ENTRIES[index]
