"""Provenance: a model reference means the publisher's model (docs/models.md, "Names").

:func:`check_provenance` checks, from the two log entries that carry it, that a model
reference (``name``, ``name@version`` or a digest) names the model an answer ran, and who
published it. Pure: it parses the entries' logged bytes and compares; the caller proves that
both entries are in the log (inclusion proofs against a checkpoint it trusts).

The steps, each failing with :class:`~veriml.errors.VerificationError`
(``check="provenance"``) whose evidence names what differs:

1. the model entry parses and is a ``model`` entry for ``model`` (the digest that ran);
2. an unsigned model (no publisher) passes only with ``allow_unsigned=True`` and only when the
   reference is its digest: an unsigned model owns no name;
3. a signed model's publisher key id is the id of the key the entry carries;
4. a reference by name (or ``name@version``) matches the entry's name (and version);
5. the namespace entry claims ``namespace_of(name)`` for exactly the model's publisher key:
   the name is the publisher's, not merely a name the publisher chose.

What it cannot see: whether the model entry is the *latest* version of a bare name (pin
``name@version`` or a digest for that), and whether the namespace was claimed only once (the
ledger fold, which auditors run, refuses a second claim).

>>> p = check_provenance("acme/iris@1", digest, model_bytes, namespace_bytes)  # doctest: +SKIP
>>> p.publisher, p.namespace  # doctest: +SKIP
('sha256:…', 'acme')
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TypeVar

from veriml.core.digest import Digest
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.ledger.entries import ModelEntry, NamespaceEntry, namespace_of, parse_entry
from veriml.protocol.accounts import account_key

__all__ = ["Provenance", "check_provenance"]

_E = TypeVar("_E", ModelEntry, NamespaceEntry)


@dataclass(frozen=True, slots=True)
class Provenance:
    """What :func:`check_provenance` established about a model.

    ``publisher`` is the publisher's key id and ``namespace`` the namespace its name is in;
    both are None for an unsigned model, which owns no name.
    """

    name: str
    version: str
    publisher: str | None
    namespace: str | None
    unsigned: bool


def _fail(message: str, **evidence: object) -> VerificationError:
    return VerificationError(message, check=Check.PROVENANCE, **evidence)


def _parse(data: bytes, kind: type[_E], what: str) -> _E:
    try:
        entry = parse_entry(data)
    except FormatError as exc:
        raise _fail(f"the {what} entry does not parse", reason=exc.diagnostics()) from exc
    if not isinstance(entry, kind):
        raise _fail(f"the {what} evidence is not a {what} entry", type=type(entry).__name__)
    return entry


def _key_id(pem: str, what: str) -> str:
    try:
        return account_key(pem).key_id
    except FormatError as exc:
        raise _fail(f"the {what} key is not a PEM public key", reason=exc.message) from exc


@functools.lru_cache(maxsize=1024)
def check_provenance(
    ref: str,
    model: Digest,
    model_entry: bytes,
    namespace_entry: bytes | None,
    *,
    allow_unsigned: bool = False,
) -> Provenance:
    """Check that ``ref`` names ``model``, published by the owner of its namespace.

    ``model_entry`` is the logged ``model`` entry of ``model``; ``namespace_entry`` the
    logged ``namespace`` entry of its name's namespace (None for an unsigned model). Returns
    what was established; raises :class:`VerificationError` (``check="provenance"``) otherwise.
    A pure function of its arguments: a client verifying many answers of one model checks its
    provenance once (failures are raised each time, never cached).
    """
    entry = _parse(model_entry, ModelEntry, "model")
    # 1. The entry is for the model that ran.
    if entry.digest != model:
        raise _fail(
            "the model entry is for another model",
            expected=model.to_text(),
            got=entry.digest.to_text(),
        )
    by_digest = ref.startswith("sha256:")
    if by_digest and ref != model.to_text():
        raise _fail("the reference is another digest", ref=ref[:80], model=model.to_text())
    # 2. An unsigned model: by digest, and only when the caller allows it.
    if entry.unsigned:
        if not allow_unsigned:
            raise _fail("the model is unsigned (no publisher)", model=model.to_text())
        if not by_digest:
            raise _fail(
                "an unsigned model owns no name: it is reachable by digest only",
                ref=ref[:300],
                model=model.to_text(),
            )
        if namespace_entry is not None:
            raise _fail("an unsigned model has no namespace evidence", model=model.to_text())
        return Provenance(entry.name, entry.version, None, None, unsigned=True)
    # 3. The publisher named is the key the entry carries.
    assert entry.publisher_key is not None
    publisher = _key_id(entry.publisher_key, "publisher")
    if publisher != entry.publisher_key_id:
        raise _fail(
            "the model entry's publisher key id is not its key's",
            expected=publisher,
            got=str(entry.publisher_key_id)[:80],
        )
    # 4. A reference by name names this entry.
    if not by_digest:
        name, at, version = ref.rpartition("@")
        if not at:
            name, version = ref, ""
        if name != entry.name:
            raise _fail("the model entry is for another name", expected=name[:300], got=entry.name)
        if at and version != entry.version:
            raise _fail(
                "the model entry is for another version",
                expected=version[:128],
                got=entry.version,
            )
    # 5. The publisher owns the name's namespace.
    namespace = namespace_of(entry.name)
    if namespace_entry is None:
        raise _fail(
            "a signed model needs its namespace's claim as evidence", namespace=namespace[:256]
        )
    claim = _parse(namespace_entry, NamespaceEntry, "namespace")
    if claim.namespace != namespace:
        raise _fail(
            "the namespace entry claims another namespace",
            expected=namespace[:256],
            got=claim.namespace,
        )
    owner = claim.owner  # parsing checked it is the id of the key the claim carries
    if owner != publisher:
        raise _fail(
            "the namespace is owned by another key than the model's publisher",
            namespace=namespace,
            owner=owner,
            publisher=publisher,
        )
    return Provenance(entry.name, entry.version, publisher, namespace, unsigned=False)
