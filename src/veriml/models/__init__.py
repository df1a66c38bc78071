"""Model packages: OMS digests and signatures, ONNX validation, IO signatures, blob store.

The public surface other packages build on::

    pkg = ModelPackage.load(Path("my-model"))       # validated; raises InvalidModelError
    pkg.digest, pkg.onnx_path, pkg.io, pkg.load_proto()
    model_digest(Path("my-model"))                  # OMS root digest, sha256:<hex>
    sign_model(Path("my-model"), Path("publisher.key"))
    verify_model(Path("my-model"), Path("publisher.key.pub"))
    load_package(Path("smollm2"))                   # ModelPackage (ONNX) or LLMPackage (GGUF)

Each name loads its module on first use: a digest or a signature check never imports ONNX
(which needs the ``node`` extra), and ``veriml model digest`` starts as fast as model_signing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from veriml.core.lazy import lazy_exports

# name -> the module of veriml.models that defines it
_EXPORTS: dict[str, str] = {
    "BlobRef": "blobstore",
    "BlobStore": "blobstore",
    "ModelCard": "card",
    "CertifiedModel": "certificates",
    "verify_model_certificate": "certificates",
    "ManifestEntry": "digest",
    "model_digest": "digest",
    "GGUFInfo": "gguf",
    "LLMPackage": "gguf",
    "ModelPackage": "package",
    "load_package": "package",
    "Dim": "signature",
    "IOSignature": "signature",
    "TensorSpec": "signature",
    "io_signature": "signature",
    "sign_model": "signing",
    "verify_model": "signing",
    "Limits": "validate",
    "validate_onnx": "validate",
}

__all__ = [
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

if TYPE_CHECKING:
    from veriml.models.blobstore import BlobRef, BlobStore
    from veriml.models.card import ModelCard
    from veriml.models.certificates import CertifiedModel, verify_model_certificate
    from veriml.models.digest import ManifestEntry, model_digest
    from veriml.models.gguf import GGUFInfo, LLMPackage
    from veriml.models.package import ModelPackage, load_package
    from veriml.models.signature import Dim, IOSignature, TensorSpec, io_signature
    from veriml.models.signing import sign_model, verify_model
    from veriml.models.validate import Limits, validate_onnx


__getattr__, __dir__ = lazy_exports(__name__, {n: f".{m}" for n, m in _EXPORTS.items()})
