"""transparency-dev/merkle proof vectors (Apache-2.0), in tests/vectors/transparency-dev-merkle.

Each file is one probe: valid ones (``"wantErr": false``) must verify, corrupted ones (named after
the mutation they apply) must fail with a VerificationError, never pass and never crash.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from _vectors import MERKLE_TESTDATA
from veriml.core.errors import RootMismatchError, VerificationError
from veriml.tlog import verify_consistency, verify_inclusion
from veriml.tlog.merkle import root_from_consistency_proof, root_from_inclusion_proof

TESTDATA = MERKLE_TESTDATA


def _cases(kind: str) -> list[Any]:
    files = sorted((TESTDATA / kind).rglob("*.json"))
    assert files, f"no vectors under {TESTDATA / kind}"
    return [pytest.param(f, id=str(f.relative_to(TESTDATA / kind))) for f in files]


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _proof(value: list[str] | None) -> list[bytes]:
    return [_b64(h) for h in value or []]


@pytest.mark.parametrize("path", _cases("inclusion"))
def test_inclusion_vector_verifies_or_fails_as_marked(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"]))
    if v["wantErr"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)
        assert root_from_inclusion_proof(*args[:4]) == args[4]


@pytest.mark.parametrize("path", _cases("consistency"))
def test_consistency_vector_verifies_or_fails_as_marked(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _proof(v["proof"]), _b64(v["root1"]), _b64(v["root2"]))
    if v["wantErr"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)
        assert root_from_consistency_proof(*args[:4]) == args[4]


def test_root_mismatch_carries_expected_and_calculated_roots() -> None:
    v = json.loads((TESTDATA / "inclusion/1/random-root.json").read_text())
    with pytest.raises(RootMismatchError) as info:
        verify_inclusion(
            _b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _proof(v["proof"]), _b64(v["root"])
        )
    good = json.loads((TESTDATA / "inclusion/1/happy-path.json").read_text())
    assert info.value.expected == _b64(v["root"])
    assert info.value.calculated == _b64(good["root"])
    assert info.value.check == "inclusion"
