"""Verification of inference evidence: receipts now; policies, comparison, disputes later.

Verifiers raise :class:`~veriml.core.errors.VerificationError` subclasses naming the failed
check and return a description of what was verified on success; they never return ``False``.
"""

from veriml.verify._receipt import VerifiedReceipt, verify_receipt

__all__ = ["VerifiedReceipt", "verify_receipt"]
