"""Hostile bytes fail closed: mutated ONNX files, model cards and signature bundles either
load / verify as before or raise veriml's own error, never anything else.

(Mutating valid models found two checker paths raising bare ValueError/UnicodeDecodeError;
they are now InvalidModel.)
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_builders import ec_key_pair, tiny_model

from veriml.core.errors import Error, InvalidModel, VerificationError
from veriml.models import ModelCard, ModelPackage, model_digest, sign_model, verify_model

T = TypeVar("T")

edits = st.lists(
    st.tuples(
        st.sampled_from(["set", "delete", "insert"]),
        st.floats(min_value=0, max_value=1, exclude_max=True),
        st.binary(min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, changes: list[tuple[str, float, bytes]]) -> bytes:
    out = bytearray(data)
    for op, where, chunk in changes:
        pos = int(where * len(out))
        if op == "set":
            out[pos : pos + len(chunk)] = chunk
        elif op == "delete":
            del out[pos : pos + len(chunk)]
        else:
            out[pos:pos] = chunk
    return bytes(out)


def attempt(fn: Callable[[], T]) -> tuple[T | None, Error | None]:
    """Run ``fn``; a veriml error is an outcome, any other exception fails the test."""
    try:
        return fn(), None
    except Error as exc:
        return None, exc


VALID_ONNX = tiny_model().SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits)
def test_a_mutated_onnx_file_loads_or_is_invalid_model(
    changes: list[tuple[str, float, bytes]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "model.onnx").write_bytes(mutate(VALID_ONNX, changes))
        pkg, error = attempt(lambda: ModelPackage.load(Path(tmp)))
        if error is None:
            assert pkg is not None
            assert pkg.onnx_path == Path(tmp) / "model.onnx"
        else:
            assert isinstance(error, InvalidModel)
            assert error.evidence["path"] == str(Path(tmp) / "model.onnx")


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_any_front_matter_parses_or_is_invalid_model(body: str) -> None:
    _, error = attempt(lambda: ModelCard.from_text(f"---\n{body}\n---\n"))
    if error is not None:
        assert isinstance(error, InvalidModel)
        assert error.evidence["path"] == "README.md"


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits, st.booleans())
def test_a_mutated_bundle_fails_verification_or_proves_the_same_folder(
    changes: list[tuple[str, float, bytes]], in_payload: bool
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "m"
        model.mkdir()
        (model / "weights.bin").write_bytes(b"\x01" * 300)
        (model / "config.json").write_text("{}")
        key, pub = ec_key_pair(Path(tmp) / "keys")
        sig = sign_model(model, key)
        if in_payload:
            bundle = json.loads(sig.read_bytes())
            payload = base64.b64decode(bundle["dsseEnvelope"]["payload"])
            new = base64.b64encode(mutate(payload, changes)).decode()
            bundle["dsseEnvelope"]["payload"] = new
            sig.write_text(json.dumps(bundle))
        else:
            sig.write_bytes(mutate(sig.read_bytes(), changes))
        digest, error = attempt(lambda: verify_model(model, pub))
        if error is not None:
            assert isinstance(error, VerificationError)
            assert error.check
        else:
            # Only edits that leave the signed bytes alone (JSON whitespace, characters the
            # base64 decoder skips) can pass, and then they prove the same folder.
            assert digest == model_digest(model)
        shutil.rmtree(model)
