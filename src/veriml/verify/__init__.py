"""Verification of inference evidence: receipts, policies, verdicts, comparison and disputes.

Verifiers raise :class:`~veriml.core.errors.VerificationError` subclasses naming the failed
check and return a description of what was verified on success; they never return ``False``.

Every name loads its module on first use: receipt verification (which can re-execute, so it
pulls in ONNX Runtime and model-signing) and the dispute referee stay out of a client that only
checks verdicts with :mod:`veriml.verify.policy`.

- :mod:`veriml.verify.policy`: policies, spot-check commit-reveal, verdicts, :func:`decide`;
- :mod:`veriml.verify.tolerance`: per-operator error bounds and tolerance comparison;
- :mod:`veriml.verify.dispute`: trace layout, reveal checks, bisection and the referee;
- :mod:`veriml.verify.prefill`: the prefill check of LLM completions (one batched pass).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "Bisection",
    "DisputeRef",
    "OutputBounds",
    "Policy",
    "PrefillReport",
    "RefereeDecision",
    "SpotReveal",
    "TraceLayout",
    "Verdict",
    "VerifiedReceipt",
    "check_completion",
    "check_reveal",
    "check_spot",
    "check_verdict",
    "decide",
    "output_bounds",
    "outputs_agree",
    "prefill_check",
    "referee",
    "spot_checked",
    "spot_commitment",
    "verify_receipt",
]

_HOMES = {
    "VerifiedReceipt": "_receipt",
    "verify_receipt": "_receipt",
    "DisputeRef": "policy",
    "Policy": "policy",
    "SpotReveal": "policy",
    "Verdict": "policy",
    "check_spot": "policy",
    "check_verdict": "policy",
    "decide": "policy",
    "spot_checked": "policy",
    "spot_commitment": "policy",
    "OutputBounds": "tolerance",
    "output_bounds": "tolerance",
    "outputs_agree": "tolerance",
    "PrefillReport": "prefill",
    "check_completion": "prefill",
    "prefill_check": "prefill",
    "Bisection": "dispute",
    "RefereeDecision": "dispute",
    "TraceLayout": "dispute",
    "check_reveal": "dispute",
    "referee": "dispute",
}

if TYPE_CHECKING:
    from veriml.verify._receipt import VerifiedReceipt, verify_receipt
    from veriml.verify.dispute import (
        Bisection,
        RefereeDecision,
        TraceLayout,
        check_reveal,
        referee,
    )
    from veriml.verify.policy import (
        DisputeRef,
        Policy,
        SpotReveal,
        Verdict,
        check_spot,
        check_verdict,
        decide,
        spot_checked,
        spot_commitment,
    )
    from veriml.verify.prefill import PrefillReport, check_completion, prefill_check
    from veriml.verify.tolerance import OutputBounds, output_bounds, outputs_agree


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'veriml.verify' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"veriml.verify.{home}"), name)
    globals()[name] = value
    return value
