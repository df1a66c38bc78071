"""Reading a node's traces as the coordinator does: a ``GET`` signed (RFC 9421) with the
coordinator key the node trusts (docs/privacy.md: nobody else reads them)."""

from __future__ import annotations

from typing import Any

import httpx

from veriml.core.digest import Digest
from veriml.core.keys import SigningKey
from veriml.protocol.http_signatures import sign_request


def read_trace(key: SigningKey, url: str, **kwargs: Any) -> httpx.Response:
    """``GET url`` (a node's ``/v1/traces/...`` route) signed with ``key``."""
    return httpx.get(url, headers=sign_request(key, "GET", url, Digest.of(b"")), **kwargs)
