"""What every fuzz target shares: the settings, the oracle, the allocation guard, the mutators.

The oracle (:func:`attempt`): a parser given hostile input returns a value or raises one of
the veriml errors it documents. Any other exception (``KeyError``, ``TypeError``,
``RecursionError``, ``UnicodeEncodeError``, ``struct.error``, a veriml error it does not
document, ...) is a crash, and so is a case whose allocations exceed
``64 MiB + 100 x input size`` (:class:`AllocationGuard`: the Python heap through
:mod:`tracemalloc`, and the process's peak RSS, which also sees C allocations such as
protobuf's and numpy's).

Inputs come from two sources in every target: valid examples built with real keys and real
data, mutated (:func:`mutated_bytes` edits bytes; :func:`mutated_json` edits a JSON tree, and
may descend into a DSSE envelope's payload and sign the edit again with the signer's real key,
so the parser's checks behind the signature are reached too), and raw random bytes or JSON.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import struct
import time
import tracemalloc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st

from veriml.core.dsse import pae
from veriml.core.errors import Error
from veriml.core.keys import SigningKey

__all__ = [
    "FULL",
    "STATS",
    "AllocationExceeded",
    "attempt",
    "fuzz_settings",
    "json_bytes",
    "json_values",
    "mutated_bytes",
    "mutated_json",
    "pick",
    "raw_json_bytes",
]

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
FULL = os.environ.get("VERIML_FUZZ") == "full"
MIB = 1 << 20
BOUND_BASE = 64 * MIB
BOUND_PER_BYTE = 100


def fuzz_settings(*, short: int | None = None) -> Callable[[F], F]:
    """Decorate a ``@given`` test as a fuzz target: profile ``fuzz`` (``VERIML_FUZZ=full``:
    100,000 cases, randomised) or ``fuzz-short`` (``make test``: derandomised), both
    registered in conftest.py, and each case counted for the summary. ``short`` lowers the
    short run's count for a slow target; ``VERIML_FUZZ_EXAMPLES`` overrides either count, and
    ``VERIML_FUZZ_BUDGET`` (seconds) stops a target early, as skipped, with its count."""
    profile = settings.get_profile("fuzz" if FULL else "fuzz-short")
    override = os.environ.get("VERIML_FUZZ_EXAMPLES")
    if override:
        profile = settings(profile, max_examples=int(override))
    elif short is not None and not FULL:
        profile = settings(profile, max_examples=short)

    budget = float(os.environ.get("VERIML_FUZZ_BUDGET", "0"))

    def decorate(test: F) -> F:
        inner = test.hypothesis.inner_test  # type: ignore[attr-defined]

        @functools.wraps(inner)
        def counted(*args: Any, **kwargs: Any) -> Any:
            stats = STATS.setdefault(CURRENT[0], TargetStats())
            stats.cases += 1
            if budget and time.monotonic() - stats.started > budget:
                # Stop a long full run honestly: the summary reports the cases it ran.
                pytest.skip(f"VERIML_FUZZ_BUDGET of {budget:.0f} s spent after {stats.cases} cases")
            return inner(*args, **kwargs)

        test.hypothesis.inner_test = counted  # type: ignore[attr-defined]
        return profile(test)

    return decorate


# -- statistics --------------------------------------------------------------------------------


@dataclass
class TargetStats:
    cases: int = 0
    """Inputs the target ran (Hypothesis examples, shrinking included)."""
    seconds: float = 0.0
    started: float = field(default_factory=time.monotonic)
    outcomes: dict[str, int] = field(default_factory=dict)
    """Parser calls by outcome: ``value``, an error's class name, ``crash``."""


STATS: dict[str, TargetStats] = {}
CURRENT = ["(none)"]
"""The running target's name (set by conftest.py for each test)."""


def _record(outcome: str) -> None:
    stats = STATS.setdefault(CURRENT[0], TargetStats())
    stats.outcomes[outcome] = stats.outcomes.get(outcome, 0) + 1


# -- the allocation guard ----------------------------------------------------------------------


class AllocationExceeded(AssertionError):
    """A case allocated more than its bound: an unbounded allocation, even if it was refused."""


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")
_KIB = re.compile(rb"(VmRSS|VmHWM):\s+(\d+) kB")


