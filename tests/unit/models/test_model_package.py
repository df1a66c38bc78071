"""Loading a model package validates it; every rejection names the file and the reason."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from model_builders import set_external_location, tiny_model, write_model_folder
from onnx import numpy_helper

from veriml.core import Digest
from veriml.core.errors import InvalidModelError
from veriml.models import IOSignature, Limits, ModelPackage, model_digest, validate_onnx
from veriml.models.signature import TensorSpec


def test_load_reports_io_opsets_size_digest_and_card(model_dir: Path) -> None:
    pkg = ModelPackage.load(model_dir)
    assert pkg.onnx_path == model_dir / "model.onnx"
    assert pkg.digest == model_digest(model_dir)
    assert pkg.io == IOSignature(
        inputs=(TensorSpec("x", "float32", ("batch", 4)),),
        outputs=(TensorSpec("y", "float32", ("batch", 3)),),
    )
    assert pkg.opsets == {"ai.onnx": 17}
    assert pkg.size == sum(p.stat().st_size for p in model_dir.iterdir())
    assert pkg.card is not None
    assert (pkg.card.name, pkg.card.version, pkg.card.task) == ("tiny", "1.0", "regression")


def test_the_manifest_binds_every_name_and_digest_under_the_root(model_dir: Path) -> None:
    (model_dir / "model.sig").write_text("{}")  # not part of the model
    pkg = ModelPackage.load(model_dir)
    assert [e.path for e in pkg.manifest] == ["README.md", "model.onnx", "weights.bin"]
    assert pkg.manifest[2].digest == Digest.of((model_dir / "weights.bin").read_bytes())
    assert pkg.digest == Digest.of(b"".join(e.digest.raw for e in pkg.manifest))


def test_load_proto_brings_the_external_weights(model_dir: Path) -> None:
    proto = ModelPackage.load(model_dir).load_proto()
    weights = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(weights["W"], np.arange(12, dtype=np.float32).reshape(4, 3))


def test_the_single_onnx_file_is_main_when_there_is_no_model_onnx(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m", onnx_name="classifier.onnx")
    assert ModelPackage.load(folder).onnx_path == folder / "classifier.onnx"


def test_several_onnx_files_without_model_onnx_are_ambiguous(tmp_path: Path) -> None:
    folder = write_model_folder(tmp_path / "m", onnx_name="a.onnx")
    write_model_folder(folder, onnx_name="b.onnx")
    with pytest.raises(InvalidModelError, match=r"several \.onnx files"):
        ModelPackage.load(folder)
    write_model_folder(folder)  # model.onnx settles it
    assert ModelPackage.load(folder).onnx_path == folder / "model.onnx"


def test_a_folder_without_onnx_is_refused(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# nothing")
    with pytest.raises(InvalidModelError, match=r"no \.onnx file"):
        ModelPackage.load(tmp_path)


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("../outside.bin", "escapes the model folder"),
        ("sub/../../outside.bin", "escapes the model folder"),
        ("/etc/passwd", "must be a relative path"),
        ("C:\\Windows\\win.ini", "must be a relative path"),
        ("", "must be a relative path"),
    ],
)
def test_external_data_traversal_is_refused_before_reading(
    model_dir: Path, location: str, reason: str
) -> None:
    (model_dir.parent / "outside.bin").write_bytes(b"\x00" * 64)
    set_external_location(model_dir / "model.onnx", location)
    with pytest.raises(InvalidModelError, match=reason) as info:
        ModelPackage.load(model_dir)
    assert info.value.evidence["path"] == str(model_dir / "model.onnx")
    assert info.value.evidence["location"] == location


def test_external_data_through_a_symlink_out_is_refused(model_dir: Path) -> None:
    outside = model_dir.parent / "secret"
    outside.mkdir()
    (outside / "weights.bin").write_bytes((model_dir / "weights.bin").read_bytes())
    os.symlink(outside, model_dir / "linked")
    set_external_location(model_dir / "model.onnx", "linked/weights.bin")
    with pytest.raises(InvalidModelError, match="symlink"):
        ModelPackage.load(model_dir)
    # validate_onnx alone (no folder walk) still proves the location stays inside.
    with pytest.raises(InvalidModelError, match="resolves outside"):
        validate_onnx(model_dir / "model.onnx", root=model_dir)


def test_missing_or_short_external_data_is_refused(model_dir: Path) -> None:
    weights = model_dir / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:10])
    with pytest.raises(InvalidModelError, match="past the end"):
        ModelPackage.load(model_dir)
    weights.unlink()
    with pytest.raises(InvalidModelError, match="missing"):
        ModelPackage.load(model_dir)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_a_truncated_onnx_file_is_refused_naming_it(tmp_path: Path, keep: float) -> None:
    folder = write_model_folder(tmp_path / "m")
    onnx_path = folder / "model.onnx"
    data = onnx_path.read_bytes()
    onnx_path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidModelError) as info:
        ModelPackage.load(folder)
    assert info.value.evidence["path"] == str(onnx_path)


@pytest.mark.parametrize("content", [b"", b"\xff" * 100, b"not a protobuf at all"])
def test_garbage_is_not_a_model(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "model.onnx").write_bytes(content)
    with pytest.raises(InvalidModelError) as info:
        ModelPackage.load(tmp_path)
    assert info.value.evidence["path"] == str(tmp_path / "model.onnx")


def test_an_invalid_graph_fails_the_onnx_checker(tmp_path: Path) -> None:
    model = tiny_model()
    model.graph.node[0].input[1] = "undefined_weight"
    onnx.save_model(model, str(tmp_path / "model.onnx"))
    with pytest.raises(InvalidModelError, match="checker rejects"):
        ModelPackage.load(tmp_path)


@pytest.mark.parametrize("opset", [6, onnx.defs.onnx_opset_version() + 1])
def test_an_opset_outside_the_allowed_range_is_refused(tmp_path: Path, opset: int) -> None:
    onnx.save_model(tiny_model(opset=opset), str(tmp_path / "model.onnx"))
    with pytest.raises(InvalidModelError, match="unsupported opset") as info:
        ModelPackage.load(tmp_path)
    assert info.value.evidence["opset"] == opset


def test_the_opset_range_is_a_limit(model_dir: Path) -> None:
    with pytest.raises(InvalidModelError, match="unsupported opset"):
        ModelPackage.load(model_dir, limits=Limits(min_opset=18))


def test_limits_on_file_count_and_folder_size_apply_before_reading(model_dir: Path) -> None:
    with pytest.raises(InvalidModelError, match="too many files"):
        ModelPackage.load(model_dir, limits=Limits(max_files=2))
    with pytest.raises(InvalidModelError, match="too large"):
        ModelPackage.load(model_dir, limits=Limits(max_total_bytes=100))
    with pytest.raises(InvalidModelError, match="ONNX file is too large"):
        ModelPackage.load(model_dir, limits=Limits(max_onnx_bytes=10))
    with pytest.raises(InvalidModelError, match="model card is too large"):
        ModelPackage.load(model_dir, limits=Limits(max_card_bytes=10))


def test_a_sparse_huge_file_is_rejected_from_stat(model_dir: Path) -> None:
    # 1 TiB apparent size, no disk used: rejected from stat, never read or hashed.
    with (model_dir / "huge.bin").open("wb") as f:
        f.truncate(1 << 40)
    with pytest.raises(InvalidModelError, match="too large"):
        ModelPackage.load(model_dir)


def test_special_files_and_symlinks_in_the_folder_are_refused(model_dir: Path) -> None:
    os.mkfifo(model_dir / "pipe")
    with pytest.raises(InvalidModelError, match="special file"):
        ModelPackage.load(model_dir)
    os.unlink(model_dir / "pipe")
    os.symlink("/etc/hostname", model_dir / "host")
    with pytest.raises(InvalidModelError, match="symlink"):
        ModelPackage.load(model_dir)


def test_load_proto_rechecks_locations_changed_after_load(model_dir: Path) -> None:
    pkg = ModelPackage.load(model_dir)
    set_external_location(model_dir / "model.onnx", "../outside.bin")
    with pytest.raises(InvalidModelError, match="escapes"):
        pkg.load_proto()
