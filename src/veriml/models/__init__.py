"""Model packages: OMS digests and signatures, ONNX validation, IO signatures, blob store.

The public surface other packages build on::

    pkg = ModelPackage.load(Path("my-model"))       # validated; raises InvalidModel
    pkg.digest, pkg.onnx_path, pkg.io, pkg.load_proto()
    model_digest(Path("my-model"))                  # OMS root digest, sha256:<hex>
    sign_model(Path("my-model"), Path("publisher.key"))
    verify_model(Path("my-model"), Path("publisher.key.pub"))
    load_package(Path("smollm2"))                   # ModelPackage (ONNX) or LLMPackage (GGUF)
"""

from veriml.models.blobstore import BlobRef, BlobStore
from veriml.models.card import ModelCard
from veriml.models.certificates import CertifiedModel, verify_model_certificate
from veriml.models.digest import ManifestEntry, model_digest
from veriml.models.gguf import GGUFInfo, LLMPackage
from veriml.models.package import ModelPackage, load_package
from veriml.models.signature import Dim, IOSignature, TensorSpec, io_signature
from veriml.models.signing import sign_model, verify_model
from veriml.models.validate import Limits, validate_onnx

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
