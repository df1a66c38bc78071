"""Tiny real ONNX models and model folders for the model-package tests, built with onnx.helper."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
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
