"""Server-sent events (WHATWG HTML, "Server-sent events"): the framing of every OpenAI-style
stream veriml writes (the coordinator's answers) and reads (the SDK, and relay nodes reading
their upstream's).

Pure: :func:`sse_event` and :func:`sse_comment` give the bytes of an event and of a comment;
:class:`SSEReader` takes lines and gives ``(event type, data)``. The HTTP stays with the caller.

A comment is a line that starts with a colon, which every reader skips (the WHATWG parser, and
the OpenAI SDKs' decoders). :data:`KEEP_ALIVE` is one: a stream that waits on a slow check
sends it so that a proxy between server and client, which drops a connection idle for long
enough, sees traffic, while no client sees an event.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from veriml.core.errors import FormatError

__all__ = ["KEEP_ALIVE", "SSEReader", "parse_sse", "sse_comment", "sse_event"]


def _breaks_line(text: str) -> bool:
    return "\n" in text or "\r" in text


def sse_event(data: str, *, event: str | None = None) -> bytes:
    """One event on the wire: ``event: NAME`` when it is named, a ``data:`` line for each
    line of ``data`` (a reader joins them with newlines again), then the blank line that ends
    it."""
    if event is not None and (not event or _breaks_line(event)):
        raise FormatError("an event name is one non-empty line", got=event[:40])
    lines = data.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    head = f"event: {event}\n" if event is not None else ""
    return (head + "".join(f"data: {line}\n" for line in lines) + "\n").encode()


def sse_comment(text: str = "") -> bytes:
    """A comment (``: text``) and a blank line: no event, only bytes on the connection."""
    if _breaks_line(text):
        raise FormatError("a comment is one line", got=text[:40])
    return f": {text}\n\n".encode()


KEEP_ALIVE = sse_comment("keep-alive")
"""``: keep-alive``, sent while a stream has nothing else to send."""


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
