"""OMS signature bundles: a mutated bundle (its JSON, or the DSSE payload inside it) fails
verification with a VerificationError, or proves the very folder that was signed.

(Moved from tests/unit/models/test_models_fuzz.py.)"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from pathlib import Path

from _fuzzing import attempt, byte_edits, fuzz_settings, mutate
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import VerificationError
from veriml.core.keys import generate_key
from veriml.models import model_digest, sign_model, verify_model

_ROOT = Path(tempfile.mkdtemp(prefix="veriml-fuzz-oms-"))
MODEL = _ROOT / "m"
MODEL.mkdir()
(MODEL / "weights.bin").write_bytes(b"\x01" * 300)
(MODEL / "config.json").write_text("{}")
_KEY = generate_key("ec")
_KEY.save(_ROOT / "publisher.key")
PUBLIC = _ROOT / "publisher.key.pub"
SIGNATURE = sign_model(MODEL, _ROOT / "publisher.key")
BUNDLE = SIGNATURE.read_bytes()
DIGEST = model_digest(MODEL)


def _in_payload(changes: list[tuple[str, float, bytes]]) -> bytes:
    bundle = json.loads(BUNDLE)
    payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(mutate(payload, changes)).decode()
    return json.dumps(bundle).encode()


bundles = st.one_of(
    byte_edits().map(lambda changes: mutate(BUNDLE, changes)),
    byte_edits().map(_in_payload),
    st.binary(max_size=200),
)


@fuzz_settings(short=60)
@given(bundles)
def test_a_mutated_bundle_fails_verification_or_proves_the_same_folder(data: bytes) -> None:
    SIGNATURE.write_bytes(data)
    digest, error = attempt(
        lambda: verify_model(MODEL, PUBLIC), allowed=(VerificationError,), size=len(data)
    )
    if error is not None:
        assert isinstance(error, VerificationError)
        assert error.check
    else:
        # Only edits that leave the signed bytes alone (JSON whitespace, characters the
        # base64 decoder skips) can pass, and then they prove the same folder.
        assert digest == DIGEST


def teardown_module() -> None:
    shutil.rmtree(_ROOT, ignore_errors=True)
