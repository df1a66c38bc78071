"""Fixtures for the node tests: one signed model per session, a coordinator key, the hub."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _node_harness import HubStandIn, SignedModel, make_signed_model

from _servers import serve
from veriml.core.keys import SigningKey, generate_key


@pytest.fixture(scope="session")
def signed_model(tmp_path_factory: pytest.TempPathFactory) -> SignedModel:
    return make_signed_model(tmp_path_factory.mktemp("model"))


@pytest.fixture
def coordinator_key() -> SigningKey:
    return generate_key("ed25519")


@pytest.fixture
def coordinator_pub(tmp_path: Path, coordinator_key: SigningKey) -> Path:
    path = tmp_path / "coordinator.pub"
    path.write_bytes(coordinator_key.public.to_pem())
    return path


@pytest.fixture
def hub(coordinator_key: SigningKey, signed_model: SignedModel) -> HubStandIn:
    stand_in = HubStandIn(coordinator_key)
    stand_in.publish(signed_model)
    return stand_in


@pytest.fixture
def hub_url(hub: HubStandIn) -> Iterator[str]:
    with serve(hub.app()) as url:
        yield url
