"""Server-sent event framing (WHATWG HTML, "Server-sent events"): what the coordinator writes
reads back as the same events, and a comment, the keep-alive among them, is no event at all."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.core.errors import FormatError
from veriml.protocol.sse import KEEP_ALIVE, parse_sse, sse_comment, sse_event

LINE = st.text(st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)))


def _lines(wire: bytes) -> list[str]:
    """The lines of a stream as SSE ends them (LF here; not str.splitlines' other breaks)."""
    return [line + "\n" for line in wire.decode().split("\n")]


@given(data=st.lists(LINE, min_size=1, max_size=4).map("\n".join), name=st.none() | LINE)
def test_an_event_reads_back_as_written(data: str, name: str | None) -> None:
    if name == "":
        name = None
    assert list(parse_sse(_lines(sse_event(data, event=name)))) == [(name or "", data)]


def test_the_keep_alive_is_a_comment_that_readers_skip() -> None:
    assert KEEP_ALIVE == b": keep-alive\n\n"
    wire = KEEP_ALIVE + sse_event('{"a":1}') + KEEP_ALIVE * 3 + sse_event("x", event="veriml")
    wire += KEEP_ALIVE + sse_event("[DONE]")
    assert list(parse_sse(_lines(wire))) == [("", '{"a":1}'), ("veriml", "x"), ("", "[DONE]")]
    assert list(parse_sse(_lines(KEEP_ALIVE * 2))) == []


def test_a_comment_or_an_event_name_cannot_break_the_framing() -> None:
    for text in ("a\nb", "a\rb"):
        with pytest.raises(FormatError):
            sse_comment(text)
        with pytest.raises(FormatError):
            sse_event("x", event=text)
    with pytest.raises(FormatError):
        sse_event("x", event="")
