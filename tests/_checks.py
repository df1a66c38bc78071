"""The checks a verified answer lists, in the order they ran (veriml.verify.inference and
veriml.verify.completion): the answer's own checks, then the network evidence
(veriml.verify.network), then the policy's own, and ``verdict`` last."""

from __future__ import annotations

from veriml.verify.network import NETWORK_CHECKS

# The network checks of an answer that cites no dispute, in the order check_network runs them:
# the cited entries, the operators' bonds, the model's provenance, the draw's epoch, the
# challenge window.
NETWORK = tuple(check for check in NETWORK_CHECKS if check != "disputes")
assert NETWORK == ("evidence", "bonds", "provenance", "epoch", "window")


def ran(base: tuple[str, ...], *extra: str) -> tuple[str, ...]:
    """``base`` (``CHECKS`` or ``COMPLETION_CHECKS``) with ``extra`` run just before its last
    check, ``verdict``."""
    return (*base[:-1], *extra, base[-1])
