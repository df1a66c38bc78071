"""``veriml up`` in the foreground with the client commands against it: publish, models, infer,
verify; SIGTERM stops every child and removes network.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

pytestmark = pytest.mark.slow

UP = [sys.executable, "-m", "veriml", "up"]


def _veriml(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **env},
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie child of the stopped launcher has exited too.
    return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_up_then_publish_infer_verify_and_sigterm_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"VERIML_HOME": str(home), "VERIML_URL": "", "VERIML_LOG_VKEY": ""}
    up = subprocess.Popen(
        [sys.executable, "-m", "veriml", "up", "--nodes", "2", "--port", "0", "--home", str(home)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
    )
    try:
        network_file = home / "network.json"
        deadline = time.monotonic() + 120
        while not network_file.exists():
            assert up.poll() is None, up.stdout.read() if up.stdout else ""
            assert time.monotonic() < deadline, "veriml up did not become ready"
            time.sleep(0.2)
        network = json.loads(network_file.read_text())
        assert len(network["nodes"]) == 2
        # One witness by default, and clients of this file require its cosignature.
        assert (len(network["witnesses"]), network["witness_quorum"]) == (1, 1)
        witness = network["witnesses"][0].split("+", 1)[0]
        children = [n["pid"] for n in network["nodes"]]

        folder = write_example_folder(tmp_path / "mlp", build_mlp((4, 8, 3), seed=5), name="mlp")
        generate_key("ec").save(tmp_path / "pub.key")
        published = _veriml(
            "publish", str(folder), "--key", str(tmp_path / "pub.key"), "--json", env=env
        )
        assert published.returncode == 0, published.stderr
        digest = json.loads(published.stdout)["digest"]
        assert (folder / "model.sig").is_file()  # signed on the way

        listed = _veriml("models", "--json", env=env)
        assert [m["digest"] for m in json.loads(listed.stdout)] == [digest]

        np.save(tmp_path / "x.npy", np.ones((1, 4), np.float32))
        out = tmp_path / "answer.json"
        inferred = _veriml(
            "infer",
            "mlp",
            "--input",
            str(tmp_path / "x.npy"),
            "--policy",
            "quorum:2/2",
            "--out",
            str(out),
            "--json",
            env=env,
        )
        assert inferred.returncode == 0, inferred.stderr
        summary = json.loads(inferred.stdout)
        assert summary["outcome"] == "accepted"
        assert summary["model"] == digest
        assert "inclusion" in summary["verified"]
        assert f"\u2014 {witness} " in json.loads(out.read_text())["log"]["checkpoint"]

        verified = _veriml("verify", str(out), env=env)
        assert verified.returncode == 0, verified.stderr
        assert "inference OK" in verified.stdout

        # A request signed with --sign-key is logged under that key, and still verifies.
        client_key = generate_key("ed25519")
        client_key.save(tmp_path / "client.key")
        signed_out = tmp_path / "signed.json"
        signed = _veriml(
            "infer",
            "mlp",
            "--input",
            str(tmp_path / "x.npy"),
            "--out",
            str(signed_out),
            "--sign-key",
            str(tmp_path / "client.key"),
            env=env,
        )
        assert signed.returncode == 0, signed.stderr
        assert json.loads(signed_out.read_text())["request"]["client"] == client_key.key_id
        assert _veriml("verify", str(signed_out), env=env).returncode == 0

        unknown = _veriml("infer", "no-such-model", "--input", str(tmp_path / "x.npy"), env=env)
        assert unknown.returncode == 2
        assert len(unknown.stderr.strip().splitlines()) == 1

        bad_policy = _veriml("infer", "mlp", "--policy", "most:3", env=env)
        assert bad_policy.returncode == 2
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        if up.stdout:
            up.stdout.close()
    assert up.returncode == 0
    assert not network_file.exists()
    assert all(_gone(pid) for pid in children)


def test_up_without_restarts_reports_its_only_node_dying_and_stops_the_rest(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    up = subprocess.Popen(
        [*UP, "--nodes", "1", "--port", "0", "--home", str(home), "--restart", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        network_file = home / "network.json"
        deadline = time.monotonic() + 120
        while not network_file.exists():
            assert up.poll() is None, up.stderr.read() if up.stderr else ""
            assert time.monotonic() < deadline, "veriml up did not become ready"
            time.sleep(0.2)
        node_pid = json.loads(network_file.read_text())["nodes"][0]["pid"]
        os.kill(node_pid, signal.SIGKILL)
        up.wait(timeout=60)
        stderr = up.stderr.read() if up.stderr else ""
    finally:
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            up.wait(timeout=60)
        if up.stderr:
            up.stderr.close()
    assert up.returncode == 1
    assert "node-1 exited" in stderr
    assert not network_file.exists()
