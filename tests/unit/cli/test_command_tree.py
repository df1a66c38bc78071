"""The command tree reads ``veriml <noun> <verb>``; the old spellings still run, hidden; the
root prints its version, offers shell completion and documents its exit codes; ``veriml
config`` reads and writes the TOML settings file (docs/sdk.md, "Command line")."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

import veriml
from veriml.cli import app
from veriml.cli._common import EXIT_UNREACHABLE

runner = CliRunner()

OLD_TO_NEW = {
    ("serve", "coordinator"): ("coordinator", "serve"),
    ("serve", "node"): ("node", "serve"),
    ("models",): ("model", "list"),
    ("publish",): ("model", "publish"),
}


@pytest.mark.parametrize(("old", "new"), list(OLD_TO_NEW.items()))
def test_old_spellings_still_run_and_are_hidden(old: tuple[str, ...], new: tuple[str, ...]) -> None:
    for spelling in (old, new):
        done = runner.invoke(app, [*spelling, "--help"])
        assert done.exit_code == 0, done.output
    assert (
        runner.invoke(app, [*old, "--help"]).output.split("Options")[1]
        == runner.invoke(app, [*new, "--help"]).output.split("Options")[1]
    )


def test_the_root_help_lists_nouns_not_old_spellings() -> None:
    rows = {
        line.strip("│ ").split(" ")[0]
        for line in runner.invoke(app, ["--help"]).output.splitlines()
    }
    assert {"model", "node", "coordinator", "log", "witness", "config"} <= rows
    assert not {"serve", "models", "publish"} & rows


def test_version() -> None:
    done = runner.invoke(app, ["--version"])
    assert done.exit_code == 0
    assert done.output.strip() == f"veriml {veriml.__version__}"


def test_shell_completion_is_offered() -> None:
    shown = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in shown
    assert "--show-completion" in shown


def test_the_help_documents_the_exit_codes() -> None:
    shown = " ".join(runner.invoke(app, ["--help"]).output.split())
    assert "Exit codes: 0 success; 1 the evidence is wrong" in shown
    assert "3 the service could not be reached" in shown


def _veriml(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_an_unreachable_service_exits_3_and_wrong_evidence_exits_1(tmp_path: Path) -> None:
    unreachable = _veriml("log", "checkpoint", "http://127.0.0.1:9")
    assert unreachable.returncode == EXIT_UNREACHABLE == 3, unreachable.stderr
    assert "unreachable" in unreachable.stderr
    (tmp_path / "model.onnx").write_bytes(b"not the signed bytes")
    wrong = _veriml("model", "verify", str(tmp_path), "--pubkey", str(tmp_path / "none.pub"))
    assert wrong.returncode in (1, 2)  # no signature file: bad input, never "unreachable"
    usage = _veriml("model", "digest")
    assert usage.returncode == 2


def test_config_set_get_list_unset_and_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "conf" / "config.toml"
    monkeypatch.setenv("VERIML_CONFIG", str(config))
    for name in ("VERIML_HOME", "VERIML_URL", "VERIML_LOG_VKEY", "VERIML_CACHE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    assert runner.invoke(app, ["config", "path"]).output.strip() == str(config)
    assert runner.invoke(app, ["config", "get", "url"]).exit_code == 1  # unset
    assert runner.invoke(app, ["config", "set", "url", "http://x.example:1"]).exit_code == 0
    assert runner.invoke(app, ["config", "set", "home", str(tmp_path / "net")]).exit_code == 0
    assert tomllib.loads(config.read_text()) == {
        "url": "http://x.example:1",
        "home": str(tmp_path / "net"),
    }
    assert config.stat().st_mode & 0o077 == 0
    assert runner.invoke(app, ["config", "get", "url"]).output.strip() == "http://x.example:1"
    assert runner.invoke(app, ["config", "get", "home"]).output.strip() == str(tmp_path / "net")
    monkeypatch.setenv("VERIML_URL", "http://env.example")  # the environment wins over the file
    assert runner.invoke(app, ["config", "get", "url"]).output.strip() == "http://env.example"
    listed = runner.invoke(app, ["config", "list"]).output
    assert "url = http://env.example" in listed
    assert runner.invoke(app, ["config", "unset", "url"]).exit_code == 0
    assert "url" not in tomllib.loads(config.read_text())
    bad = runner.invoke(app, ["config", "set", "nope", "1"])
    assert bad.exit_code == 2


def test_the_home_comes_from_the_config_not_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from veriml.client import default_home, resolve_url

    config = tmp_path / "config.toml"
    config.write_text(f'home = "{tmp_path / "net"}"\n')
    monkeypatch.setenv("VERIML_CONFIG", str(config))
    monkeypatch.delenv("VERIML_HOME", raising=False)
    monkeypatch.delenv("VERIML_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_home() == tmp_path / "net"
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "network.json").write_text(
        '{"url": "http://net.example/", "log_vkey": "k"}'
    )
    assert resolve_url(None) == "http://net.example"
    monkeypatch.setenv("VERIML_HOME", str(tmp_path / "elsewhere"))  # the override still wins
    assert default_home() == tmp_path / "elsewhere"


@pytest.mark.parametrize(
    "command", [["--help"], ["model", "digest", "--help"], ["node", "serve", "--help"]]
)
def test_help_loads_no_heavy_stack(command: list[str]) -> None:
    """Each command imports what it uses inside its function (docs/sdk.md, "Command line")."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "veriml", *command],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    loaded = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()}
    heavy = {"onnx", "onnxruntime", "fastapi", "uvicorn", "sqlalchemy", "llama_cpp", "numpy"}
    assert not heavy & loaded
    assert not {m for m in loaded if m.startswith(("veriml.coordinator", "veriml.node"))}
