"""The SDK's model pulls (docs/sdk.md, "Listings and long uploads"): a model named by digest
comes from the cache under the user's directories, re-validated, or is pulled from the hub and
verified as a node pulls it (:func:`veriml.models.pull.pull_model`: OMS signature and digest),
telling a progress callback the bytes as they arrive.
"""

from __future__ import annotations

import shutil
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
    with httpx.Client(timeout=PULL_TIMEOUT) as http:
        try:
            return pull_model(http, url, digest, models, max_bytes=max_bytes, progress=progress)
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "cannot pull the model from the hub", model=digest, reason=repr(exc)[:200]
            ) from exc