def _rss_kib() -> dict[bytes, int] | None:
    try:
        return {m[1]: int(m[2]) for m in _KIB.finditer(_STATUS.read_bytes())}
    except OSError:
        return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write("5")
    except OSError:
        return False
    return True


_RSS_OK = _reset_peak_rss() and _rss_kib() is not None


class AllocationGuard:
    """Measures one case: the Python heap's peak (tracemalloc, started for the case alone) and
    the peak RSS above the RSS at the start; :meth:`check` raises past the bound."""

    def __init__(self, size: int) -> None:
        self.bound = BOUND_BASE + BOUND_PER_BYTE * size

    def __enter__(self) -> AllocationGuard:
        self._started = not tracemalloc.is_tracing()
        if self._started:
            tracemalloc.start(1)
        else:
            tracemalloc.reset_peak()
        self._heap0 = tracemalloc.get_traced_memory()[0]
        self._rss0 = None
        if _RSS_OK and _reset_peak_rss():
            rss = _rss_kib()
            self._rss0 = None if rss is None else rss.get(b"VmRSS")
        return self

    def __exit__(self, *exc: object) -> None:
        heap = tracemalloc.get_traced_memory()[1] - self._heap0
        if self._started:
            tracemalloc.stop()
        rss = 0
        if self._rss0 is not None:
            now = _rss_kib()
            if now is not None and b"VmHWM" in now:
                rss = (now[b"VmHWM"] - self._rss0) * 1024
        self.heap, self.rss = heap, rss
        if exc[0] is None:
            self.check()

    def check(self) -> None:
        for what, used in (("Python heap", self.heap), ("peak RSS", self.rss)):
            if used > self.bound:
                raise AllocationExceeded(
                    f"one case grew the {what} by {used / MIB:.1f} MiB "
                    f"(bound {self.bound / MIB:.1f} MiB)"
                )


# -- the oracle --------------------------------------------------------------------------------


def _check_renders(exc: Error) -> None:
    """A refusal must reach its client: the coordinator's problem document (RFC 9457, JSON)
    of the error, evidence included, must render; else the refusal is itself a 500."""
    from veriml.coordinator.problems import problem_for

    try:
        problem_for(exc)  # a JSONResponse renders its body when it is built
    except Exception as render:
        raise AssertionError(
            f"{type(exc).__name__} does not render as a problem document: {render!r}"
        ) from render


def attempt(
    fn: Callable[[], T], *, allowed: tuple[type[Error], ...], size: int
) -> tuple[T | None, Error | None]:
    """Run one case of a parser: ``(value, None)`` or ``(None, error)`` for an ``allowed``
    veriml error. Anything else propagates and fails the test: a crash."""
    with AllocationGuard(size):
        try:
            value = fn()
        except allowed as exc:
            _record(type(exc).__name__)
            _check_renders(exc)
            return None, exc
        except Error as exc:
            _record("undocumented " + type(exc).__name__)
            names = ", ".join(a.__name__ for a in allowed)
            raise AssertionError(
                f"{type(exc).__name__} is not an error this parser documents ({names}): {exc}"
            ) from exc
        except BaseException:
            _record("crash")
            raise
    _record("value")
    return value, None


# -- byte mutations ----------------------------------------------------------------------------

_INTS: tuple[int, ...] = (
    0,
    1,
    2,
    7,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0xFFFF,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
)
_INTS += (2**53, 2**63 - 1, 2**63, 2**64 - 1)
BINARY_TOKENS: tuple[bytes, ...] = tuple(
    [struct.pack("<Q", v) for v in _INTS]
    + [struct.pack("<I", v & 0xFFFFFFFF) for v in _INTS]
    + [struct.pack(">Q", v) for v in _INTS[:8]]
)
TEXT_TOKENS: tuple[bytes, ...] = (
    b"\n",
    b"\n\n",
    b"\r\n",
    b" ",
    b"\t",
    b"\x00",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # a UTF-8 encoded surrogate (invalid UTF-8)
    b"\xe2\x80\x94 ",  # the signed-note em dash
    b"\xe2\x80\xa8",
    b"+",
    b"=",
    b"==",
    b"-",
    b"_",
    b"/",
    b"..",
    b"0",
    b"-1",
    b"1e999",
    b"18446744073709551616",
    b"9" * 40,
    b"{",
    b"}",
    b"[",
    b"]",
    b'"',
    b"\\",
    b"\\ud800",
    b",",
    b":",
    b"null",
    b"true",
    b"NaN",
    b"sha256:",
    b"x",
)


