"""``veriml up --restart/--grace``: the restart policy is parsed as docker compose spells it,
and a bad one (or a bad grace) is a usage error before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from veriml.cli import app
from veriml.cli.up import parse_restart


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("on-failure", (True, 5)), ("on-failure:2", (True, 2)), ("no", (False, 1))],
)
def test_restart_specs_give_whether_and_how_often(spec: str, parsed: tuple[bool, int]) -> None:
    assert parse_restart(spec) == parsed


@pytest.mark.parametrize("spec", ["always", "on-failure:0", "on-failure:x", "no:3", ""])
def test_a_bad_restart_spec_is_refused(spec: str) -> None:
    with pytest.raises(typer.BadParameter):
        parse_restart(spec)


@pytest.mark.parametrize(
    "args", [["--restart", "always"], ["--grace", "-1"], ["--restart", "on-failure:-2"]]
)
def test_up_refuses_a_bad_restart_or_grace_before_anything_starts(
    tmp_path: Path, args: list[str]
) -> None:
    home = tmp_path / "home"
    done = CliRunner().invoke(
        app, ["up", "--nodes", "1", "--port", "0", "--home", str(home), *args]
    )
    assert done.exit_code == 2, done.output
    assert not home.exists()


def test_up_documents_restart_and_grace() -> None:
    shown = " ".join(CliRunner().invoke(app, ["up", "--help"]).output.split())
    assert "--restart" in shown
    assert "--grace" in shown
