"""What a watcher reports and where it stopped (docs/watcher.md): one
:class:`CheckedInference` per inference it looked at, a :class:`WatchSummary` adding them up,
and the :class:`WatchState` file that lets it resume where it stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from veriml.core.canonical import parse_json_object
from veriml.core.errors import FormatError
from veriml.tlog.checkpoint import Checkpoint

__all__ = ["STATE_FORMAT", "CheckedInference", "Result", "WatchState", "WatchSummary"]

STATE_FORMAT = "veriml-watch/v1"
MAX_STATE_FILE = 1 << 16

Result = Literal["match", "mismatch", "skipped", "error"]


@dataclass(frozen=True, slots=True)
class CheckedInference:
    """What the watcher concluded about one inference.

    ``result`` is ``match``, ``mismatch`` (its outputs differ from the watcher's),
    ``skipped`` (nothing to check: the answer was rejected) or ``error`` (the check could not
    run: ``detail`` says why). ``dispute`` and ``winner`` are set when a mismatch was disputed.
    """

    id: str
    model: str
    result: Result
    index: int | None = None
    node: str | None = None
    mode: str = "bitwise"
    detail: str = ""
    dispute: str | None = None
    winner: str | None = None

    @property
    def won(self) -> bool | None:
        """Whether the watcher won its dispute (``None``: no dispute, or a tie)."""
        if self.winner in ("defendant", "neither"):
            return False
        return True if self.winner == "challenger" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "id": self.id,
            "model": self.model,
            "node": self.node,
            "mode": self.mode,
            "result": self.result,
            "detail": self.detail,
            "dispute": self.dispute,
            "winner": self.winner,
        }

    def line(self) -> str:
        """One human-readable line."""
        where = f"entry {self.index} " if self.index is not None else ""
        node = f" node {self.node[:16]}" if self.node else ""
        text = f"{where}inference {self.id}{node}: {self.result}"
        if self.detail:
            text += f" ({self.detail})"
        if self.dispute is not None:
            text += f"; dispute {self.dispute} won by {self.winner}"
        return text


@dataclass
class WatchSummary:
    """Counts over every inference this watcher has looked at."""

    sampled: int = 0
    checked: int = 0
    matched: int = 0
    mismatched: int = 0
    skipped: int = 0
    errors: int = 0
    disputes: int = 0
    won: int = 0
    lost: int = 0
    position: int = 0

    def add(self, checked: CheckedInference) -> None:
        if checked.result == "skipped":
            self.skipped += 1
        elif checked.result == "error":
            self.errors += 1
        else:
            self.checked += 1
            if checked.result == "match":
                self.matched += 1
            else:
                self.mismatched += 1
        if checked.dispute is not None:
            self.disputes += 1
            self.won += checked.won is True
            self.lost += checked.won is False

    def to_json(self) -> dict[str, Any]:
        return {
            "sampled": self.sampled,
            "checked": self.checked,
            "matched": self.matched,
            "mismatched": self.mismatched,
            "skipped": self.skipped,
            "errors": self.errors,
            "disputes": {"opened": self.disputes, "won": self.won, "lost": self.lost},
            "position": self.position,
        }

    def line(self) -> str:
        return (
            f"watched {self.position} log entries: {self.sampled} inferences sampled, "
            f"{self.checked} checked, {self.matched} matched, {self.mismatched} mismatched, "
            f"{self.skipped} skipped, {self.errors} errors; disputes {self.disputes} opened, "
            f"{self.won} won, {self.lost} lost"
        )


@dataclass(frozen=True, slots=True)
class WatchState:
    """Where a watcher stopped: the next log index and the checkpoint it last verified
    (``{"format": "veriml-watch/v1", "position": n, "checkpoint": "<checkpoint text>"}``)."""

    position: int = 0
    checkpoint: Checkpoint | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "position": self.position,
            "checkpoint": None if self.checkpoint is None else self.checkpoint.to_text(),
        }

    @classmethod
    def from_json(cls, obj: Any) -> WatchState:
        if not isinstance(obj, Mapping) or obj.get("format") != STATE_FORMAT:
            raise FormatError(f"a watch state is a JSON object with format {STATE_FORMAT!r}")
        position, text = obj.get("position"), obj.get("checkpoint")
        if isinstance(position, bool) or not isinstance(position, int) or position < 0:
            raise FormatError("watch state position must be a non-negative integer")
        if text is not None and not isinstance(text, str):
            raise FormatError("watch state checkpoint must be checkpoint text or null")
        checkpoint = None if text is None else Checkpoint.from_text(text)
        if checkpoint is not None and position > checkpoint.size:
            raise FormatError("watch state position is beyond its checkpoint", position=position)
        return cls(position, checkpoint)

    @classmethod
    def load(cls, path: Path) -> WatchState:
        """The state in ``path``, or a fresh one when the file does not exist."""
        try:
            if path.stat().st_size > MAX_STATE_FILE:
                raise FormatError("watch state file is too large", path=str(path))
            data = path.read_bytes()
        except FileNotFoundError:
            return cls()
        except OSError as exc:
            raise FormatError("cannot read the watch state", path=str(path)) from exc
        return cls.from_json(parse_json_object(data, what="watch state"))

    def save(self, path: Path) -> None:
        """Write atomically: a crash leaves the old state or the new one."""
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_json(), f)
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
