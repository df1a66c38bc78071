"""The identity of a model folder: its OpenSSF Model Signing (OMS) root digest.

The digest is computed by the ``model-signing`` library itself, never re-implemented, so a
folder has the same ``sha256:`` identity here as in any OMS signature made for it:

* every regular file under the folder is hashed with SHA-256 ("files" serialization);
* the manifest lists ``(relative POSIX path, digest)`` sorted by path;
* the root digest is SHA-256 over the concatenated per-file digests, in that order. It is the
  ``subject[0].digest.sha256`` of the in-toto statement inside an OMS signature.

Spec: https://github.com/ossf/model-signing-spec and the reference implementation
https://github.com/sigstore/model-transparency (``model_signing.hashing``,
``model_signing._signing.signing.Payload``).

Excluded, as ``model_signing`` excludes them: git metadata (``.git/``, ``.gitattributes``,
``.github/``, ``.gitignore``), the signature file (``model.sig`` by default) and any ``ignore``
paths. Symbolic links and special files are refused, as ``model_signing`` refuses them.

A ``progress`` callback (docs/models.md, "Progress") is told the bytes hashed so far and the
folder's total as model_signing's own reads go by: each file hasher's SHA-256 stream is
counted, chunk by chunk; the reads and the hashing stay model_signing's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_signing import hashing as ms_hashing
from model_signing import manifest as ms_manifest
from model_signing._signing import signing as ms_signing

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.errors import InvalidModelError

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_SIGNATURE_NAME",
    "GIT_PATHS",
    "ManifestEntry",
    "Progress",
    "files_digest",
    "hash_manifest",
    "manifest_entries",
    "model_digest",
    "root_digest",
]

DEFAULT_SIGNATURE_NAME = "model.sig"
# model_signing ignores these unless told otherwise (hashing.Config.hash).
GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")
# model_signing's own default; measured no faster with 256 KiB..8 MiB reads (SHA-256 bound).
# The digest does not depend on it: each file is one SHA-256 stream.
DEFAULT_CHUNK_SIZE = 1 << 20

Progress = Callable[[int, int | None], None]
"""Told ``(bytes done, total bytes or None)`` as a long operation goes; ``done`` only grows."""


@dataclass(frozen=True, slots=True)
class ManifestEntry:
    """One file of a signed or hashed model: its relative POSIX path and its SHA-256 digest."""

    path: str
    digest: Digest


def _relative_ignores(root: Path, ignore: Iterable[Path | str]) -> list[Path]:
    """Ignore paths relative to ``root``; absolute ones outside the folder are irrelevant."""
    resolved_root = root.resolve()
    out = [Path(DEFAULT_SIGNATURE_NAME)]
    for item in ignore:
        p = Path(item)
        if p.is_absolute():
            try:
                p = p.resolve().relative_to(resolved_root)
            except ValueError:
                continue
        if ".." in p.parts:
            continue
        out.append(p)
    return out


def _config(
    root: Path,
    ignore: Iterable[Path | str],
    *,
    max_workers: int | None,
    chunk_size: int,
    progress: Progress | None = None,
) -> Any:
    """model_signing's hashing config for a folder; with ``progress``, its reads are counted."""
    config = ms_hashing.Config().use_file_serialization(  # type: ignore[no-untyped-call]
        hashing_algorithm="sha256",
        chunk_size=chunk_size,
        max_workers=max_workers,
        allow_symlinks=False,
    )
    config.set_ignored_paths(paths=_relative_ignores(root, ignore), ignore_git_paths=True)
    if progress is not None:
        _count_reads(config, _Counter(_hashed_size(root, ignore), progress))
    return config


def _hashed_size(root: Path, ignore: Iterable[Path | str]) -> int:
    """The bytes model_signing will hash: the regular files under ``root`` that are not
    ignored (the signature, git metadata, ``ignore``)."""
    ignored = [*_relative_ignores(root, ignore), *map(Path, GIT_PATHS)]
    total = 0
    for file in root.rglob("*"):
        rel = file.relative_to(root)
        if file.is_file() and not file.is_symlink() and not any(map(rel.is_relative_to, ignored)):
            total += file.stat().st_size
    return total


class _Counter:
    """Bytes hashed across model_signing's worker threads, told to ``progress`` in order."""

    def __init__(self, total: int, progress: Progress) -> None:
        self._lock = threading.Lock()
        self._done = 0
        self._total = total
        self._progress = progress

    def add(self, count: int) -> None:
        with self._lock:
            self._done += count
            self._progress(self._done, self._total)


