"""The byzantine harness's modes: the names a node's ``--byzantine`` option takes.

Tests and demos only (docs/verification.md, "Byzantine harness"). The node cheats in these
ways (:mod:`veriml.node._byzantine`); the launchers that start nodes by command line
(:class:`veriml.client.LocalNetwork`, ``veriml up``, ``veriml serve node``) check a mode before
anything starts. The launchers must not import the node, so the vocabulary lives here.
"""

from __future__ import annotations

from typing import Final

__all__ = ["BYZANTINE_MODES"]

BYZANTINE_MODES: Final[tuple[str, ...]] = (
    "wrong-output",
    "lazy",
    "substitute",
    "fp16",
    "replay",
    "impersonate",
    "collude",
    "false-check",
)
"""The cheating modes a node can be started in (``NodeConfig.byzantine``)."""
