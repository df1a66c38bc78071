"""``veriml model list`` never cuts a digest to fit a terminal: it is what users copy, and the
only way to an unsigned model (docs/models.md, "Names")."""

from __future__ import annotations

import contextlib
import io

import pytest
from rich.console import Console

from veriml.cli import publish

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize("width", [40, 80, 240])
def test_a_digest_is_printed_whole_on_any_terminal_width(
    width: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "console", Console(width=width, highlight=False, soft_wrap=True))
    found = [
        {
            "name": "acme/iris",
            "version": "2",
            "task": "classification",
            "digest": DIGEST,
            "unsigned": True,
            "publisher": None,
            "log_index": 12,
        }
    ]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        publish._print_whole(publish.models_table(found))
    [row] = [line for line in out.getvalue().splitlines() if DIGEST in line]
    assert "UNSIGNED" in row
