"""The SDK's model pulls (docs/sdk.md, "Listings and long uploads"): a model named by digest
comes from the cache under the user's directories, re-validated, or is pulled from the hub and
verified as a node pulls it (:func:`veriml.models.pull.pull_model`: OMS signature and digest),
telling a progress callback the bytes as they arrive.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from veriml.client._publish import Progress
from veriml.core.digest import Digest
from veriml.core.errors import Error, NodeUnavailableError

if TYPE_CHECKING:
    from veriml.models.pull import Package

__all__ = ["cached_model"]

PULL_TIMEOUT = httpx.Timeout(600.0, connect=10.0)
_MAX_MANIFEST = 1 << 20


def cached_model(
    url: str, digest: Digest, models: Path, *, max_bytes: int, progress: Progress | None = None
) -> Package:
    """Model ``digest`` from ``models/<hex>`` (re-validated; a folder changed on disk or
    half-written is pulled again) or pulled from the hub at ``url`` into ``models``."""
    from veriml.models.pull import load_cached, pull_model

    folder = models / digest.hex
    if folder.is_dir():
        try:
            return load_cached(folder, digest)
        except Error:
            shutil.rmtree(folder, ignore_errors=True)
    transport = httpx.HTTPTransport() if progress is None else _Counting(progress)
    with httpx.Client(timeout=PULL_TIMEOUT, transport=transport) as http:
        try:
            return pull_model(http, url, digest, models, max_bytes=max_bytes)
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "cannot pull the model from the hub", model=digest, reason=repr(exc)[:200]
            ) from exc


class _Counting(httpx.HTTPTransport):
    """A transport that tells ``progress`` the blob bytes received, against the total the
    hub's model record states (``size``: its files; the signature's few bytes beyond it are
    not counted past the total)."""

    def __init__(self, progress: Progress) -> None:
        super().__init__()
        self._progress = progress
        self._manifest = bytearray()
        self._total: int | None = None
        self._done = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        path = request.url.path
        if "/v1/blobs/" in path:
            count: Callable[[bytes], None] = self._blob
        elif "/v1/models/" in path:
            count = self._record
        else:
            return response
        assert isinstance(response.stream, httpx.SyncByteStream)
        response.stream = _Stream(response.stream, count)
        return response

    def _record(self, chunk: bytes) -> None:
        if len(self._manifest) + len(chunk) <= _MAX_MANIFEST:
            self._manifest += chunk

    def _blob(self, chunk: bytes) -> None:
        if self._total is None and self._manifest:
            try:
                size = json.loads(bytes(self._manifest)).get("size")
            except (ValueError, AttributeError):
                size = None
            self._total = size if type(size) is int and size >= 0 else None
            self._manifest.clear()
        self._done += len(chunk)
        total = self._total
        self._progress(self._done if total is None else min(self._done, total), total)


class _Stream(httpx.SyncByteStream):
    def __init__(self, stream: httpx.SyncByteStream, count: Callable[[bytes], None]) -> None:
        self._stream = stream
        self._count = count

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._stream:
            self._count(chunk)
            yield chunk

    def close(self) -> None:
        self._stream.close()
