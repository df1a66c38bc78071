"""The public surface of veriml.verify is explicit and pinned."""

from __future__ import annotations

import veriml
import veriml.verify


def test_verify_exports_exactly_its_public_api() -> None:
    assert sorted(veriml.verify.__all__) == [
        "AnswerOutputs",
        "Bisection",
        "CHECKS",
        "COMPLETION_CHECKS",
        "CompletionEvidence",
        "DisputeRef",
        "InferenceResult",
        "LogEvidence",
        "NodeEvidence",
        "OutputBounds",
        "POLICY_CHECKS",
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
    for name in veriml.verify.__all__:
        assert getattr(veriml.verify, name) is not None
    assert veriml.verify_receipt is veriml.verify.verify_receipt
    assert veriml.run is veriml.runtime.run


def test_the_sdk_reexports_answer_verification_from_verify() -> None:
    import veriml.client

    for name in (
        "CHECKS",
        "COMPLETION_CHECKS",
        "POLICY_CHECKS",
        "AnswerOutputs",
        "InferenceResult",
        "LogEvidence",
        "NodeEvidence",
        "Verification",
        "VerifiedCompletion",
        "VerifiedInference",
        "verify_completion",
        "verify_inference",
    ):
        assert getattr(veriml.client, name) is getattr(veriml.verify, name), name
    assert veriml.InferenceResult is veriml.verify.InferenceResult
