"""``veriml model ...`` through the real entry point: JSON output, env vars, one-line errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from model_builders import set_external_location

from _llm import make_smollm2_folder
from veriml.core import generate_key
from veriml.models import ModelPackage, load_package


def veriml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VERIML_VERBOSE": "", **(env or {})},
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_inspect_json_shows_io_opsets_size_digest_and_card(model_dir: Path) -> None:
    done = veriml("model", "inspect", str(model_dir), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    pkg = ModelPackage.load(model_dir)
    assert info == pkg.to_json()
    assert info["io"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}]
    assert info["opsets"] == {"ai.onnx": 17}
    assert info["card"]["name"] == "tiny"
    table = veriml("model", "inspect", str(model_dir))
    assert "[batch, 4]" in table.stdout
    assert str(pkg.digest) in table.stdout


def test_inspect_shows_a_gguf_model_folder(tmp_path: Path) -> None:
    folder = make_smollm2_folder(tmp_path / "smollm2")
    done = veriml("model", "inspect", str(folder), "--json")
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info == load_package(folder).to_json()
    assert info["kind"] == "gguf"
    table = veriml("model", "inspect", str(folder))
    assert table.returncode == 0, table.stderr
    assert "gguf model.gguf" in table.stdout
    assert "llama" in table.stdout
    assert info["digest"] in table.stdout


def test_sign_then_verify_with_keys_from_the_environment(model_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "pub.key"
    generate_key("ec").save(key, passphrase=b"s3cret")
    env = {
        "VERIML_MODEL_KEY": str(key),
        "VERIML_MODEL_PUBKEY": f"{key}.pub",
        "MODEL_KEY_PASS": "s3cret",
    }
    signed = veriml(
        "model", "sign", str(model_dir), "--passphrase-env", "MODEL_KEY_PASS", "--json", env=env
    )
    assert signed.returncode == 0, signed.stderr
    assert "s3cret" not in signed.stdout + signed.stderr
    verified = veriml("model", "verify", str(model_dir), "--json", env=env)
    assert verified.returncode == 0, verified.stderr
    digest = json.loads(veriml("model", "digest", str(model_dir), "--json").stdout)["digest"]
    assert json.loads(signed.stdout)["digest"] == json.loads(verified.stdout)["digest"] == digest


def test_verify_with_the_wrong_key_exits_1_naming_the_check(
    model_dir: Path, ec_key: Path, tmp_path: Path
) -> None:
    assert veriml("model", "sign", str(model_dir), "--key", str(ec_key)).returncode == 0
    other = tmp_path / "other.key"
    generate_key("ec").save(other)
    done = veriml("model", "verify", str(model_dir), "--pubkey", f"{other}.pub")
    assert done.returncode == 1
    assert "public-key" in one_line_error(done)


def test_bad_input_exits_2_with_one_line(model_dir: Path, tmp_path: Path) -> None:
    node_key = tmp_path / "node.key"
    generate_key("ed25519").save(node_key)
    done = veriml("model", "sign", str(model_dir), "--key", str(node_key))
    assert done.returncode == 2
    assert "EC P-256 or P-384" in one_line_error(done)

    done = veriml("model", "verify", str(model_dir))
    assert done.returncode == 2
    assert "--pubkey or --certificate-chain" in done.stderr

    set_external_location(model_dir / "model.onnx", "../../etc/passwd")
    done = veriml("model", "inspect", str(model_dir))
    assert done.returncode == 2
    line = one_line_error(done)
    assert "escapes the model folder" in line
    assert "model.onnx" in line


def test_a_forced_progress_bar_shows_its_final_state_on_stderr_only(
    model_dir: Path, ec_key: Path, tmp_path: Path
) -> None:
    """``--progress`` draws the bar on stderr even off a terminal; stdout stays the JSON."""
    plain = veriml("model", "digest", str(model_dir), "--json")
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr == ""  # no terminal, not forced: nothing extra
    shown = veriml("model", "digest", str(model_dir), "--json", "--progress")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads(plain.stdout)
    assert "hashing" in shown.stderr
    assert "━" in shown.stderr  # the bar, drawn once as it ends: done equals the total
    assert re.search(r"(\d+(?:\.\d+)?)/\1 (?:bytes|kB|MB)", shown.stderr), shown.stderr
    sig = tmp_path / "tiny.sig"
    signed = veriml(
        "model", "sign", str(model_dir), "-k", str(ec_key), "-s", str(sig), "--progress"
    )
    assert signed.returncode == 0, signed.stderr
    assert "hashing" in signed.stderr
    quiet = veriml("model", "sign", str(model_dir), "-k", str(ec_key), "-s", str(sig))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == ""
