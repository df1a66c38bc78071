"""Progress bars of the long commands (docs/models.md, "Progress"): drawn on stderr when it is a
terminal or ``--progress`` forces it, never on stdout, so ``--json`` output stays clean; nothing
extra is printed without a terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from _coordinator import make_signed_model, running_coordinator
from veriml.cli._common import progress_bar

# Done equals the total in the bar's last frame: "12.3/12.3 kB".
FINISHED = re.compile(r"(\d+(?:\.\d+)?)/\1 (?:bytes|kB|MB)")


def _veriml(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "veriml", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "VERIML_VERBOSE": "", "VERIML_HOME": str(home), "VERIML_URL": ""},
    )


def test_publish_shows_the_upload_bar_when_forced_and_nothing_otherwise(tmp_path: Path) -> None:
    first = make_signed_model(tmp_path / "models", name="m", seed=1)
    second = make_signed_model(tmp_path / "models", name="n", seed=2)
    with running_coordinator(tmp_path / "coordinator") as (url, _):
        for model, forced in ((first, True), (second, False)):
            key = next(model.folder.parent.glob(f"{model.folder.name}.key"))
            args = ["model", "publish", str(model.folder), "-k", str(key), "-c", url, "--json"]
            done = _veriml(*args, *(["--progress"] if forced else []), home=tmp_path / "home")
            assert done.returncode == 0, done.stderr
            assert json.loads(done.stdout)["name"] == model.folder.name.split("-")[0]
            if forced:
                assert "uploading" in done.stderr
                assert FINISHED.search(done.stderr), done.stderr
            else:
                assert done.stderr == ""


def test_the_bar_is_off_without_a_terminal_unless_forced() -> None:
    with progress_bar("hashing") as progress:
        assert progress is None
    with progress_bar("hashing", forced=True) as progress:
        assert progress is not None
        progress(5, 10)
        progress(10, 10)
