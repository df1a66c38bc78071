"""Verification of inference evidence: receipts, answers, policies, verdicts, comparison and
disputes. Pure code: no HTTP, no sockets (the SDK in :mod:`veriml.client` fetches evidence and
calls these).

Verifiers raise :class:`~veriml.errors.VerificationError` subclasses naming the failed
check and return a description of what was verified on success; they never return ``False``.

Every name loads its module on first use: receipt verification (which can re-execute, so it
pulls in ONNX Runtime and model-signing) and the dispute referee stay out of a client that only
checks answers and verdicts.

- :mod:`veriml.verify.inference`: a network inference answer and its log evidence
  (:func:`verify_inference`), in the format of :mod:`veriml.verify.answer`;
- :mod:`veriml.verify.completion`: an OpenAI-compatible LLM answer (:func:`verify_completion`),
  its ``veriml`` member parsed by :mod:`veriml.verify.completion_answer`;
- :mod:`veriml.verify.evidence`: the log evidence both share (checkpoint, node keys, inclusion);
- :mod:`veriml.verify.policy`: :func:`decide`, verdict and spot checks, which disagreements
  become disputes (the policy and verdict formats are :mod:`veriml.protocol.policy`);
- :mod:`veriml.verify.tolerance`: per-operator error bounds and tolerance comparison;
- :mod:`veriml.verify.dispute`: trace layout, reveal checks, bisection and the referee;
- :mod:`veriml.verify.prefill`: the prefill check of LLM completions (one batched pass);
- :mod:`veriml.verify.provenance`: a model name means its publisher's model
  (:func:`check_provenance`, from the logged model and namespace entries).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from veriml.core.lazy import lazy_exports

__all__ = [
    "CHECKS",
    "COMPLETION_CHECKS",
    "POLICY_CHECKS",
    "AnswerOutputs",
    "Bisection",
    "CompletionEvidence",
    "DisputeRef",
    "InferenceResult",
    "LogEvidence",
    "NodeEvidence",
    "OutputBounds",
    "Policy",
    "PrefillReport",
    "Provenance",
    "RefereeDecision",
    "SpotReveal",
    "TraceLayout",
    "Verdict",
    "Verification",
    "VerifiedCompletion",
    "VerifiedInference",
    "VerifiedReceipt",
    "check_completion",
    "check_provenance",
    "check_reveal",
    "check_spot",
    "check_spot_reveal",
    "check_verdict",
    "decide",
    "output_bounds",
    "outputs_agree",
    "prefill_check",
    "referee",
    "spot_checked",
    "spot_commitment",
    "verify_completion",
    "verify_inference",
    "verify_receipt",
]

_HOMES = {
    "VerifiedReceipt": "_receipt",
    "verify_receipt": "_receipt",
    "AnswerOutputs": "answer",
    "InferenceResult": "answer",
    "LogEvidence": "answer",
    "NodeEvidence": "answer",
    "Verification": "answer",
    "CHECKS": "inference",
    "POLICY_CHECKS": "inference",
    "VerifiedInference": "inference",
    "verify_inference": "inference",
    "COMPLETION_CHECKS": "completion",
    "VerifiedCompletion": "completion",
    "verify_completion": "completion",
    "CompletionEvidence": "completion_answer",
    "DisputeRef": "policy",
    "Policy": "policy",
    "SpotReveal": "policy",
    "Verdict": "policy",
    "check_spot": "policy",
    "check_spot_reveal": "policy",
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
    "Provenance": "provenance",
    "check_provenance": "provenance",
    "Bisection": "dispute",
    "RefereeDecision": "dispute",
    "TraceLayout": "dispute",
    "check_reveal": "dispute",
    "referee": "dispute",
}

if TYPE_CHECKING:
    from veriml.verify._receipt import VerifiedReceipt, verify_receipt
    from veriml.verify.answer import (
        AnswerOutputs,
        InferenceResult,
        LogEvidence,
        NodeEvidence,
        Verification,
    )
    from veriml.verify.completion import COMPLETION_CHECKS, VerifiedCompletion, verify_completion
    from veriml.verify.completion_answer import CompletionEvidence
    from veriml.verify.dispute import (
        Bisection,
        RefereeDecision,
        TraceLayout,
        check_reveal,
        referee,
    )
    from veriml.verify.inference import (
        CHECKS,
        POLICY_CHECKS,
        VerifiedInference,
        verify_inference,
    )
    from veriml.verify.policy import (
        DisputeRef,
        Policy,
        SpotReveal,
        Verdict,
        check_spot,
        check_spot_reveal,
        check_verdict,
        decide,
        spot_checked,
        spot_commitment,
    )
    from veriml.verify.prefill import PrefillReport, check_completion, prefill_check
    from veriml.verify.provenance import Provenance, check_provenance
    from veriml.verify.tolerance import OutputBounds, output_bounds, outputs_agree


__getattr__, __dir__ = lazy_exports(__name__, {n: f".{m}" for n, m in _HOMES.items()})
