"""The model card: YAML front matter at the top of a model folder's ``README.md``.

The front matter is the block between a first line ``---`` and the next line ``---`` (or
``...``), as Hugging Face model cards and Jekyll write it
(https://huggingface.co/docs/hub/model-cards#model-card-metadata). veriml reads these keys:

========== ==========================================================================
name       model name (string)
version    model version (string or integer; quote decimals such as ``"1.10"``)
license    SPDX identifier or name (string)
task       what the model does, e.g. ``image-classification`` (string)
parents    models this one derives from: OMS root digests ``sha256:<hex>`` (list)
datasets   training data: digests ``sha256:<hex>`` or URIs ``scheme://...`` (list)
========== ==========================================================================

Every other key is kept, untouched, in :attr:`ModelCard.extra`. The YAML is read by
PyYAML's safe loader, so a card cannot construct Python objects, and with aliases refused
(``*name``): nine nested aliases of ten items make a billion nodes out of a few hundred bytes
("billion laughs"), so a card that uses one is refused before anything is expanded. Nesting
deeper than :data:`MAX_DEPTH` is refused too.
"""

from __future__ import annotations

import datetime as dt
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from veriml.core.digest import Digest
from veriml.core.errors import FormatError, InvalidModelError

__all__ = ["CARD_FILE", "ModelCard"]

CARD_FILE = "README.md"
MAX_DEPTH = 64
"""The deepest nesting of lists and mappings a card may use."""
_KNOWN = ("name", "version", "license", "task", "parents", "datasets")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://\S+$")
_FENCE = re.compile(r"^---[ \t]*\r?$")
_END = re.compile(r"^(---|\.\.\.)[ \t]*\r?$")