class _CountingStream:
    """A model_signing stream hasher whose ``update`` also counts the bytes it is given."""

    def __init__(self, inner: Any, counter: _Counter) -> None:
        self._inner = inner
        self._counter = counter

    def update(self, data: bytes) -> None:
        self._inner.update(data)
        self._counter.add(len(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _count_reads(config: Any, counter: _Counter) -> None:
    """Wrap the file hashers that ``config``'s file serializer builds, so that every chunk
    it hashes is counted (``SimpleFileHasher`` feeds its SHA-256 stream chunk by chunk)."""
    serializer = config._serializer
    build = serializer._hasher_factory

    def counting(path: Path) -> Any:
        hasher = build(path)
        hasher._content_hasher = _CountingStream(hasher._content_hasher, counter)
        return hasher

    serializer._hasher_factory = counting


def hash_manifest(
    path: Path,
    *,
    ignore: Iterable[Path | str] = (),
    max_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Any:
    """The ``model_signing`` manifest of a folder (files serialization, SHA-256); ``progress``,
    when given, is told the bytes hashed so far and the total.

    Raises :class:`InvalidModelError` when the folder holds a symlink or special file, cannot be
    read, or is not a folder.
    """
    if not path.is_dir() or path.is_symlink():
        raise InvalidModelError("a model is a folder", path=str(path))
    try:
        config = _config(
            path, ignore, max_workers=max_workers, chunk_size=chunk_size, progress=progress
        )
        return config.hash(path)
    except ValueError as exc:
        # model_signing signals symlinks and special files with a bare ValueError.
        raise InvalidModelError(
            "model folder holds a symlink or special file; OMS hashing refuses them",
            path=str(path),
            reason=str(exc),
        ) from exc
    except OSError as exc:
        raise InvalidModelError(
            "cannot read model file", path=exc.filename or str(path), reason=exc.strerror
        ) from exc


def manifest_entries(manifest: Any) -> tuple[ManifestEntry, ...]:
    """The ``(path, digest)`` pairs of a manifest, sorted by path as OMS orders them."""
    entries = []
    for descriptor in manifest.resource_descriptors():
        if descriptor.digest.algorithm != "sha256":
            raise InvalidModelError(
                "only SHA-256 manifests identify veriml models",
                algorithm=descriptor.digest.algorithm,
            )
        entries.append(ManifestEntry(descriptor.identifier, Digest(descriptor.digest.digest_value)))
    return tuple(entries)


def files_digest(entries: Iterable[ManifestEntry]) -> Digest:
    """Digest of the file layout: RFC 8785 JSON of ``[{"path", "digest"}, ...]`` sorted by path.

    The OMS root digest hashes the file digests in path order but not the paths, so two
    folders that hold the same bytes under different names (``model.onnx`` and ``x.onnx``
    swapped) share a root digest and run different graphs. Receipts therefore bind this digest
    beside the root digest.
    """
    return canonical_digest(
        [{"path": e.path, "digest": e.digest.to_text()} for e in sorted(entries, key=_path_of)]
    )


def _path_of(entry: ManifestEntry) -> str:
    return entry.path


def root_digest(manifest: ms_manifest.Manifest) -> Digest:
    """The OMS root digest of a manifest, as model_signing puts it in the statement subject."""
    statement = ms_signing.Payload(manifest).statement.pb
    return Digest.from_hex(str(statement.subject[0].digest["sha256"]))


def model_digest(
    path: Path,
    *,
    ignore: Iterable[Path | str] = (),
    max_workers: int | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    progress: Progress | None = None,
) -> Digest:
    """The OMS root digest of the model folder ``path``: ``sha256:<hex>``.

    ``ignore`` lists further paths to leave out (relative to ``path``, or absolute inside it);
    ``model.sig`` and git metadata are always left out. ``max_workers`` (threads hashing files
    in parallel; by default model_signing's ``min(32, cores + 4)``: SHA-256 releases the GIL,
    and one thread per core measured no faster) and ``chunk_size`` change the speed, never the
    digest. ``progress`` is told ``(bytes hashed, total bytes)`` as the files are read.

    >>> model_digest(Path("my-model"))  # doctest: +SKIP
    Digest('sha256:...')
    """
    return root_digest(
        hash_manifest(
            path,
            ignore=ignore,
            max_workers=max_workers,
            chunk_size=chunk_size,
            progress=progress,
        )
    )