def byte_edits(tokens: Sequence[bytes] = ()) -> st.SearchStrategy[list[tuple[str, float, bytes]]]:
    chunk = st.one_of(
        st.binary(min_size=1, max_size=8),
        st.sampled_from(TEXT_TOKENS + BINARY_TOKENS + tuple(tokens)),
    )
    op = st.sampled_from(("set", "insert", "delete", "flip", "repeat", "truncate", "swap"))
    where = st.floats(min_value=0, max_value=1, exclude_max=True)
    return st.lists(st.tuples(op, where, chunk), min_size=1, max_size=6)


_EDITS = byte_edits()


def mutate(data: bytes, edits: Sequence[tuple[str, float, bytes]]) -> bytes:
    """Apply ``edits`` (op, relative position, chunk) to ``data``."""
    out = bytearray(data)
    for op, where, chunk in edits:
        pos = int(where * len(out))
        if op == "set":
            out[pos : pos + len(chunk)] = chunk
        elif op == "insert":
            out[pos:pos] = chunk
        elif op == "delete":
            del out[pos : pos + len(chunk)]
        elif op == "flip" and out:
            out[min(pos, len(out) - 1)] ^= 1 << (chunk[0] % 8)
        elif op == "repeat":
            piece = out[pos : pos + 1 + chunk[0] % 64]
            out[pos:pos] = piece * (1 + chunk[-1] % 4)
        elif op == "truncate":
            del out[pos:]
        elif op == "swap" and out:
            other = int(chunk[0] / 256 * len(out))
            a, b = sorted((pos, other))
            n = min(1 + chunk[-1] % 16, b - a, len(out) - b)
            if n > 0:
                out[a : a + n], out[b : b + n] = out[b : b + n], out[a : a + n]
    return bytes(out)


def mutated_bytes(bases: Sequence[bytes], tokens: Sequence[bytes] = ()) -> st.SearchStrategy[bytes]:
    """One of ``bases`` with one to six byte edits."""
    return st.tuples(st.sampled_from(list(bases)), byte_edits(tokens)).map(lambda t: mutate(*t))


# -- JSON values and JSON mutations ------------------------------------------------------------

INTERESTING_STRINGS: tuple[str, ...] = (
    "",
    " ",
    "\ud800",
    "a\udfffb",
    "\x00",
    "\u2014",
    "\u2028",
    "é",
    "🙂",
    "*",
    "..",
    "../x",
    "/etc/passwd",
    "C:\\x",
    "x" * 300,
    "1" * 5000,
    "-1",
    "0",
    "1.5",
    "1e999",
    "true",
    "null",
    "sha256:" + "0" * 64,
    "sha256:" + "F" * 64,
    "sha256:" + "0" * 63,
    "sha512:" + "0" * 64,
    "relay:",
    "relay:x",
    "none",
    "quorum:2/3",
    "2026-11-26T10:00:00.000000Z",
    "2026-11-26T10:00:00Z",
    "2026-11-26T10:00:00.000000+05:00Z",
    "2026-13-45T99:99:99Z",
    "0001-01-01T00:00:00.000000Z",
    "9999-12-31T23:59:59.999999Z",
    "application/vnd.in-toto+json",
    "https://in-toto.io/Statement/v1",
    "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n",
)
INTERESTING_INTS: tuple[int, ...] = (
    0,
    1,
    -1,
    2,
    255,
    256,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32,
    2**53 - 1,
    2**53,
    -(2**53),
    2**63 - 1,
    2**63,
    2**64,
    10**30,
    10**400,
    -(10**400),
)
INTERESTING_FLOATS: tuple[float, ...] = (0.0, -0.0, 0.5, 1.0, 2.5, 1e16, 1e308, -1e308, 5e-324)

