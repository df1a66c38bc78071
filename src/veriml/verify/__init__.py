"""Verification of inference evidence: receipts, policies and verdicts.

Verifiers raise :class:`~veriml.core.errors.VerificationError` subclasses naming the failed
check and return a description of what was verified on success; they never return ``False``.
Receipt verification (which can re-execute, so it pulls in ONNX Runtime and model-signing)
loads on first use: ``veriml.verify.policy`` stays light for clients that only check verdicts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["VerifiedReceipt", "verify_receipt"]

if TYPE_CHECKING:
    from veriml.verify._receipt import VerifiedReceipt, verify_receipt


def __getattr__(name: str) -> Any:
    if name in __all__:
        from veriml.verify import _receipt

        value = getattr(_receipt, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'veriml.verify' has no attribute {name!r}")
