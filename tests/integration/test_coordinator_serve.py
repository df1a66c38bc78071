"""``veriml coordinator serve`` as a process: it prints what clients pin, serves the hub and
the log, and a restart (SIGTERM, then start again) keeps models, keys and the log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from _coordinator import make_signed_model
from _servers import free_port, start_process


def _serve(home: Path, port: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "veriml",
        "serve",
        "coordinator",
        "--home",
        str(home),
        "--port",
        str(port),
        *extra,
    ]


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_serve_coordinator_survives_a_restart_with_its_state(
    tmp_path: Path, request: pytest.FixtureRequest, database: str
) -> None:
    extra = ["--db", request.getfixturevalue("postgres_url")] if database == "postgres" else []
    home = tmp_path / "home"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    model = make_signed_model(tmp_path)
    output = tmp_path / "coordinator.out"
    with start_process(_serve(home, port, *extra), url_to_poll=url + "/healthz", output=output):
        info = httpx.get(url + "/v1/info").json()
        record = model.post(url)
        assert record.status_code == 201
        checkpoint = httpx.get(url + "/log/checkpoint").text
    printed = output.read_text()
    assert info["coordinator_key_id"] in printed
    assert info["log_vkey"] in printed
    assert "PRIVATE" not in printed
    with start_process(_serve(home, port, *extra), url_to_poll=url + "/healthz"):
        assert httpx.get(url + "/v1/info").json() == info
        assert httpx.get(url + "/log/checkpoint").text == checkpoint
        assert httpx.get(url + "/v1/models/mlp@1.0.0").json()["digest"] == record.json()["digest"]


def test_serve_coordinator_json_prints_what_clients_pin(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        _serve(tmp_path / "home", port, "--json"), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        lines = []
        while not lines or not lines[-1].startswith("}"):
            line = proc.stdout.readline()
            assert line, "coordinator serve exited before printing its JSON"
            lines.append(line)
        printed = json.loads("".join(lines))
        sidecar = json.loads((tmp_path / "home" / "coordinator" / "log.key.json").read_text())
        assert printed["log_vkey"] == sidecar["vkey"]
        assert printed["url"] == f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout:
            proc.stdout.close()
