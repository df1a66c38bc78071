"""Canonical JSON per RFC 8785 (JCS), the only form veriml signs or hashes.

https://www.rfc-editor.org/rfc/rfc8785 ; serialisation is delegated to the ``rfc8785`` package.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

from veriml.core.digest import Digest
from veriml.core.errors import FormatError

__all__ = ["canonical_digest", "canonicalize", "parse_json_object"]


def canonicalize(value: Any) -> bytes:
    """RFC 8785 bytes of ``value`` (dicts, lists, str, int, float, bool, None)."""
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise FormatError("value cannot be written as canonical JSON", reason=str(exc)) from exc


def canonical_digest(value: Any) -> Digest:
    """SHA-256 of the RFC 8785 form of ``value``."""
    return Digest.of(canonicalize(value))


def _reject_constant(name: str) -> Any:
    raise FormatError("JSON must not contain NaN or Infinity", got=name)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # Duplicate members let two parsers see two different objects: refuse them.
            raise FormatError("JSON object has a duplicate member", member=key)
        out[key] = value
    return out


def parse_json_object(data: bytes | str, *, what: str = "JSON") -> dict[str, Any]:
    """Parse strict JSON (no NaN, no duplicate members) whose top level is an object.

    Every hostile form is a :class:`FormatError`, never another exception: malformed text,
    an integer beyond Python's digit limit (``ValueError`` from ``int()``), and nesting deeper
    than the interpreter's recursion limit (``RecursionError``).
    """
    try:
        value = json.loads(data, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError as exc:
        raise FormatError(f"{what} is nested too deeply") from exc
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limit
        raise FormatError(f"{what} is not valid JSON", reason=str(exc)[:200]) from exc
    if not isinstance(value, dict):
        raise FormatError(f"{what} must be a JSON object", got=type(value).__name__)
    return value
