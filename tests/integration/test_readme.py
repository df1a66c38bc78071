"""README examples must run: every ``python`` block executes, every CLI command it shows exists."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
TEXT = README.read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SHELL_BLOCKS = re.findall(r"```sh\n(.*?)```", TEXT, flags=re.S)
COMMANDS = sorted(
    {
        tuple(line.split("#")[0].split()[1:3])
        for block in SHELL_BLOCKS
        for line in block.splitlines()
        if line.startswith("veriml ")
    }
)


@pytest.mark.parametrize(
    "code", PYTHON_BLOCKS, ids=[f"python-{i}" for i in range(len(PYTHON_BLOCKS))]
)
def test_python_example_runs(code: str, tmp_path: Path) -> None:
    code = code.replace('Path("/tmp/', f'Path("{tmp_path}/')
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("words", COMMANDS, ids=[" ".join(w) for w in COMMANDS])
def test_cli_command_shown_in_readme_exists(words: tuple[str, ...]) -> None:
    group = [w for w in words if not w.startswith(("-", ".", "/")) and "." not in w]
    done = subprocess.run(
        [sys.executable, "-m", "veriml", *group[:2], "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"veriml {' '.join(group)}: {done.stderr}"
