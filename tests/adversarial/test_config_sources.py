"""Red team: a ``.env`` file in the directory a command runs in cannot choose what the client
trusts (docs/threat-model.md §4). A repository or download folder may carry one; it may name
a coordinator URL (every answer is still checked), never the pinned log key or the home whose
``network.json`` pins a key and its witnesses."""

from __future__ import annotations

from pathlib import Path

import pytest

from veriml.client import client_settings, default_home, resolve_url


def test_a_dotenv_in_the_working_directory_cannot_pin_a_log_key_or_move_the_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    planted = tmp_path / "elsewhere"
    (tmp_path / ".env").write_text(
        "VERIML_LOG_VKEY=evil.example/log+00000000+AAAA\n"
        f"VERIML_HOME={planted}\n"
        "VERIML_URL=http://127.0.0.1:9/\n"
    )
    monkeypatch.chdir(tmp_path)
    settings = client_settings()
    assert settings.log_vkey is None
    assert settings.home is None
    assert default_home() != planted
    assert resolve_url(None) == "http://127.0.0.1:9"  # not a trust anchor: answers are checked


def test_the_user_still_sets_them_in_the_environment_and_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VERIML_LOG_VKEY", "mine.example/log+00000000+AAAA")
    assert client_settings().log_vkey == "mine.example/log+00000000+AAAA"
    config = Path(str(tmp_path / "config.toml"))
    config.write_text(f'home = "{tmp_path / "home"}"\n')
    monkeypatch.setenv("VERIML_CONFIG", str(config))
    assert default_home() == tmp_path / "home"
