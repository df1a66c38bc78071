"""veriml and the ``model_signing`` CLI accept each other's model signatures, both ways.

Both tools run as real subprocesses, as users run them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from veriml.core import generate_key


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env={**os.environ, "VERIML_VERBOSE": ""},
    )


@pytest.fixture
def model(tmp_path: Path) -> Path:
    """A model folder with an ONNX graph, external weights, a card and a .git folder."""
    folder = tmp_path / "interop-model"
    folder.mkdir()
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [w],
    )
    onnx.save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    (folder / "README.md").write_text("---\nname: interop\n---\n")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return folder


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key = tmp_path / "publisher.key"
    generate_key("ec").save(key)
    return key, Path(f"{key}.pub")


def test_model_signing_cli_signature_verifies_with_veriml(
    model: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, pub = keys
    sig = model / "model.sig"
    signed = run(
        "model_signing", "sign", "key", str(model), "--private_key", str(key),
        "--signature", str(sig),
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    verified = run("veriml", "model", "verify", str(model), "--pubkey", str(pub), "--json")
    assert verified.returncode == 0, verified.stderr
    digest = run("veriml", "model", "digest", str(model), "--json")
    assert json.loads(verified.stdout)["digest"] == json.loads(digest.stdout)["digest"]

    (model / "tokenizer" / "vocab.txt").write_text("a\nb\nc\n")
    tampered = run("veriml", "model", "verify", str(model), "--pubkey", str(pub))
    assert tampered.returncode == 1
    assert "tokenizer/vocab.txt was modified" in tampered.stderr
    assert len(tampered.stderr.strip().splitlines()) == 1
    assert "Traceback" not in tampered.stderr


def test_veriml_signature_verifies_with_model_signing_cli(
    model: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, pub = keys
    signed = run("veriml", "model", "sign", str(model), "--key", str(key))
    assert signed.returncode == 0, signed.stderr
    sig = model / "model.sig"
    verify = (
        "model_signing", "verify", "key", str(model), "--public_key", str(pub),
        "--signature", str(sig),
    )  # fmt: skip
    verified = run(*verify)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "Verification succeeded" in verified.stdout

    (model / "weights.bin").write_bytes(b"\x00" * 36)
    tampered = run(*verify)
    assert tampered.returncode != 0
    assert "weights.bin" in tampered.stdout + tampered.stderr


def test_signature_kept_outside_the_folder_interoperates(
    model: Path, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    key, pub = keys
    sig = tmp_path / "release.sig"
    signed = run("veriml", "model", "sign", str(model), "--key", str(key), "--signature", str(sig))
    assert signed.returncode == 0, signed.stderr
    verified = run(
        "model_signing", "verify", "key", str(model), "--public_key", str(pub),
        "--signature", str(sig),
    )  # fmt: skip
    assert verified.returncode == 0, verified.stdout + verified.stderr
