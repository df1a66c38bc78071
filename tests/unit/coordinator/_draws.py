"""A beacon epoch whose key the tests know, so a test can choose which node a request is
drawn to first.

The coordinator orders a request's nodes by its draw secret, ``HMAC(epoch key, request id)``
(veriml.protocol.draw, veriml.coordinator.nodes.scheduler), never by what nodes report about
themselves. A service built by hand draws from a key of its own; built with
``beacon=lambda: EPOCH``, a test finds a request id whose draw puts a given node first, which
is what "the forger is asked first" means now.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

from veriml.coordinator.nodes.beacon import Epoch
from veriml.coordinator.nodes.scheduler import Candidate, draw_order

__all__ = ["EPOCH", "request_drawn_first"]

EPOCH = Epoch(0, hashlib.sha256(b"veriml-test-beacon\n0").digest())


def request_drawn_first(node_id: str, candidates: Sequence[Candidate]) -> str:
    """A request id whose draw under :data:`EPOCH` orders ``node_id`` first of
    ``candidates`` (all live and serving the model)."""
    for n in itertools.count():
        request_id = f"req-{n}"
        first = draw_order(candidates, EPOCH.draw(request_id).secret)[0]
        if first.node_id == node_id:
            return request_id
    raise AssertionError("unreachable")  # pragma: no cover
