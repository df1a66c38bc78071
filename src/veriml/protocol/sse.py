"""Server-sent events (WHATWG HTML, "Server-sent events"): the framing of every OpenAI-style
stream veriml reads, by the SDK (a coordinator's answers) and by relay nodes (their upstream's).

Pure: lines in, ``(event type, data)`` out; the HTTP stays with the caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["SSEReader", "parse_sse"]


class SSEReader:
    """Server-sent events (WHATWG HTML, "Server-sent events"), one line at a time, so sync and
    async streams read them alike: :meth:`feed` returns ``(event type, data)`` when a blank
    line ends an event; comments and ids are skipped, multi-line data joined with newlines."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []

    def feed(self, raw: str) -> tuple[str, str] | None:
        line = raw.rstrip("\r\n")
        if not line:
            return self.end()
        if not line.startswith(":"):
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                self._event = value
            elif name == "data":
                self._data.append(value)
        return None

    def end(self) -> tuple[str, str] | None:
        """The event in progress, if any (a stream may end without its blank line)."""
        done = (self._event, "\n".join(self._data)) if self._data else None
        self._event, self._data = "", []
        return done


def parse_sse(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """``(event type, data)`` of each server-sent event in ``lines`` (see :class:`SSEReader`)."""
    reader = SSEReader()
    for line in lines:
        if (event := reader.feed(line)) is not None:
            yield event
    if (event := reader.end()) is not None:
        yield event
