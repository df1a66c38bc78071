"""Static publishing: write a log's tiles, entry bundles and checkpoint to any fsspec URL.

The files are laid out exactly as C2SP tlog-tiles serves them (https://c2sp.org/tlog-tiles):
``<url>/checkpoint``, ``<url>/tile/<L>/<N>[.p/<W>]`` and ``<url>/tile/entries/<N>[.p/<W>]``,
so a bucket or a CDN in front of it serves the same bytes as ``veriml log serve``.

Publishing is incremental: the checkpoint already at ``url`` says which size was published
last; only tiles that were partial or absent at that size are written. Tiles and bundles are
written before the checkpoint, so a reader never sees a checkpoint whose tiles are missing.
Partial tiles of earlier sizes are kept, since clients holding older checkpoints may ask.
Before writing anything, the published checkpoint is checked to be one this log signed: a
publisher never overwrites another log, or a fork of this one.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

import fsspec

from veriml.core.errors import FormatError, LogInconsistencyError, StorageError
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.log import Log
from veriml.tlog.note import MAX_NOTE_SIZE, Note
from veriml.tlog.tiles import TILE_HEIGHT, TILE_WIDTH, TilePath

__all__ = ["PublishReport", "publish_log", "tile_paths_between"]


@dataclass(frozen=True, slots=True)
class PublishReport:
    """What one :func:`publish_log` call did."""

    old_size: int
    size: int
    files: int
    bytes: int


def tile_paths_between(old_size: int, size: int) -> list[TilePath]:
    """Hash tiles and entry bundles that a tree of ``size`` has and one of ``old_size`` lacked.

    A tile is "lacked" unless it was already full at ``old_size``; the entry bundles follow
    the level-0 tiles. Ordered by level, then index, entry bundles last.
    """
    if not 0 <= old_size <= size:
        raise FormatError("publishing needs 0 ≤ old size ≤ size", old=old_size, size=size)
    paths: list[TilePath] = []
    bundles: list[TilePath] = []
    level = 0
    while size >> (TILE_HEIGHT * level):
        hashes = size >> (TILE_HEIGHT * level)  # hashes at this tile level
        first = (old_size >> (TILE_HEIGHT * level)) // TILE_WIDTH
        for index in range(first, (hashes + TILE_WIDTH - 1) // TILE_WIDTH):
            width = min(TILE_WIDTH, hashes - index * TILE_WIDTH)
            paths.append(TilePath(level, index, width))
            if level == 0:
                bundles.append(TilePath("entries", index, width))
        level += 1
    return paths + bundles


def _published_size(fs: Any, root: str, log: Log) -> int:
    path = posixpath.join(root, "checkpoint")
    if not fs.exists(path):
        return 0
    data = fs.cat_file(path, start=0, end=MAX_NOTE_SIZE + 1)
    try:
        remote = Checkpoint.from_text(Note.from_bytes(data).text)
    except FormatError as exc:
        raise StorageError("the published checkpoint is unreadable", path=path) from exc
    try:
        ours = Checkpoint.from_text(Note.from_bytes(log.checkpoint_at(remote.size)).text)
    except StorageError as exc:
        raise LogInconsistencyError(
            "the published checkpoint was not signed by this log", size=remote.size
        ) from exc
    if ours != remote:
        raise LogInconsistencyError(
            "the published checkpoint differs from this log's",
            size=remote.size,
            published_root=remote.root_hash,
            log_root=ours.root_hash,
        )
    return remote.size


def publish_log(log: Log, url: str, **storage_options: Any) -> PublishReport:
    """Write what is new in ``log`` since the last publication to ``url``; see the module doc.

    >>> publish_log(log, "file:///srv/log")  # doctest: +SKIP
    PublishReport(old_size=0, size=1000, files=9, bytes=...)
    """
    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    root = root.rstrip("/")
    size, note = log.storage.checkpoint()
    old_size = _published_size(fs, root, log)
    if old_size > size:
        raise LogInconsistencyError(
            "the published tree is ahead of the log", old=old_size, size=size
        )
    made: set[str] = set()
    files = written = 0

    def put(rel: str, data: bytes) -> None:
        nonlocal files, written
        target = posixpath.join(root, rel)
        parent = posixpath.dirname(target)
        if parent not in made:
            fs.makedirs(parent, exist_ok=True)
            made.add(parent)
        fs.pipe_file(target, data)
        files += 1
        written += len(data)

    for path in tile_paths_between(old_size, size):
        put(path.to_path(), log.read_tile(path, size=size))
    # The checkpoint last, and replaced in one step, so readers never see a torn file.
    temp = "checkpoint.tmp"
    put(temp, note)
    fs.mv(posixpath.join(root, temp), posixpath.join(root, "checkpoint"))
    return PublishReport(old_size=old_size, size=size, files=files, bytes=written)
