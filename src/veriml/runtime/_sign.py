"""Signing receipts on the hot path of a node.

The receipt format is :mod:`veriml.core.receipt` and the bytes signed are exactly those of
:func:`veriml.core.receipt.sign_receipt`: an RFC 8785 (JCS) in-toto Statement in a DSSE
envelope. Two things make that cheaper per call here, without changing a byte:

- JCS of a JSON value with no floats, integers within +-2**53, and ASCII member names is what
  ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)`` writes: the same
  member order (UTF-16 and code-point order agree on ASCII), the same string escapes (RFC 8785
  section 3.2.2.2: ``\\b \\t \\n \\f \\r``, other controls as lowercase ``\\u00xx``, nothing
  else escaped) and the same integers. Anything else falls back to the ``rfc8785`` package.
  The equivalence is a property test (``tests/unit/runtime/test_sign.py``).
- The signing key's id is computed once per call, not once per use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from veriml.core.canonical import canonicalize
from veriml.core.digest import Digest
from veriml.core.dsse import INTOTO_PAYLOAD_TYPE, Envelope, Signature, Statement, Subject, pae
from veriml.core.keys import SigningKey
from veriml.core.receipt import PREDICATE_TYPE, InferencePredicate

__all__ = ["canonical_json", "is_simple", "sign_inference"]

_MAX_SAFE_INT = 2**53


def is_simple(value: Any) -> bool:
    """True if JCS and sorted compact ``json.dumps`` agree byte for byte on ``value``."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, int):
        return -_MAX_SAFE_INT <= value <= _MAX_SAFE_INT
    if isinstance(value, dict):
        return all(isinstance(k, str) and k.isascii() and is_simple(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(is_simple(v) for v in value)
    return False  # floats (ES6 number formatting) and anything else


def canonical_json(value: Any, *, known_simple: bool = False) -> bytes:
    """RFC 8785 bytes of ``value``; a fast path for float-free values, else ``rfc8785``.

    ``known_simple`` skips the walk when the caller built ``value`` from parts already known
    to be simple (string values may still be anything: lone surrogates fall back below).
    """
    if known_simple or is_simple(value):
        try:
            text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # lone surrogates: let rfc8785 refuse them with its own error
    return canonicalize(value)


def sign_inference(
    outputs: Mapping[str, Digest],
    predicate: InferencePredicate,
    key: SigningKey,
    key_id: str,
    *,
    runtime_simple: bool = False,
) -> Envelope:
    """What :func:`veriml.core.receipt.sign_receipt` returns, for a key whose id is known.

    ``runtime_simple`` says the predicate's runtime fingerprint passed :func:`is_simple`; every
    other member of an inference statement is a string, a digest string or a bounded integer
    under a fixed ASCII name, so the walk can then be skipped.
    """
    statement = Statement(
        subjects=tuple(Subject(name, digest) for name, digest in sorted(outputs.items())),
        predicate_type=PREDICATE_TYPE,
        predicate=predicate.to_json(),
    )
    known = runtime_simple and not predicate.extra
    payload = canonical_json(statement.to_json(), known_simple=known)
    signature = key.sign(pae(INTOTO_PAYLOAD_TYPE, payload))
    return Envelope(INTOTO_PAYLOAD_TYPE, payload, (Signature(key_id, signature),))
