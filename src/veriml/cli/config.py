"""``veriml config get|set|unset|list|path``: the settings file, like ``git config``.

The file is TOML in the user's config directory (``veriml config path``; ``$VERIML_CONFIG``
names another). Its keys are the SDK's settings (``home``, ``url``, ``log_vkey``,
``cache_dir``); ``VERIML_<KEY>`` variables, a ``.env`` file and a secrets directory override
it (docs/sdk.md, "Configuration"). ``get`` and ``list`` show the values in effect, wherever
they come from; ``set`` and ``unset`` change the file only.
"""

from __future__ import annotations

import os
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from veriml.cli._common import EXIT_FAILED, JsonOpt, console, fail, print_json

__all__ = ["app", "register"]

app = typer.Typer(help="Read and write veriml's settings file.", no_args_is_help=True)

KeyArg = Annotated[
    str, typer.Argument(help="home, url, log_vkey or cache_dir.", show_default=False)
]


def _effective() -> dict[str, str | None]:
    """Every key's value in effect; ``home`` and ``cache_dir`` with their defaults filled in."""
    from veriml.client import SETTINGS_KEYS, cache_dir, client_settings, default_home

    settings = client_settings()
    values = {k: getattr(settings, k) for k in SETTINGS_KEYS}
    values.update(home=default_home(), cache_dir=cache_dir())
    return {k: None if v is None else str(v) for k, v in values.items()}


def _checked(key: str) -> str:
    from veriml.client import SETTINGS_KEYS

    if key not in SETTINGS_KEYS:
        raise fail(f"unknown key {key!r}: one of {', '.join(SETTINGS_KEYS)}")
    return key


def _path() -> Path:
    from veriml.client import config_file

    return config_file()


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise fail(f"{path}: cannot read the config file ({exc})") from exc


def _write(path: Path, table: dict[str, Any]) -> None:
    """Replace the file atomically, readable by its owner only (it may hold a URL's token)."""
    import tomli_w

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".config.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            tomli_w.dump(table, f)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@app.command("get")
def get(key: KeyArg) -> None:
    """Print the value in effect for KEY (exit 1 when it has none)."""
    value = _effective()[_checked(key)]
    if value is None:
        raise typer.Exit(EXIT_FAILED)
    console.print(value, markup=False)


@app.command("set")
def set_(key: KeyArg, value: Annotated[str, typer.Argument(show_default=False)]) -> None:
    """Write KEY = VALUE to the config file."""
    path = _path()
    table = _read(path)
    table[_checked(key)] = value
    _write(path, table)


@app.command("unset")
def unset(key: KeyArg) -> None:
    """Remove KEY from the config file."""
    path = _path()
    table = _read(path)
    if table.pop(_checked(key), None) is not None:
        _write(path, table)


@app.command("list")
def list_(json_out: JsonOpt = False) -> None:
    """Print every setting in effect (environment, .env, secrets, then the config file)."""
    values = _effective()
    if json_out:
        print_json(values)
        return
    for key, value in values.items():
        console.print(f"{key} = {'' if value is None else value}", markup=False)


@app.command("path")
def path() -> None:
    """Print the config file's path (it may not exist yet)."""
    console.print(str(_path()), markup=False)


def register(root: typer.Typer) -> None:
    """Add the ``config`` group to the root app."""
    root.add_typer(app, name="config")
