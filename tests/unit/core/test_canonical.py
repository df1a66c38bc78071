from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import canonical_digest, canonicalize, parse_json_object
from veriml.core.errors import FormatError


def test_rfc8785_section_3_2_3_example() -> None:
    # RFC 8785 §3.2.3 (sorting, number and string serialisation), input and output from the RFC.
    source = (
        '{"numbers":[333333333.33333329,1E30,4.50,2e-3,0.000000000000000000000000001],'
        '"string":"\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        '"literals":[null,true,false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert canonicalize(json.loads(source)) == expected.encode()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_form_is_a_fixed_point(value: object) -> None:
    once = canonicalize(value)
    assert canonicalize(json.loads(once)) == once


@given(st.dictionaries(st.text(max_size=8), st.integers(-(2**53) + 1, 2**53 - 1), max_size=6))
def test_digest_does_not_depend_on_member_order(obj: dict[str, int]) -> None:
    reordered = dict(reversed(list(obj.items())))
    assert canonical_digest(obj) == canonical_digest(reordered)


def test_nan_cannot_be_canonicalised() -> None:
    with pytest.raises(FormatError):
        canonicalize({"x": float("nan")})


@pytest.mark.parametrize(
    "text",
    ['{"a": 1, "a": 2}', '{"a": NaN}', "[1, 2]", "{", b"\xff\xfe"],
)
def test_strict_parser_rejects_ambiguous_or_invalid_json(text: str | bytes) -> None:
    with pytest.raises(FormatError):
        parse_json_object(text)
