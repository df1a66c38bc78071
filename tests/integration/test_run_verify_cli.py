"""`veriml run` and `veriml verify` as a user runs them: a real process, real files.

Exit codes: 0 verified, 1 a named check failed, 2 bad input; errors are one line, no traceback.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from veriml.cli import main
from veriml.cli._common import state
from veriml.models.examples import build_mlp, write_example_folder


class Proc:
    """What a finished ``veriml`` invocation left behind."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def veriml(*args: str | Path, env: dict[str, str] | None = None) -> Proc:
    """Run the real console entry point (``veriml.cli.main``) in this process.

    Same code path as the installed script, without paying interpreter and onnxruntime start-up
    per call; :func:`test_the_installed_entry_point_runs_and_verifies` covers the real process.
    """
    saved_argv, saved_env = sys.argv, dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    try:
        for key in [k for k in os.environ if k.startswith("VERIML_")]:
            del os.environ[key]
        os.environ.update(env or {})
        sys.argv = ["veriml", *map(str, args)]
        state.verbose = False
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main()
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
            except Exception:  # --verbose re-raises: render it as the process would
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)
        state.verbose = False
    return Proc(code, out.getvalue(), err.getvalue())


def one_line_error(proc: Proc) -> str:
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cli")
    model = write_example_folder(d / "mlp", build_mlp((16, 32, 3)), name="mlp")
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32))
    assert veriml("key", "new", "--out", d / "node.key").returncode == 0
    assert veriml("key", "new", "--out", d / "other.key").returncode == 0
    proc = veriml(
        "run",
        model,
        "--input",
        d / "x.npy",
        "--key",
        d / "node.key",
        "--out",
        d / "r.json",
        "--trace",
    )
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout
    return {"dir": d, "model": model, "result": d / "r.json", "pub": d / "node.key.pub"}


def test_run_then_verify_with_reexecution_succeeds_in_one_line(setup: dict[str, Path]) -> None:
    proc = veriml(
        "verify",
        setup["result"],
        "--pubkey",
        setup["pub"],
        "--model",
        setup["model"],
        "--reexecute",
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("receipt OK: outputs probs of model sha256:")
    assert "reexecution" in lines[0]


def test_verify_json_reports_the_checks_and_reads_the_key_from_the_environment(
    setup: dict[str, Path],
) -> None:
    proc = veriml(
        "verify", setup["result"], "--json", env={"VERIML_NODE_PUBKEY": str(setup["pub"])}
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True
    assert report["checks"][:4] == [
        "signature",
        "statement-type",
        "predicate-type",
        "output-digest",
    ]
    assert report["predicate"]["trace"]["size"] == 4


def _tampered(setup: dict[str, Path], name: str, change: object) -> Path:
    doc = json.loads(setup["result"].read_text())
    change(doc)  # type: ignore[operator]
    path = setup["dir"] / name
    path.write_text(json.dumps(doc))
    return path


def test_a_tampered_output_value_exits_1_naming_output_digest(setup: dict[str, Path]) -> None:
    def bump(doc: dict) -> None:
        doc["outputs"]["probs"]["data"][0][0] = 0.25

    proc = veriml("verify", _tampered(setup, "t1.json", bump), "--pubkey", setup["pub"])
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("error: output-digest:")


def test_a_tampered_receipt_payload_exits_1_naming_signature(setup: dict[str, Path]) -> None:
    def edit(doc: dict) -> None:
        payload = base64.b64decode(doc["receipt"]["payload"]).replace(b'"none"', b'"zk"')
        doc["receipt"]["payload"] = base64.b64encode(payload).decode()

    proc = veriml("verify", _tampered(setup, "t2.json", edit), "--pubkey", setup["pub"])
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("error: signature:")


def test_the_wrong_node_key_exits_1_naming_signature(setup: dict[str, Path]) -> None:
    proc = veriml("verify", setup["result"], "--pubkey", setup["dir"] / "other.key.pub")
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("error: signature:")


def test_a_model_folder_modified_after_the_run_exits_1_naming_model_digest(
    setup: dict[str, Path],
) -> None:
    changed = write_example_folder(setup["dir"] / "changed", build_mlp((16, 32, 3)), name="mlp")
    (changed / "README.md").write_text((changed / "README.md").read_text() + "\nedited\n")
    proc = veriml("verify", setup["result"], "--pubkey", setup["pub"], "--model", changed)
    assert proc.returncode == 1
    assert one_line_error(proc).startswith("error: model-digest:")


def test_named_inputs_and_json_tensors_are_accepted(tmp_path: Path, setup: dict[str, Path]) -> None:
    x = {"dtype": "float32", "shape": [1, 16], "data": [[0.5] * 16]}
    (tmp_path / "x.json").write_text(json.dumps(x))
    (tmp_path / "named.json").write_text(json.dumps({"x": x}))
    for spec in (f"x={tmp_path / 'x.json'}", str(tmp_path / "named.json")):
        out = tmp_path / "out.json"
        proc = veriml(
            "run",
            setup["model"],
            "--input",
            spec,
            "--key",
            setup["dir"] / "node.key",
            "--out",
            out,
            "--force",
            "--json",
        )
        assert proc.returncode == 0, proc.stderr
        assert list(json.loads(proc.stdout)["outputs"]) == ["probs"]
        assert json.loads(out.read_text())["inputs"]["x"]["shape"] == [1, 16]


def _write_traversal_model(folder: Path) -> Path:
    folder.mkdir()
    weights = numpy_helper.from_array(np.ones((16, 3), np.float32), "w")
    weights.ClearField("raw_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../outside.bin"), ("offset", "0"), ("length", "192")):
        entry = weights.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "traversal",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weights],
    )
    (folder.parent / "outside.bin").write_bytes(b"\0" * 192)
    onnx.save_model(helper.make_model(graph), folder / "model.onnx")
    return folder