json_strings = st.one_of(st.text(max_size=20), st.sampled_from(INTERESTING_STRINGS))
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INTERESTING_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(INTERESTING_FLOATS),
    json_strings,
)
json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(json_strings, inner, max_size=4)
    ),
    max_leaves=12,
)


def text_of(data: bytes) -> str:
    """``data`` as text, keeping encoded lone surrogates as such (others become U+FFFD)."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "replace")


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """JSON bytes of ``value``; lone surrogates become invalid UTF-8 when not ``ascii_only``."""
    text = json.dumps(value, ensure_ascii=ascii_only, separators=(",", ":"))
    return text.encode("utf-8", "surrogatepass")


def json_bytes(value: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    return st.tuples(value, st.booleans()).map(lambda t: dumps(t[0], ascii_only=t[1]))


HOSTILE_JSON: tuple[bytes, ...] = (
    b"[" * 100_000 + b"]" * 100_000,
    b'{"a":' * 5000 + b"1" + b"}" * 5000,
    b"1" * 5000,
    b'{"a": ' + b"9" * 5000 + b"}",
    b'{"a": 1e999}',
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": 1, "a": 2}',
    b'{"a": "\\ud800"}',
    b'{"a": "\xed\xa0\x80"}',
    b"\xef\xbb\xbf{}",
    b"\xff\xfe{\x00}\x00",
    b"",
    b"{",
    b"null",
    b"[]",
)


def raw_json_bytes() -> st.SearchStrategy[bytes]:
    """Random bytes, random JSON, and JSON beyond parsers (depth, digits, constants)."""
    return st.one_of(
        st.binary(max_size=256),
        json_bytes(json_values),
        json_bytes(st.dictionaries(json_strings, json_values, max_size=6)),
        st.sampled_from(HOSTILE_JSON),
    )


def _is_envelope(node: Any) -> bool:
    return isinstance(node, dict) and {"payloadType", "payload", "signatures"} <= set(node)


def _vocabulary(value: Any, keys: set[str], strings: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            keys.add(k)
            _vocabulary(v, keys, strings)
    elif isinstance(value, list):
        for v in value:
            _vocabulary(v, keys, strings)
    elif isinstance(value, str) and len(value) < 5000:
        strings.add(value)


_NUMBERS = st.sampled_from(INTERESTING_INTS + INTERESTING_FLOATS)
_FLIPS = st.sampled_from([True, False, None, 0, 1, "true"])
_NUDGES = st.sampled_from([-1, 1, 2**32, -(2**53)])


def pick(draw: st.DrawFn, items: Sequence[T]) -> T:
    # An index, not st.sampled_from(items): Hypothesis caches the strategies a test builds,
    # and one built per case around a piece of the input would keep every case's input.
    return items[draw(st.integers(0, len(items) - 1))]


class _Mutator:
    """Edits a JSON tree; every strategy it draws from is built once, here."""

    def __init__(
        self, signers: Mapping[str, SigningKey], keys: tuple[str, ...], strings: tuple[str, ...]
    ) -> None:
        self.signers = signers
        self.values = st.one_of(json_values, st.sampled_from(strings), st.sampled_from(keys))
        self.names = st.sampled_from(keys) | json_strings
        self.strings = st.sampled_from(INTERESTING_STRINGS + strings)

    def leaf(self, draw: st.DrawFn, node: Any) -> Any:
        """One edit of ``node`` itself."""
        choices = ["replace", "wrap"]
        if isinstance(node, dict):
            choices += ["delete", "add", "rename", "empty"] if node else ["add"]
        elif isinstance(node, list):
            choices += ["delete", "append", "duplicate", "empty", "reverse"] if node else ["append"]
        elif isinstance(node, str):
            choices += ["string", "edit-string", "to-number"]
        elif isinstance(node, bool) or node is None:
            choices += ["flip"]
        elif isinstance(node, int | float):
            choices += ["number", "nudge", "to-string"]
        op = pick(draw, choices)
        if op == "replace":
            return draw(self.values)
        if op == "wrap":
            return [node] if draw(st.booleans()) else {"value": node}
        if isinstance(node, dict):
            node = dict(node)
            if op == "add":
                node[draw(self.names)] = draw(self.values)
            elif op == "empty":
                node = {}
            else:
                item = node.pop(pick(draw, sorted(node)))
                if op == "rename":
                    node[draw(self.names)] = item
            return node
        if isinstance(node, list):
            node = list(node)
            if op == "append":
                node.append(draw(self.values))
            elif op == "empty":
                node = []
            elif op == "reverse":
                node.reverse()
            else:
                i = draw(st.integers(0, len(node) - 1))
                if op == "delete":
                    del node[i]
                else:
                    node.insert(i, node[i])
            return node
        if op == "string":
            return draw(self.strings)
        if op == "edit-string":
            assert isinstance(node, str)
            return text_of(mutate(node.encode("utf-8", "surrogatepass"), draw(_EDITS)))
        if op in ("to-number", "number"):
            return draw(_NUMBERS)
        if op == "flip":
            return draw(_FLIPS)
        if op == "nudge":
            return node + draw(_NUDGES)
        return str(node)  # to-string

    def walk(self, draw: st.DrawFn, node: Any, depth: int) -> tuple[Any, bool]:
        """Edit somewhere at or below ``node``; True when an envelope was signed again."""
        if _is_envelope(node) and depth < 12 and draw(st.integers(0, 2)) == 0:
            resigned = self.resign(draw, node, depth)
            if resigned is not None:
                return resigned, True
        children: list[Any] = []
        if isinstance(node, dict):
            children = sorted(node)
        elif isinstance(node, list):
            children = list(range(len(node)))
        if children and depth < 12 and draw(st.integers(0, 3)) > 0:
            where = pick(draw, children)
            child, resigned = self.walk(draw, node[where], depth + 1)
            node = dict(node) if isinstance(node, dict) else list(node)
            node[where] = child
            return node, resigned
        return self.leaf(draw, node), False

    def resign(self, draw: st.DrawFn, envelope: dict[str, Any], depth: int) -> Any:
        """The envelope with its JSON payload edited and signed again by its signer."""
        sigs = envelope.get("signatures")
        if not isinstance(sigs, list) or not sigs or not isinstance(sigs[0], dict):
            return None
        keyid = sigs[0].get("keyid")
        key = self.signers.get(keyid) if isinstance(keyid, str) else None
        if key is None or not isinstance(envelope.get("payload"), str):
            return None
        try:
            payload = json.loads(base64.b64decode(envelope["payload"]))
        except ValueError:
            return None
        edited, _ = self.walk(draw, payload, depth + 1)
        data = dumps(edited, ascii_only=draw(st.booleans()))
        payload_type = envelope["payloadType"]
        if not isinstance(payload_type, str) or not payload_type.isprintable():
            return None
        signature = key.sign(pae(payload_type, data))
        return dict(
            envelope,
            payload=base64.b64encode(data).decode(),
            signatures=[{"keyid": key.key_id, "sig": base64.b64encode(signature).decode()}],
        )


def mutated_json(
    bases: Sequence[Any], *, signers: Sequence[SigningKey] = (), max_edits: int = 4
) -> st.SearchStrategy[tuple[Any, bool]]:
    """``(value, resigned)``: one of ``bases`` with one to ``max_edits`` tree edits.

    An edit may land inside a DSSE envelope's payload; the envelope is then signed again by
    the key (among ``signers``) that signed it, and ``resigned`` is True: its signer did sign
    the result, so a property such as "a mutated signed thing never verifies" excludes it."""
    keys: set[str] = set()
    strings: set[str] = set()
    for base in bases:
        _vocabulary(base, keys, strings)
    mutator = _Mutator(
        {k.key_id: k for k in signers},
        tuple(sorted(keys)) or ("type",),
        tuple(sorted(strings)) or ("",),
    )

    base = st.sampled_from(list(bases))

    @st.composite
    def strategy(draw: st.DrawFn) -> tuple[Any, bool]:
        value = draw(base)
        resigned = False
        for _ in range(draw(st.integers(1, max_edits))):
            value, again = mutator.walk(draw, value, 0)
            resigned = resigned or again
        return value, resigned

    return strategy()
