"""The tests and benchmarks read only files inside the repository.

Test vectors once came from a ``shared`` folder beside the repository, so a fresh clone with
nothing beside it failed. They are vendored in tests/vectors now; this keeps any test or
benchmark from reaching out of the repository for them again.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("tests", "benchmarks")

# A relative path climbing into a sibling "shared" folder, or a parent of the repository joined
# with it (the forms test_the_guard_catches_the_old_paths lists).
OUTSIDE = re.compile(r"""\.\.[/\\]shared\b|parents\[\d+\]\s*/\s*["']shared\b""")


def _files() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files.append(path)
    return files


def _offences(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if OUTSIDE.search(line)]


@pytest.mark.parametrize(
    "line",
    [
        # Built from pieces, so that this file itself does not match.
        "SHARED = Path(__file__).resolve().parents[2] / " + '"shared"',
        "(Path(__file__).resolve().parents[4] / " + "'shared/vectors/go-sumdb-note/notes.json')",
        '"""C2SP signed notes (.' + './shared/vectors/go-sumdb-note)."""',
    ],
)
def test_the_guard_catches_the_old_paths(line: str) -> None:
    assert _offences(line) == [line]


def test_no_test_or_benchmark_reads_outside_the_repository() -> None:
    found = []
    for path in _files():
        data = path.read_bytes()
        if b"\0" in data:  # binary, e.g. a tile of the Go vector tree
            continue
        found += [
            f"{path.relative_to(ROOT)}: {line}" for line in _offences(data.decode(errors="replace"))
        ]
    assert not found, "paths outside the repository (use tests/vectors):\n" + "\n".join(found)
