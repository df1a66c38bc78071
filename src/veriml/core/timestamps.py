"""Timestamps: RFC 3339 in UTC with microseconds, e.g. ``2026-11-26T02:20:23.123456Z``.

Every timestamp veriml signs or logs (receipts, descriptors, jobs, log entries) is written by
:func:`format_time` and read back by :func:`parse_time`.
"""

from __future__ import annotations

import datetime as dt

from veriml.core.errors import FormatError

__all__ = ["format_time", "parse_time", "utc_now"]


def format_time(when: dt.datetime) -> str:
    """RFC 3339 UTC with microseconds, as every veriml timestamp is written."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    """The current time, written by :func:`format_time`."""
    return format_time(dt.datetime.now(dt.UTC))


def parse_time(text: object, *, what: str = "timestamp") -> dt.datetime:
    """Parse an RFC 3339 UTC timestamp (``...Z``); anything else is a FormatError."""
    if not isinstance(text, str) or not text.endswith("Z"):
        raise FormatError(f"{what} must be an RFC 3339 UTC string ending in Z", got=str(text)[:40])
    try:
        return dt.datetime.fromisoformat(text[:-1] + "+00:00")
    except ValueError as exc:
        raise FormatError(f"{what} is not an RFC 3339 timestamp", got=text[:40]) from exc
