"""C2SP tlog-checkpoints: a body parses only in its one canonical form, and a signed checkpoint
opens only as the checkpoint the log signed."""

from __future__ import annotations

import base64

from _fuzzing import attempt, fuzz_settings, mutated_bytes
from _tlog_examples import CHECKPOINT, LOG_KEY, ORIGIN, SIGNED_CHECKPOINT, WITNESS_KEY
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError, SignatureError
from veriml.tlog.checkpoint import Checkpoint, open_checkpoint


@st.composite
def checkpoint_texts(draw: st.DrawFn) -> bytes:
    """origin, size, root and extension lines, each drawn valid or not."""
    origin = draw(st.sampled_from([ORIGIN, "", " ", "a\tb"]) | st.text(max_size=20))
    size = draw(
        st.integers(min_value=-5, max_value=2**64).map(str)
        | st.sampled_from(["", "01", "+1", " 1", "1 ", "\u0661", "9" * 25, "0x10"])
    )
    root = base64.b64encode(draw(st.binary(min_size=30, max_size=34))).decode()
    if draw(st.booleans()):
        root = draw(st.sampled_from([root.rstrip("="), root + "=", root.replace("+", "-"), ""]))
    extensions = draw(st.lists(st.text(max_size=12), max_size=3))
    text = "\n".join([origin, size, root, *extensions]) + draw(st.sampled_from(["\n", "", "\n\n"]))
    return text.encode("utf-8", "surrogatepass")


inputs = st.one_of(
    mutated_bytes([CHECKPOINT.to_bytes(), SIGNED_CHECKPOINT]),
    checkpoint_texts(),
    st.binary(max_size=200),
)


@fuzz_settings()
@given(inputs)
def test_a_checkpoint_has_one_text_and_opens_only_as_the_one_the_log_signed(data: bytes) -> None:
    body, _ = attempt(lambda: Checkpoint.from_bytes(data), allowed=(FormatError,), size=len(data))
    if body is not None:
        assert body.to_bytes() == data
        assert Checkpoint.from_text(body.to_text()) == body
    opened, _ = attempt(
        lambda: open_checkpoint(data, LOG_KEY, others=[WITNESS_KEY], origin=ORIGIN),
        allowed=(FormatError, SignatureError),
        size=len(data),
    )
    if opened is not None:
        assert opened[0] == CHECKPOINT
