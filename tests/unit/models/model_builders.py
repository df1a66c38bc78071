"""Tiny real ONNX models and model folders for the model-package tests, built with onnx.helper."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import onnx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from onnx import TensorProto, helper, numpy_helper

from veriml.core import generate_key


def tiny_model(*, opset: int = 17, weight_name: str = "W") -> onnx.ModelProto:
    """y = x @ W + b, with a symbolic batch dimension: float32[batch, 4] -> float32[batch, 3]."""
    w = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), weight_name)
    b = numpy_helper.from_array(np.ones(3, dtype=np.float32), "b")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", weight_name], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w, b],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def write_model_folder(
    folder: Path,
    *,
    external: bool = False,
    opset: int = 17,
    readme: str | None = None,
    onnx_name: str = "model.onnx",
) -> Path:
    """A model folder holding ``onnx_name`` (weights in ``weights.bin`` if ``external``)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_model(opset=opset)
    if external:
        onnx.save_model(
            model,
            str(folder / onnx_name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
            size_threshold=0,
        )
    else:
        onnx.save_model(model, str(folder / onnx_name))
    if readme is not None:
        (folder / "README.md").write_text(readme)
    return folder


def set_external_location(onnx_path: Path, location: str) -> None:
    """Point every external tensor of the model at ``location`` (without loading the data)."""
    model = onnx.load_model(str(onnx_path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx_path.write_bytes(model.SerializeToString())


def ec_key_pair(
    folder: Path, name: str = "publisher.key", curve: str = "P-256"
) -> tuple[Path, Path]:
    """A fresh EC private key file (0600) and its ``.pub``, as ``veriml key new`` writes them."""
    folder.mkdir(parents=True, exist_ok=True)
    key = folder / name
    generate_key("ec", curve=curve).save(key)
    return key, folder / f"{name}.pub"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=not (sign or ca),  # an encryption-only certificate
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def certificate_chain(
    folder: Path, *, email: str = "publisher@example.com", can_sign: bool = True
) -> tuple[Path, Path, Path]:
    """(root CA PEM, signing certificate PEM, its private key) for certificate signing."""
    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("veriml test root"))
        .issuer_name(_name("veriml test root"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(sign=False, ca=True), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("Example Publisher"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(_usage(sign=can_sign, ca=False), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    root, cert, key = folder / "root.pem", folder / "signer.pem", folder / "signer.key"
    root.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key.chmod(0o600)
    return root, cert, key
