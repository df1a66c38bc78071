"""One check used wherever named tensors must be exactly the ones a signer committed to."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy.typing as npt

from veriml.core.digest import Digest
from veriml.core.errors import Check, DigestMismatchError, VerificationError
from veriml.core.tensors import tensor_digest

__all__ = ["check_tensor_digests"]


def check_tensor_digests(
    tensors: Mapping[str, npt.NDArray[Any]],
    claimed: Mapping[str, Digest],
    *,
    check: Check | str,
    kind: str,
    claimant: str,
) -> None:
    """Raise unless ``tensors`` has exactly the names of ``claimed`` and each digest matches.

    ``kind`` names the tensors ("output", "input"), ``claimant`` who committed to the digests
    ("the receipt", "the verdict"); both only shape the error message. Names are compared first
    (a missing or extra tensor is a ``VerificationError``), then contents in name order (the
    first mismatch is a ``DigestMismatchError`` with expected and calculated digests).
    """
    if set(tensors) != set(claimed):
        raise VerificationError(
            f"the {kind}s are not the {kind}s {claimant} commits to",
            check=check,
            committed=",".join(sorted(claimed)) or "none",
            given=",".join(sorted(tensors)) or "none",
        )
    for name, expected in sorted(claimed.items()):
        calculated = tensor_digest(tensors[name])
        if calculated != expected:
            raise DigestMismatchError(
                f"{kind} {name!r} does not match the digest {claimant} commits to",
                check=check,
                expected=expected,
                calculated=calculated,
            )