@pytest.mark.parametrize(
    "case",
    [
        "malformed-json",
        "wrong-dtype",
        "wrong-shape",
        "truncated-npy",
        "truncated-onnx",
        "traversal",
        "two-unnamed",
    ],
)
def test_bad_input_exits_2_with_one_line_and_no_traceback(
    case: str, tmp_path: Path, setup: dict[str, Path]
) -> None:
    model = setup["model"]
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((1, 16), np.float32))
    if case == "malformed-json":
        x = tmp_path / "x.json"
        x.write_text('{"dtype": "float32", "shape": [1, 16], "data": [1, 2')
    elif case == "wrong-dtype":
        np.save(x, np.zeros((1, 16), np.float64))
    elif case == "wrong-shape":
        np.save(x, np.zeros((1, 15), np.float32))
    elif case == "truncated-npy":
        x.write_bytes(x.read_bytes()[:-7])
    elif case == "truncated-onnx":
        model = tmp_path / "m"
        model.mkdir()
        data = (setup["model"] / "model.onnx").read_bytes()
        (model / "model.onnx").write_bytes(data[: len(data) // 2])
    elif case == "traversal":
        model = _write_traversal_model(tmp_path / "m")
    extra = ["--input", str(x)] if case == "two-unnamed" else []
    proc = veriml(
        "run",
        model,
        "--input",
        x,
        *extra,
        "--key",
        setup["dir"] / "node.key",
        "--out",
        tmp_path / "r.json",
    )
    assert proc.returncode == 2, proc.stderr
    one_line_error(proc)
    assert not (tmp_path / "r.json").exists()


def test_verbose_shows_the_traceback(tmp_path: Path, setup: dict[str, Path]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((1, 15), np.float32))
    proc = veriml(
        "--verbose",
        "run",
        setup["model"],
        "--input",
        tmp_path / "x.npy",
        "--key",
        setup["dir"] / "node.key",
        "--out",
        tmp_path / "r.json",
    )
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert "InvalidInputError" in proc.stderr


def test_verify_usage_errors_exit_2(setup: dict[str, Path]) -> None:
    assert veriml("verify", setup["result"]).returncode == 2  # no trusted key
    proc = veriml("verify", setup["result"], "--pubkey", setup["pub"], "--reexecute")
    assert proc.returncode == 2
    assert "--model" in one_line_error(proc)


def test_the_installed_entry_point_runs_and_verifies(
    tmp_path: Path, setup: dict[str, Path]
) -> None:
    def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "veriml", *map(str, args)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    out = tmp_path / "r.json"
    key = setup["dir"] / "node.key"
    ran = cli("run", setup["model"], "--input", setup["dir"] / "x.npy", "--key", key, "--out", out)
    assert ran.returncode == 0, ran.stderr
    ok = cli("verify", out, "--pubkey", setup["pub"], "--model", setup["model"], "--reexecute")
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("receipt OK")
    bad = cli("verify", out, "--pubkey", setup["dir"] / "other.key.pub")
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: signature:")
    assert "Traceback" not in bad.stderr
