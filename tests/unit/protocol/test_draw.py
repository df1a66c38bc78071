"""Per-request draw secrets from epoch keys (veriml.protocol.draw): a function of the committed
key and the client's request alone, so re-dispatching draws nothing new, and every use takes
its own value from it."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.protocol.draw import (
    BEACON_TAG,
    DRAW_TAG,
    KEY_SIZE,
    Draw,
    beacon_commitment,
    derive,
    draw_secret,
    sampling_seed,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))

keys = st.binary(min_size=KEY_SIZE, max_size=KEY_SIZE)


def _hmac(key: bytes, request_id: str) -> bytes:
    """The module docstring's formula, written out with the standard library."""
    return hmac.new(key, b"veriml-draw/v1\n" + request_id.encode(), hashlib.sha256).digest()


def test_a_draw_secret_is_hmac_sha256_of_the_request_id_under_the_epoch_key() -> None:
    # Vector: key 00..1f, request id "req-1", computed with Python's hmac from the formula
    # in veriml/protocol/draw.py.
    secret = draw_secret(KEY, "req-1")
    assert secret == _hmac(KEY, "req-1")
    assert secret.hex() == "a37025825474fd795e93ab2ad7221afda50e444c99dcbde7744cfcedf1d907d1"
    assert DRAW_TAG == b"veriml-draw/v1\n"


@given(keys, st.text(min_size=1, max_size=40))
def test_the_same_request_under_the_same_key_always_draws_the_same_secret(
    key: bytes, request_id: str
) -> None:
    try:
        request_id.encode()
    except UnicodeEncodeError:
        return  # lone surrogates: no request id on the wire is one
    assert draw_secret(key, request_id) == draw_secret(key, request_id)
    assert draw_secret(key, request_id) == _hmac(key, request_id)


def test_another_request_id_or_key_draws_another_secret() -> None:
    secret = draw_secret(KEY, "req-1")
    assert draw_secret(KEY, "req-2") != secret
    assert draw_secret(OTHER_KEY, "req-1") != secret


def test_a_beacon_commits_to_its_key_with_its_own_tag() -> None:
    commitment = beacon_commitment(KEY)
    assert commitment == Digest(hashlib.sha256(b"veriml-beacon/v1\n" + KEY).digest())
    assert commitment.to_text() == (
        "sha256:8c9ebb4580153cf1b7df7f080c9b74b28a095dc4ae354caf3fb31201de729e16"
    )
    assert BEACON_TAG != DRAW_TAG
    assert commitment != beacon_commitment(OTHER_KEY)


def test_each_use_derives_its_own_value_from_the_secret() -> None:
    secret = draw_secret(KEY, "req-1")
    assert derive(secret, b"use-a\n") == hashlib.sha256(b"use-a\n" + secret).digest()
    assert derive(secret, b"use-a\n") != derive(secret, b"use-b\n")
    seed = sampling_seed(secret)
    expected = int.from_bytes(derive(secret, b"veriml-seed/v1\n")[:8], "big") % 2**32
    assert seed == expected == 4159770451
    # The seed is not the secret's own leading bits: it is drawn under its tag.
    assert seed != int.from_bytes(secret[:8], "big") % 2**32


@given(st.binary(min_size=32, max_size=32), st.binary(max_size=24), st.binary(max_size=24))
def test_distinct_tags_give_unrelated_values(secret: bytes, one: bytes, two: bytes) -> None:
    if one != two:
        assert derive(secret, one + b"\n") != derive(secret, two + b"\n")
    assert 0 <= sampling_seed(secret) < 2**32


def test_a_draw_matches_only_the_key_and_request_it_came_from() -> None:
    draw = Draw(3, draw_secret(KEY, "req-1"))
    assert draw.matches(KEY, "req-1")
    assert not draw.matches(OTHER_KEY, "req-1")
    assert not draw.matches(KEY, "req-2")


@given(keys, st.integers(0, 255), st.integers(0, 7))
def test_a_draw_with_any_bit_flipped_does_not_match(key: bytes, byte: int, bit: int) -> None:
    secret = bytearray(draw_secret(key, "req-1"))
    secret[byte % 32] ^= 1 << bit
    assert not Draw(0, bytes(secret)).matches(key, "req-1")


def test_a_draw_round_trips_as_epoch_and_lowercase_hex() -> None:
    draw = Draw(7, draw_secret(KEY, "req-1"))
    assert draw.to_json() == {"epoch": 7, "secret": draw.secret.hex()}
    assert Draw.from_json(draw.to_json()) == draw
    text = draw.secret.hex()
    for bad in (
        {"epoch": 7},
        {"epoch": 7, "secret": text, "key": text},
        {"epoch": 7, "secret": text.upper()},
        {"epoch": 7, "secret": text[:62]},
        {"epoch": -1, "secret": text},
        {"epoch": True, "secret": text},
        {"epoch": 1.0, "secret": text},
        {"epoch": 2**53, "secret": text},
        [7, text],
    ):
        with pytest.raises(FormatError):
            Draw.from_json(bad)


@pytest.mark.parametrize("value", [b"", b"\x00" * 31, b"\x00" * 33, "00" * 32])
def test_keys_and_secrets_are_exactly_32_bytes(value: object) -> None:
    with pytest.raises(FormatError):
        draw_secret(value, "req-1")  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        beacon_commitment(value)  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        derive(value, b"tag\n")  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        Draw(0, value)  # type: ignore[arg-type]
