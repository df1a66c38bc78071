"""ONNX validation: a model folder whose graph is mutated (bytes, or protobuf fields: opsets,
types, shapes, operators, external-data locations) loads or is an InvalidModelError naming the file,
and no external-data location outside the folder is ever accepted.

(Moved from tests/unit/models/test_models_fuzz.py, where mutating valid models found two
checker paths raising bare ValueError/UnicodeDecodeError; they are InvalidModelError since.)"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import onnx
from _fuzzing import attempt, fuzz_settings, mutated_bytes, pick
from hypothesis import example, given
from hypothesis import strategies as st
from onnx import TensorProto, helper

from veriml.core.errors import InvalidModelError
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp

BASE = build_mlp((4, 8, 3))
_FOLDER = Path(tempfile.mkdtemp(prefix="veriml-fuzz-onnx-"))
(_FOLDER / "weights.bin").write_bytes(bytes(1024))
(_FOLDER / "sub").mkdir()
MODEL = _FOLDER / "model.onnx"

LOCATIONS = ["weights.bin", "./weights.bin", "sub/../weights.bin", "../weights.bin", "/etc/passwd"]
LOCATIONS += ["C:\\w", "\\\\host\\share", "weights.bin\x00x", "", ".", "sub", "missing.bin"]
NUMBERS = ["0", "1", "-1", "1024", "1025", "99999999999999999999", " 1", "1_0", "0x10", "1e3", ""]
OPS = ["Gemm", "Relu", "Softmax", "Loop", "If", "Scan", "Reshape", "ConstantOfShape", "Resize"]
OPS += ["Unknown", "", "Identity", "Cast"]
_KEYS = st.lists(st.sampled_from(["location", "offset", "length", "checksum"]), max_size=4)


def _external(model: onnx.ModelProto, draw: st.DrawFn) -> None:
    tensor = pick(draw, model.graph.initializer)
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    del tensor.external_data[:]
    for key in draw(_KEYS):
        value = pick(draw, LOCATIONS if key == "location" else NUMBERS)
        tensor.external_data.add(key=key, value=value)


def _edit(model: onnx.ModelProto, draw: st.DrawFn) -> None:
    graph = model.graph
    what = draw(
        st.sampled_from(
            [
                "opset",
                "domain",
                "external",
                "op",
                "elem_type",
                "dim",
                "drop-io",
                "ir",
                "subgraph",
                "attribute",
                "function",
                "initializer-dims",
            ]
        )
    )
    versions = st.sampled_from([0, -1, 1, 6, 7, 17, 21, 22, 23, 99, 2**62])
    if what == "opset":
        model.opset_import[0].version = draw(versions)
    elif what == "domain":
        model.opset_import.add(
            domain=draw(st.sampled_from(["ai.onnx.ml", "com.x", "", "ai.onnx"])),
            version=draw(versions),
        )
    elif what == "external":
        _external(model, draw)
    elif what == "op":
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        node.op_type = draw(st.sampled_from(OPS))
    elif what in ("elem_type", "dim") and not [*graph.input, *graph.output]:
        return
    elif what == "elem_type":
        value = pick(draw, [*graph.input, *graph.output])
        value.type.tensor_type.elem_type = draw(st.integers(0, 30) | st.just(1000))
    elif what == "dim":
        value = pick(draw, [*graph.input, *graph.output])
        dims = value.type.tensor_type.shape.dim
        if dims:
            dim = dims[draw(st.integers(0, len(dims) - 1))]
            if draw(st.booleans()):
                dim.dim_value = draw(st.sampled_from([-1, 0, 1, 2**62]))
            else:
                dim.dim_param = draw(st.sampled_from(["", "batch", "\x00", "é"]))
    elif what == "drop-io":
        del (graph.input if draw(st.booleans()) else graph.output)[:]
    elif what == "ir":
        model.ir_version = draw(st.sampled_from([0, 1, 3, 7, 8, 10, 11, 99]))
    elif what == "subgraph":
        inner = helper.make_graph([], "inner", [], [])
        inner.initializer.extend([graph.initializer[0]])
        graph.node[0].attribute.append(helper.make_attribute("body", inner))
    elif what == "attribute":
        node = graph.node[draw(st.integers(0, len(graph.node) - 1))]
        attribute: Any = pick(draw, [1, 1.5, "s", [1, 2], graph.initializer[0]])
        node.attribute.append(
            helper.make_attribute(draw(st.sampled_from(["axis", "alpha", "x"])), attribute)
        )
    elif what == "function":
        model.functions.append(
            helper.make_function(
                "com.x", "F", ["a"], ["b"], [helper.make_node("Relu", ["a"], ["b"])], []
            )
        )
    else:
        tensor = graph.initializer[draw(st.integers(0, len(graph.initializer) - 1))]
        tensor.dims[:] = draw(st.lists(st.sampled_from([0, 1, 3, 2**40]), max_size=3))


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(BASE)
    for _ in range(draw(st.integers(1, 3))):
        _edit(model, draw)
    return bytes(model.SerializeToString())


VALID = BASE.SerializeToString()


def _with_location(location: str) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(BASE)
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.external_data.add(key="location", value=location)
    return bytes(model.SerializeToString())


inputs = st.one_of(structured(), structured(), mutated_bytes([VALID]), st.binary(max_size=200))


def _outside(location: str) -> bool:
    target = (_FOLDER / location).resolve()
    return not target.is_relative_to(_FOLDER.resolve())


@fuzz_settings(short=60)
@given(inputs)
# Found by this target: a NUL in an external-data location made Path.resolve() raise ValueError.
@example(_with_location("weights.bin\x00x"))
def test_a_mutated_model_loads_inside_its_folder_or_is_invalid_model(data: bytes) -> None:
    MODEL.write_bytes(data)
    package, error = attempt(
        lambda: ModelPackage.load(_FOLDER), allowed=(InvalidModelError,), size=len(data)
    )
    if error is not None:
        return
    assert package is not None
    proto = onnx.load_model(str(MODEL), load_external_data=False)
    for tensor in proto.graph.initializer:
        if tensor.data_location == TensorProto.EXTERNAL:
            location = {e.key: e.value for e in tensor.external_data}.get("location", "")
            assert location
            assert "\x00" not in location
            assert not _outside(location)
