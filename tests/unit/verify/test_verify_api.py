"""The public surface of veriml.verify is explicit and pinned."""

from __future__ import annotations

import veriml
import veriml.verify


def test_verify_exports_exactly_its_public_api() -> None:
    assert sorted(veriml.verify.__all__) == [
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
    for name in veriml.verify.__all__:
        assert getattr(veriml.verify, name) is not None
    assert veriml.verify_receipt is veriml.verify.verify_receipt
    assert veriml.run is veriml.runtime.run
