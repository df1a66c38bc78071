"""The public surface of ``veriml.models`` that other packages build on is pinned."""

from __future__ import annotations

import veriml.models


def test_public_names_are_pinned() -> None:
    assert sorted(veriml.models.__all__) == [
        "BlobRef",
        "BlobStore",
        "CertifiedModel",
        "Dim",
        "GGUFInfo",
        "IOSignature",
        "LLMPackage",
        "Limits",
        "ManifestEntry",
        "ModelCard",
        "ModelPackage",
        "TensorSpec",
        "io_signature",
        "load_package",
        "model_digest",
        "sign_model",
        "validate_onnx",
        "verify_model",
        "verify_model_certificate",
    ]
    for name in veriml.models.__all__:
        assert getattr(veriml.models, name) is not None
