"""The hub's routes: ``POST /v1/models`` (publish), ``GET /v1/models`` (list, paged),
``GET /v1/models/{ref}`` and ``GET /v1/blobs/{digest}`` (ranged, verified downloads).

The work is :class:`~veriml.coordinator.hub.service.HubService`'s; these functions read the
request and shape the response (docs/coordinator.md, "The hub").
"""

from __future__ import annotations

import base64
import binascii
import shutil
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fsspec.core import url_to_fs
from starlette.concurrency import run_in_threadpool

from veriml.coordinator import schemas
from veriml.coordinator.auth import SignedRequest, accept_signature, request_signature
from veriml.coordinator.db.nodes import ModelRecord
from veriml.coordinator.deps import HubDep, ModelsDep, PageDep
from veriml.coordinator.hub.service import (
    IMMUTABLE,
    PUBLISHER_KEY_HEADER,
    UNSIGNED_OWNER,
    extract_upload,
    spool_upload,
)
from veriml.coordinator.problems import problem
from veriml.coordinator.settings import Settings
from veriml.core.digest import CHUNK_SIZE, Digest
from veriml.core.errors import (
    Check,
    FormatError,
    LimitExceededError,
    NotFoundError,
    SignatureError,
    StorageError,
)
from veriml.core.keys import VerifyingKey, load_public_key
from veriml.core.timestamps import parse_time
from veriml.models.blobstore import BlobStore


def _blob_stream(blobs: BlobStore, digest: Digest, start: int, length: int) -> Iterator[bytes]:
    fs, _ = url_to_fs(blobs.url)
    with fs.open(blobs.path(digest), "rb") as f:
        f.seek(start)
        left = length
        while left > 0:
            chunk = f.read(min(CHUNK_SIZE, left))
            if not chunk:
                raise StorageError("blob ended early", digest=str(digest))
            left -= len(chunk)
            yield chunk


def _verified_stream(blobs: BlobStore, digest: Digest) -> Iterator[bytes]:
    with blobs.open(digest) as reader:
        while chunk := reader.read(CHUNK_SIZE):
            yield chunk


def parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=`` range (RFC 9110 §14.1.2) as ``(start, end inclusive)``; None when the
    header asks for several ranges or is not a bytes range (then the whole blob is sent);
    :class:`RangeNotSatisfiableError` when no byte of it exists."""
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    if first == "":
        if not last.isdigit():
            return None
        suffix = int(last)
        if suffix == 0 or size == 0:
            raise RangeNotSatisfiableError(size)
        return max(size - suffix, 0), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range is ignored (RFC 9110 §14.2)
    if start >= size:
        raise RangeNotSatisfiableError(size)
    return start, min(int(last), size - 1) if last else size - 1


class RangeNotSatisfiableError(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


router = APIRouter(tags=["hub"])


def _publisher(
    request: Request, settings: Settings, signature: SignedRequest | None
) -> VerifyingKey | None:
    """Step 0: the publisher key, checked against the request signature the settings
    require; None for an unsigned upload the settings allow."""
    encoded = request.headers.get(PUBLISHER_KEY_HEADER)
    if not encoded:
        if not settings.allow_unsigned_publish:
            raise SignatureError(
                "this hub publishes signed models only: sign the folder (model.sig) and give "
                f"the publisher key in {PUBLISHER_KEY_HEADER} (base64 PEM)",
                check=Check.PUBLISHER_KEY,
            )
        return None
    try:
        publisher = load_public_key(base64.b64decode(encoded, validate=True), kind="ec")
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{PUBLISHER_KEY_HEADER} is not base64") from exc
    if settings.require_signed_publish:
        if signature is None:
            raise SignatureError(
                "this hub accepts publications signed by the publisher key only "
                "(RFC 9421: X-Veriml-Key, Signature-Input, Signature)",
                check=Check.REQUEST_SIGNATURE,
            )
        if signature.key_id != publisher.key_id:
            raise SignatureError(
                "the publication is signed by another key than the publisher's",
                check=Check.REQUEST_SIGNATURE,
                expected=publisher.key_id,
                got=signature.key_id,
            )
    return publisher


@router.post(
    "/v1/models",
    operation_id="publish_model",
    status_code=201,
    openapi_extra=schemas.PUBLISH_MODEL,
)
async def publish_model(request: Request, hub: HubDep) -> JSONResponse:
    """Publish a model: the folder as a tar stream, ``model.sig`` inside; header
    ``X-Veriml-Publisher-Key`` = base64 of the publisher's PEM public key (EC), and the
    request signed by that key (RFC 9421, docs/network.md "Signed requests"). Without a
    publisher key, an unsigned model (only where the operator allows unsigned publishing)."""
    signature = request_signature(request)
    publisher = _publisher(request, hub.settings, signature)
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > hub.settings.max_upload_bytes
    ):
        raise LimitExceededError("upload is too large", limit=hub.settings.max_upload_bytes)
    staging = await run_in_threadpool(hub.new_staging)
    try:
        spooled = staging / "upload.tar"
        body = await spool_upload(request, spooled, hub.settings.max_upload_bytes)
        # Authenticate before extracting: the signature covers the digest of the bytes on
        # disk, so no header of an archive nobody signed is ever parsed.
        submitted_by = await accept_signature(request, signature, body)
        upload = staging / "upload"
        upload.mkdir()
        await run_in_threadpool(extract_upload, spooled, upload, hub.archive_limits)
        await run_in_threadpool(spooled.unlink)
        record, created = await hub.publish(upload, publisher, submitted_by=submitted_by)
    finally:
        await run_in_threadpool(shutil.rmtree, staging, True)
    described = await run_in_threadpool(hub.describe, record)
    return JSONResponse(described, status_code=201 if created else 200)


@router.get("/v1/models", operation_id="list_models")
def list_models(
    models: ModelsDep,
    *,
    name: str | None = None,
    task: str | None = None,
    publisher: str | None = None,
    page: PageDep,
) -> dict[str, Any]:
    """Registered models, newest first; ``name`` matches a substring, ``publisher`` a key id.

    The answer has the hub's members (``models``, ``next_offset``) and, for OpenAI clients
    (``client.models.list()``), OpenAI's list shape beside them: ``object: "list"`` and
    ``data``, one ``{"id": "name@version", "object": "model", "created", "owned_by"}`` per
    model (``owned_by``: the publisher's key id, or ``"unsigned"``). Unsigned models are
    listed, marked (``"unsigned": true``, ``publisher: null``), but no name resolves to them.
    """
    found = models.search(
        name=name, task=task, publisher=publisher, limit=page.limit + 1, offset=page.offset
    )
    listed = found[: page.limit]
    return {
        "object": "list",
        "data": [openai_model(m) for m in listed],
        "models": [m.to_json() for m in listed],
        "next_offset": page.next_offset(len(found)),
    }


def openai_model(record: ModelRecord) -> dict[str, Any]:
    """A registered model as an OpenAI model object (``created``: registration, Unix seconds;
    ``owned_by``: the publisher's key id, or ``"unsigned"``). An unsigned model's ``id`` is
    its digest: no name reaches it."""
    created = parse_time(record.registered_at, what="registered_at")
    return {
        "id": record.digest.to_text() if record.unsigned else record.ref,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": UNSIGNED_OWNER if record.unsigned else record.publisher_key_id,
    }


@router.get("/v1/models/{ref:path}", operation_id="get_model", responses=schemas.GET_MODEL)
def get_model(ref: str, hub: HubDep) -> dict[str, Any]:
    """One model by digest, ``name`` (latest registered) or ``name@version``, with lineage
    and its namespace's claim; names reach signed models only."""
    return hub.describe(hub.models.resolve(ref))


@router.get(
    "/v1/blobs/{digest}",
    operation_id="get_blob",
    response_class=Response,
    responses=schemas.GET_BLOB,
)
def get_blob(digest: str, request: Request, hub: HubDep) -> Response:
    """A blob by digest; one ``Range`` honoured (206, or 416 beyond the end); immutable."""
    wanted = Digest.from_text(digest)
    if not hub.blobs.has(wanted):
        raise NotFoundError("no such blob", digest=digest)
    size = hub.blobs.size(wanted)
    etag = f'"{wanted.to_text()}"'
    headers = {"Accept-Ranges": "bytes", "ETag": etag, "Cache-Control": IMMUTABLE}
    if request.headers.get("if-none-match") in (etag, "*"):
        return Response(status_code=304, headers=headers)
    header = request.headers.get("range")
    span = None
    if header is not None and request.headers.get("if-range") in (None, etag):
        try:
            span = parse_range(header, size)
        except RangeNotSatisfiableError:
            return problem(
                416,
                f"range {header[:60]} is beyond the blob's {size} bytes",
                headers=headers | {"Content-Range": f"bytes */{size}"},
            )
    media = "application/octet-stream"
    if span is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            _verified_stream(hub.blobs, wanted), media_type=media, headers=headers
        )
    start, end = span
    headers |= {
        "Content-Range": f"bytes {start}-{end}/{size}",
        "Content-Length": str(end - start + 1),
    }
    return StreamingResponse(
        _blob_stream(hub.blobs, wanted, start, end - start + 1),
        status_code=206,
        media_type=media,
        headers=headers,
    )
