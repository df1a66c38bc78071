"""Nodes registered in a real log, as the answer checks need them (shared by the tests of
verify_inference, the policy checks and verify_completion)."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

from veriml.core.dsse import Envelope
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import utc_now
from veriml.ledger import NodeEntry
from veriml.models.examples import build_mlp, write_example_folder
from veriml.protocol import NodeDescriptor
from veriml.protocol.accounts import OperatorBinding
from veriml.tlog import Log, NoteSigner


def signed_descriptor(node: SigningKey, operator: SigningKey, *, port: int) -> Envelope:
    """``node``'s descriptor, bound by the ``operator`` account and signed by the node."""
    binding = OperatorBinding.of(operator, node.key_id).sign(operator)
    return NodeDescriptor(
        public_key=node.public.to_pem().decode(),
        operator_binding=binding,
        endpoint=f"http://127.0.0.1:{port}",
        issued_at=utc_now(),
        nonce=uuid.uuid4().hex,
    ).sign(node)


def register_nodes(log: Log, count: int, *, port: int) -> list[tuple[SigningKey, str, int]]:
    """``count`` nodes of distinct operators, each registration logged: ``(node key, operator
    account id, log index of the registration)``."""
    nodes = []
    for i in range(count):
        key, operator = generate_key(), generate_key()
        descriptor = signed_descriptor(key, operator, port=port + i)
        nodes.append((key, operator.key_id, log.add(NodeEntry(descriptor).to_bytes())))
    return nodes


@dataclasses.dataclass
class Network:
    """A log with registered nodes and a small ONNX model they run."""

    log: Log
    vkey: str
    model: Path
    nodes: list[tuple[SigningKey, str, int]]  # key, operator, registration index


@contextlib.contextmanager
def model_network(tmp: Path, nodes: int) -> Iterator[Network]:
    """A fresh SQLite log under ``tmp`` with ``nodes`` registered nodes and an MLP model."""
    model = write_example_folder(tmp / "m", build_mlp((4, 8, 3), seed=1), name="m")
    signer = NoteSigner("test.veriml.local/log", generate_key())
    with Log.open(f"sqlite:///{tmp / 'log.db'}", signer) as log:
        yield Network(log, signer.vkey, model, register_nodes(log, nodes, port=9000))
