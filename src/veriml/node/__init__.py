"""A veriml node: pulls verified models from its coordinator's hub and runs signed jobs.

>>> from veriml.node import NodeConfig, serve_node
>>> serve_node(NodeConfig(coordinator_url="http://127.0.0.1:8700", operator="op-1",
...     key_path=Path(".veriml/nodes/n1/node.key"), home=Path(".veriml/nodes/n1"),
...     port=8701))  # doctest: +SKIP

The public surface is re-exported here; the ``_``-prefixed modules are internal. See
docs/node.md for configuration, job handling, replay protection, the model cache, traces and
the byzantine harness (``NodeConfig(byzantine=mode)``, one of ``BYZANTINE_MODES``: tests and
demos only).
"""

from veriml.node._app import create_node_app, load_node_key, serve_node
from veriml.node._byzantine import BYZANTINE_MODES
from veriml.node._config import PINNED_COORDINATOR_KEY, NodeConfig
from veriml.node._coordinator import learn_coordinator_key

__all__ = [
    "BYZANTINE_MODES",
    "PINNED_COORDINATOR_KEY",
    "NodeConfig",
    "create_node_app",
    "learn_coordinator_key",
    "load_node_key",
    "serve_node",
]
