"""The policy grammar (``none``, ``quorum:N/K``, ``spot:P``, ``optimistic:W``, ``prefill``,
``,tolerance``): any text parses or is a FormatError, and a parsed policy's text is canonical
(it parses back to the same policy), so the text a receipt signs names one policy."""

from __future__ import annotations

from _fuzzing import attempt, fuzz_settings, mutated_bytes, text_of
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError
from veriml.protocol.policy import Policy

POLICIES = [
    "none",
    "prefill",
    "quorum:2/3",
    "quorum:16/16",
    "spot:0.1",
    "spot:0.0001,tolerance",
    "spot:1",
    "optimistic:120m",
    "optimistic:7d,tolerance",
    "none,bitwise",
]
texts = st.one_of(
    mutated_bytes([p.encode() for p in POLICIES], [b":", b"/", b",", b".", b"0", b"\xd9\xa3"]).map(
        text_of
    ),
    st.builds(
        "{}:{}{}".format,
        st.sampled_from(["quorum", "spot", "optimistic", "none", "prefill", "Quorum"]),
        st.text(alphabet="0123456789./smhd-+ ", max_size=10),
        st.sampled_from(["", ",bitwise", ",tolerance", ",", ",x"]),
    ),
    st.text(max_size=70),
)


@fuzz_settings()
@given(texts)
def test_a_policy_parses_to_its_canonical_text_or_is_a_format_error(text: str) -> None:
    size = len(text.encode("utf-8", "surrogatepass"))
    policy, _ = attempt(lambda: Policy.parse(text), allowed=(FormatError,), size=size)
    if policy is not None:
        assert Policy.parse(str(policy)) == policy
        assert str(Policy.parse(str(policy))) == str(policy)
