"""The public API is a promise: these names exist, and nothing else is public by accident."""

from __future__ import annotations

import subprocess
import sys

import veriml

PUBLIC = {
    "AsyncClient",
    "Client",
    "InferenceResult",
    "verify_inference_file",
    "Digest",
    "Envelope",
    "Error",
    "ModelPackage",
    "Profile",
    "RunResult",
    "SigningKey",
    "Statement",
    "VerificationError",
    "VerifiedReceipt",
    "VerifyingKey",
    "__version__",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "model_digest",
    "run",
    "sign_model",
    "tensor_digest",
    "verify_model",
    "verify_receipt",
}


def test_exported_names_are_pinned() -> None:
    assert set(veriml.__all__) == PUBLIC


def test_every_exported_name_resolves() -> None:
    for name in veriml.__all__:
        assert getattr(veriml, name) is not None, name


def test_errors_share_one_root() -> None:
    assert issubclass(veriml.VerificationError, veriml.Error)


def test_import_veriml_does_not_load_onnxruntime() -> None:
    code = "import sys, veriml; veriml.Digest; print('onnxruntime' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_lazy_export_table_matches_all() -> None:
    assert set(veriml._EXPORTS) | {"__version__"} == set(veriml.__all__)
