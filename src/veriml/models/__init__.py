"""Model packages: OMS digests and signatures, ONNX validation, IO signatures, blob store."""

from veriml.models.signature import Dim, IOSignature, TensorSpec, io_signature

__all__ = ["Dim", "IOSignature", "TensorSpec", "io_signature"]
