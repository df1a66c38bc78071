"""``veriml up --byzantine INDEX:MODE`` and ``veriml node serve --byzantine/--threads``: a bad
index or mode is a usage error (exit 2) before anything starts, and a good one reaches exactly
the node it names."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from veriml.cli import app
from veriml.client import LocalNetwork
from veriml.core.errors import FormatError


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--byzantine", "3:lazy"], "out of range"),
        (["--byzantine", "0:lying"], "is not one of"),
        (["--byzantine", "lazy"], "is not INDEX:MODE"),
        (["--byzantine", "-1:lazy"], "is not INDEX:MODE"),
        (["--byzantine", "0:lazy", "--byzantine", "0:replay"], "two modes"),
    ],
)
def test_up_refuses_a_bad_byzantine_spec_with_a_usage_error(
    tmp_path: Path, args: list[str], message: str
) -> None:
    home = tmp_path / "home"
    done = CliRunner().invoke(app, ["up", "--nodes", "3", "--home", str(home), *args])
    assert done.exit_code == 2, done.output
    assert message in " ".join(done.output.split())
    assert not home.exists()  # refused before anything started


def test_serve_node_refuses_an_unknown_mode_and_documents_the_option(tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["node", "serve", "--coordinator", "http://127.0.0.1:1", "--home", str(tmp_path)]
    done = runner.invoke(app, [*base, "--operator", "op", "--byzantine", "lying"])
    assert done.exit_code == 2, done.output
    assert runner.invoke(app, [*base, "--operator", "op", "--threads", "0"]).exit_code == 2
    shown = " ".join(runner.invoke(app, ["node", "serve", "--help"]).output.split())
    assert "--byzantine" in shown
    assert "TESTS AND DEMOS ONLY" in shown
    assert "--threads" in shown


def test_local_network_passes_modes_and_threads_to_the_nodes_it_names(tmp_path: Path) -> None:
    network = LocalNetwork(
        tmp_path, nodes=3, port=0, byzantine={0: "wrong-output", 2: "collude"}, threads={1: 2}
    )
    tails = [node.args[-4:] for node in network.nodes]
    assert tails[0][-2:] == ["--byzantine", "wrong-output"]
    assert tails[1][-2:] == ["--threads", "2"]
    assert "--byzantine" not in network.nodes[1].args
    assert tails[2][-2:] == ["--byzantine", "collude"]
    assert all("--threads" not in network.nodes[i].args for i in (0, 2))


@pytest.mark.parametrize(
    "options",
    [
        {"byzantine": {3: "lazy"}},
        {"byzantine": {-1: "lazy"}},
        {"byzantine": {0: "lying"}},
        {"threads": {0: 0}},
        {"threads": {5: 2}},
    ],
)
def test_local_network_refuses_bad_indices_modes_and_thread_counts(
    tmp_path: Path, options: dict[str, dict[int, object]]
) -> None:
    with pytest.raises(FormatError):
        LocalNetwork(tmp_path, nodes=3, port=0, **options)  # type: ignore[arg-type]