def _jsonable(value: Any) -> Any:
    """YAML values JSON lacks become JSON, so cards print as JSON and read back the same:
    dates and binary become strings, a ``!!set`` a list in a fixed order (a set's own order
    changes from one process to the next)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((_jsonable(v) for v in value), key=repr)
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


class _CardLoader(yaml.SafeLoader):
    """PyYAML's safe loader with aliases and deep nesting refused while composing, before any
    node is constructed (expansion happens in construction, so it never starts)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in a model card", mark
            )
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                message = f"nesting deeper than {MAX_DEPTH} is not allowed in a model card"
                raise yaml.composer.ComposerError(None, None, message, mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_document(self, node: Any) -> Any:
        # PyYAML's scalar constructors raise plain exceptions for values their tags or
        # patterns admit but cannot build (``2020-13-45``, ``!!int ""``, ``!!timestamp x``,
        # 5,000 digits): each is a card that is not valid YAML, not a crash.
        try:
            return super().construct_document(node)
        except (ArithmeticError, AttributeError, LookupError, TypeError, ValueError) as exc:
            message = f"cannot construct a value: {type(exc).__name__}: {exc}"
            raise yaml.constructor.ConstructorError(
                None, None, message[:200], node.start_mark
            ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelCard:
    """Typed model-card metadata. ``datasets`` holds a :class:`Digest` or a URI string each.

    >>> card = ModelCard.from_text("---\\nname: tiny\\nparents: []\\n---\\n# Tiny\\n")
    >>> card.name
    'tiny'
    """

    name: str | None = None
    version: str | None = None
    license: str | None = None
    task: str | None = None
    parents: tuple[Digest, ...] = ()
    datasets: tuple[Digest | str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_mapping(cls, meta: Mapping[str, Any], *, where: str = CARD_FILE) -> ModelCard:
        """Build a card from parsed front matter; bad values name ``where`` and the field."""

        def text(key: str, *, allow_int: bool = False) -> str | None:
            value = meta.get(key)
            if value is None:
                return None
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise InvalidModelError(
                    f"model card field {key!r} must be a string", path=where, field=key
                )
            if isinstance(value, int) and not allow_int:
                raise InvalidModelError(
                    f"model card field {key!r} must be a string", path=where, field=key
                )
            return str(value)

        def items(key: str) -> list[Any]:
            value = meta.get(key)
            if value is None:
                return []
            if not isinstance(value, list):
                raise InvalidModelError(
                    f"model card field {key!r} must be a list", path=where, field=key
                )
            return value

        def digest(value: Any, key: str) -> Digest:
            try:
                return Digest.from_text(value) if isinstance(value, str) else Digest.from_text("")
            except FormatError as exc:
                raise InvalidModelError(
                    f"model card field {key!r} holds an invalid digest (want sha256:<hex>)",
                    path=where,
                    field=key,
                    value=str(value)[:80],
                ) from exc

        def dataset(value: Any) -> Digest | str:
            if isinstance(value, str) and value.startswith("sha256:"):
                return digest(value, "datasets")
            if isinstance(value, str) and _URI.match(value):
                return value
            raise InvalidModelError(
                "model card field 'datasets' holds neither a digest nor a URI "
                "(write sha256:<hex> or e.g. hf://datasets/NAME)",
                path=where,
                field="datasets",
                value=str(value)[:80],
            )

        version = meta.get("version")
        if isinstance(version, float):
            raise InvalidModelError(
                "model card field 'version' must be a string; quote it (version: \"1.0\")",
                path=where,
                field="version",
            )
        return cls(
            name=text("name"),
            version=text("version", allow_int=True),
            license=text("license"),
            task=text("task"),
            parents=tuple(digest(v, "parents") for v in items("parents")),
            datasets=tuple(dataset(v) for v in items("datasets")),
            extra={str(k): v for k, v in meta.items() if k not in _KNOWN},
        )

    @classmethod
    def from_text(cls, text: str, *, where: str = CARD_FILE) -> ModelCard | None:
        """Parse the front matter of a README; ``None`` when it has none."""
        lines = text.splitlines()
        if not lines or not _FENCE.match(lines[0]):
            return None
        for i, line in enumerate(lines[1:], start=1):
            if _END.match(line):
                block = "\n".join(lines[1:i])
                break
        else:
            raise InvalidModelError("model card front matter has no closing ---", path=where)
        try:
            meta = yaml.load(block, Loader=_CardLoader)  # noqa: S506 - a SafeLoader
        except yaml.YAMLError as exc:
            raise InvalidModelError(
                "model card front matter is not valid YAML",
                path=where,
                reason=str(exc).splitlines()[0],
            ) from exc
        if meta is None:
            meta = {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
            raise InvalidModelError(
                "model card front matter must be a mapping of names to values", path=where
            )
        return cls.from_mapping(meta, where=where)

    @classmethod
    def from_file(cls, path: Path, *, max_bytes: int = 1 << 20) -> ModelCard | None:
        """Read ``README.md`` (at most ``max_bytes``); ``None`` when absent or without a card."""
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise InvalidModelError("cannot read model card", path=str(path)) from exc
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModelError("model card is not a regular file", path=str(path))
        if st.st_size > max_bytes:
            raise InvalidModelError(
                "model card is too large", path=str(path), size=st.st_size, limit=max_bytes
            )
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidModelError("model card is not UTF-8 text", path=str(path)) from exc
        return cls.from_text(text, where=str(path))

    def to_json(self) -> dict[str, Any]:
        """The card as front-matter-shaped JSON: known fields first, then ``extra``."""
        out: dict[str, Any] = {}
        for key in ("name", "version", "license", "task"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out["parents"] = [str(p) for p in self.parents]
        out["datasets"] = [str(d) for d in self.datasets]
        out.update(_jsonable(dict(self.extra)))
        return out

    def to_text(self) -> str:
        """The front matter block (``---`` YAML ``---``), which :meth:`from_text` reads back."""
        meta = self.to_json()
        body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
        return f"---\n{body}---\n"
