"""The public surface of veriml.verify is explicit and pinned."""

from __future__ import annotations

import veriml
import veriml.verify


def test_verify_exports_exactly_its_public_api() -> None:
    assert sorted(veriml.verify.__all__) == ["VerifiedReceipt", "verify_receipt"]
    assert veriml.verify_receipt is veriml.verify.verify_receipt
    assert veriml.run is veriml.runtime.run
