from __future__ import annotations

import numpy as np
import pytest

from veriml.core import tensor_digest
from veriml.core.errors import DigestMismatchError, VerificationError
from veriml.verify.tensors import check_tensor_digests

Y = np.arange(4, dtype=np.float32)


def test_matching_tensors_pass() -> None:
    check_tensor_digests(
        {"y": Y}, {"y": tensor_digest(Y)}, check="output-digest", kind="output", claimant="x"
    )


def test_a_missing_or_extra_name_fails_before_any_content_check() -> None:
    with pytest.raises(VerificationError) as info:
        check_tensor_digests(
            {"z": Y}, {"y": tensor_digest(Y)}, check="output-digest", kind="output", claimant="x"
        )
    assert info.value.check == "output-digest"
    assert not isinstance(info.value, DigestMismatchError)


def test_a_changed_value_is_a_digest_mismatch_with_evidence() -> None:
    changed = Y.copy()
    changed[0] = np.nextafter(changed[0], np.float32(1))
    with pytest.raises(DigestMismatchError) as info:
        check_tensor_digests(
            {"y": changed},
            {"y": tensor_digest(Y)},
            check="output-digest",
            kind="output",
            claimant="x",
        )
    assert info.value.expected == tensor_digest(Y)
    assert info.value.calculated == tensor_digest(changed)
