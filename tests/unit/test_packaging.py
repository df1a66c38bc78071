"""The base install runs the SDK's offline commands; a missing extra is one line naming the fix.

Each command runs in a fresh interpreter where the extras' modules cannot be imported
(``sys.modules[name] = None``: ``import`` raises ModuleNotFoundError and
``importlib.util.find_spec`` answers None, as for a module that is not installed). That is
what ``pip install veriml`` without extras gives (docs/models.md, "Installing").
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from veriml._extras import EXTRAS, MissingExtraError, check, extra_for, missing_extra, require
from veriml.core import generate_key
from veriml.models import model_digest

# Everything an extra brings: none of it may be needed by the base commands.
NOT_IN_BASE = sorted({m for mods in EXTRAS.values() for m in mods})

_RUN = """
import sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = ["veriml", *sys.argv[2:]]
from veriml.cli import main
main()
"""


def base_veriml(*args: str, blocked: list[str] = NOT_IN_BASE) -> subprocess.CompletedProcess[str]:
    """``veriml ARGS`` as a base install runs it: without the modules of ``blocked``."""
    return subprocess.run(
        [sys.executable, "-c", _RUN, ",".join(blocked), *args],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 4096)
    (folder / "sub" / "config.json").write_text('{"layers": 2}')
    return folder


def test_help_needs_no_extra() -> None:
    done = base_veriml("--help")
    assert done.returncode == 0, done.stderr
    assert "model" in done.stdout


def test_model_digest_needs_no_extra_and_matches_model_signing(model_dir: Path) -> None:
    done = base_veriml("model", "digest", str(model_dir), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["digest"] == str(model_digest(model_dir))


def test_model_sign_and_verify_need_no_extra(model_dir: Path, tmp_path: Path) -> None:
    key = tmp_path / "publisher.key"
    generate_key("ec").save(key)
    signed = base_veriml("model", "sign", str(model_dir), "--key", str(key))
    assert signed.returncode == 0, signed.stderr
    verified = base_veriml("model", "verify", str(model_dir), "--pubkey", f"{key}.pub", "--json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["digest"] == str(model_digest(model_dir))


@pytest.fixture(scope="module")
def saved_answer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """A network answer saved as ``veriml infer --out`` writes it, and the log key to pin."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(Path(__file__).parent / "verify"))
        from _logged_nodes import model_network
        from test_verify_inference import _answer

        tmp = tmp_path_factory.mktemp("answer")
        with model_network(tmp / "net", 3) as net:
            yield _answer(net, "quorum:3/2").save(tmp / "answer.json"), net.vkey


def test_verify_of_a_saved_answer_needs_no_extra(saved_answer: tuple[Path, str]) -> None:
    path, vkey = saved_answer
    done = base_veriml("verify", str(path), "--log-vkey", vkey, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["checks"][-1] == "verdict"


SERVER_COMMANDS = [
    (("coordinator", "serve"), "server"),
    (("node", "serve", "--coordinator", "http://127.0.0.1:9", "--home", "{tmp}"), "node"),
    (("log", "serve", "--db", "sqlite:///{tmp}/log.db", "--key", "{tmp}/log.key"), "server"),
    (("witness", "serve", "--key", "{tmp}/w.key", "--log", "{tmp}/log.vkey"), "server"),
]


@pytest.mark.parametrize(("command", "extra"), SERVER_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_server_command_shows_its_help_without_its_extra(
    command: tuple[str, ...], extra: str
) -> None:
    done = base_veriml(*command[:2], "--help")
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize(("command", "extra"), SERVER_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_a_server_command_without_its_extra_names_the_install_in_one_line(
    command: tuple[str, ...], extra: str, tmp_path: Path
) -> None:
    done = base_veriml(*(arg.format(tmp=tmp_path) for arg in command))
    assert done.returncode == 2, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith(f"error: this needs the '{extra}' extra: pip install 'veriml[{extra}]'")


def test_importing_a_guarded_package_without_its_extra_raises_missing_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import veriml\n"
        "try:\n"
        "    import veriml.coordinator\n"
        "except ModuleNotFoundError as exc:\n"
        "    print(type(exc).__name__, exc.name, exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout.strip() == (
        "MissingExtraError sqlalchemy this needs the 'server' extra: "
        "pip install 'veriml[server]' (module=sqlalchemy)"
    )


def test_every_extra_module_maps_to_the_first_extra_that_installs_it() -> None:
    assert extra_for("onnxruntime.capi") == "node"
    assert extra_for("uvicorn") == "server"
    assert extra_for("llama_cpp") == "llm"
    assert extra_for("sqlalchemy.engine") == "server"
    assert extra_for("psycopg") == "postgres"
    assert extra_for("numpy") is None


def test_missing_extra_turns_a_known_module_not_found_into_one_line() -> None:
    with pytest.raises(MissingExtraError) as caught, missing_extra():
        raise ModuleNotFoundError("No module named 'llama_cpp'", name="llama_cpp")
    assert caught.value.diagnostics() == (
        "this needs the 'llm' extra: pip install 'veriml[llm]' (module=llama_cpp)"
    )
    assert caught.value.exit_code == 2
    assert isinstance(caught.value, ImportError)


def test_missing_extra_leaves_other_import_errors_alone() -> None:
    with pytest.raises(ModuleNotFoundError) as caught, missing_extra():
        raise ModuleNotFoundError("No module named 'nope'", name="nope")
    assert not isinstance(caught.value, MissingExtraError)


def test_installed_extras_pass(monkeypatch: Any) -> None:
    # The dev install has every extra; checking them imports nothing.
    for extra in ("node", "server", "demo"):
        require(extra)
    check("veriml.coordinator.app")
    check("veriml.verify.answer")
