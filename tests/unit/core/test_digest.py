from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core import Digest, sha256_stream
from veriml.core.errors import FormatError


def test_digest_of_abc_matches_fips_180_vector() -> None:
    # FIPS 180-2 appendix B.1: SHA-256("abc").
    expected = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert Digest.of(b"abc").to_text() == f"sha256:{expected}"


@given(st.binary(min_size=32, max_size=32))
def test_text_form_round_trips(raw: bytes) -> None:
    digest = Digest(raw)
    assert Digest.from_text(digest.to_text()) == digest
    assert str(digest) == digest.to_text()


@pytest.mark.parametrize(
    "text",
    [
        "sha512:" + "00" * 32,
        "SHA256:" + "00" * 32,
        "sha256:" + "AB" * 32,
        "sha256:" + "00" * 31,
        "sha256" + "00" * 32,
        "sha256:" + "0g" * 32,
        "",
    ],
)
def test_only_lowercase_sha256_text_is_accepted(text: str) -> None:
    with pytest.raises(FormatError):
        Digest.from_text(text)


@given(st.binary(max_size=5000), st.integers(min_value=1, max_value=700))
def test_streamed_digest_does_not_depend_on_chunk_size(data: bytes, chunk: int) -> None:
    digest, size = sha256_stream(io.BytesIO(data), chunk_size=chunk)
    assert digest == Digest.of(data)
    assert size == len(data)
