"""Chat templates: the model's Jinja2 template rendered to the prompt text, reproducibly.

llama-cpp-python's :class:`Jinja2ChatFormatter` is reused (a sandboxed Jinja2 environment with
the Hugging Face ``tojson`` and ``{% generation %}`` conventions) with one change: templates
that print the date (``strftime_now``) see a fixed date, the Unix epoch. The prompt must be a
function of the request alone, or a re-execution on another day would read a different prompt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from veriml.core.errors import FormatError, InvalidModelError

__all__ = ["render_chat"]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def _formatter(template: str, *, bos: str, eos: str) -> Any:
    import jinja2
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    class PinnedDateFormatter(Jinja2ChatFormatter):
        @staticmethod
        def strftime_now(f: str) -> str:
            return _EPOCH.strftime(f)

    try:
        return PinnedDateFormatter(template, eos_token=eos, bos_token=bos)
    except jinja2.TemplateError as exc:
        raise InvalidModelError(
            "the model's chat template does not parse", reason=str(exc)
        ) from exc


class ChatRenderer:
    """Renders canonical chat requests with one model's template."""

    def __init__(self, template: str, *, bos: str, eos: str) -> None:
        self._format = _formatter(template, bos=bos, eos=eos)

    def render(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None,
        tool_choice: Any,
    ) -> str:
        """The prompt text for ``messages`` with the generation prompt appended."""
        import jinja2

        try:
            response = self._format(
                messages=[dict(m) for m in messages],
                tools=None if tools is None else [dict(t) for t in tools],
                tool_choice=tool_choice,
            )
        except (jinja2.TemplateError, ValueError, TypeError) as exc:
            # Templates reject conversations they cannot express (raise_exception).
            raise FormatError(
                "the model's chat template refuses these messages",
                param="messages",
                reason=str(exc),
            ) from exc
        return str(response.prompt)


def render_chat(template: str, messages: Sequence[Mapping[str, Any]], **kw: Any) -> str:
    """One-shot rendering (tests, tools): ``ChatRenderer(template, ...).render(messages)``."""
    bos, eos = kw.pop("bos", ""), kw.pop("eos", "")
    return ChatRenderer(template, bos=bos, eos=eos).render(
        messages, tools=kw.pop("tools", None), tool_choice=kw.pop("tool_choice", None)
    )
