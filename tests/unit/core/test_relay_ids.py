"""A relayed model's id and stand-in digest have one definition, which every side reads."""

from __future__ import annotations

import hashlib

import pytest

from veriml.core.completion import relay_digest, relay_model_id, relay_name


def test_a_relayed_model_is_bound_to_the_sha256_of_its_relay_id() -> None:
    assert relay_digest("smollm2").raw == hashlib.sha256(b"relay:smollm2").digest()


@pytest.mark.parametrize("name", ["smollm2", "gpt-4o-mini", "a:b", "relay:x"])
def test_a_relay_model_id_gives_back_its_name(name: str) -> None:
    assert relay_name(relay_model_id(name)) == name


@pytest.mark.parametrize("ref", ["smollm2", "sha256:" + "0" * 64, "Relay:x", " relay:x"])
def test_a_hub_model_reference_names_no_relay(ref: str) -> None:
    assert relay_name(ref) is None
