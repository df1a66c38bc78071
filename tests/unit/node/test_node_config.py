"""A node refuses an impossible configuration, and its public API is pinned."""

from __future__ import annotations

from pathlib import Path

import pytest

import veriml.node
from veriml.core.errors import FormatError
from veriml.node import NodeConfig


def _config(**overrides: object) -> NodeConfig:
    settings: dict[str, object] = {
        "coordinator_url": "http://127.0.0.1:8700",
        "key_path": Path("n/node.key"),
        "operator_key": Path("op/operator.key"),
        "home": Path("n"),
        "coordinator_key": Path("n/coordinator.pub"),
    }
    return NodeConfig(**(settings | overrides))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        {"coordinator_url": "ftp://x"},
        {"operator_key": None},  # no operator at all: the node would answer for nobody
        {"operator_binding": Path("n/binding.json")},  # a binding and a key: which one counts?
        {"port": 0},
        {"concurrency": 0},
        {"queue_length": -1},
        {"heartbeat_interval": 0},
        {"job_timeout": -1},
        {"trace_retention": -1},
        {"endpoint": "127.0.0.1:9"},
        {"endpoint": "http://127.0.0.1:9/v1"},  # a path: the coordinator adds its own
        {"endpoint": "http://user@127.0.0.1:9"},
        {"host": "0.0.0.0"},
        {"coordinator_key": None},  # a node would believe whoever answers at the URL
    ],
)
def test_an_impossible_configuration_is_refused(overrides: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        _config(**overrides)


def test_defaults_advertise_the_bound_address_and_cache_under_home() -> None:
    config = _config(port=9001)
    assert config.advertised_endpoint == "http://127.0.0.1:9001"
    assert config.cache_dir == Path("n/models")
    assert config.concurrency >= 1
    assert config.pinned_coordinator_key == Path("n/coordinator.pub")


def test_an_advertised_endpoint_is_normalised_to_the_origin_the_coordinator_stores() -> None:
    assert _config(endpoint="HTTP://Node.Example:8701/").advertised_endpoint == (
        "http://node.example:8701"
    )


def test_the_public_api_is_pinned() -> None:
    assert sorted(veriml.node.__all__) == [
        "BYZANTINE_MODES",
        "NodeConfig",
        "PINNED_COORDINATOR_KEY",
        "create_node_app",
        "learn_coordinator_key",
        "load_node_key",
        "serve_node",
    ]
