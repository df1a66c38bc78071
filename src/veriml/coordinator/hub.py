"""The hub: publish a signed model folder, find models, download their blobs.

``POST /v1/models`` registers a model in this order, and nothing is registered unless every
step passes (the staging folder is removed whatever happens):

1. limits: ``Content-Length`` and then every byte as it streams (413);
2. the tar stream is extracted member by member into a staging folder (400 naming a member
   that is unsafe: links, devices, ``..``, absolute paths);
3. the request signature, if any, over the body's digest (403);
4. ``load_package``: the folder is a valid model, ONNX or GGUF (docs/llm.md) (400);
5. the OMS signature ``model.sig`` with the publisher key from ``X-Veriml-Publisher-Key``
   (403 naming the failed check: signature file, key, signature, file digest, files);
6. the files go into the content-addressed blob store (``model.sig`` is a blob too);
7. a pending row reserves the digest and ``name@version`` (409 if bound to another digest),
   ONE ``ModelEntry`` is appended to the log, and the row gets its log index.

Publishing the same digest again answers 200 with the registered model. A replica that
crashed between the log append and step 7's completion leaves a pending row; whoever claims
it later finds the entry in the log by its leaf hash instead of appending it twice.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fsspec.core import url_to_fs
from starlette.concurrency import run_in_threadpool

from veriml.coordinator.archive import ArchiveLimits, ChunkPipe, extract_tar
from veriml.coordinator.auth import RequestSignature
from veriml.coordinator.deps import ModelsDep
from veriml.coordinator.problems import problem
from veriml.coordinator.repositories import ModelRecord, ModelRepository
from veriml.coordinator.settings import Settings
from veriml.core.digest import CHUNK_SIZE, Digest
from veriml.core.errors import (
    DigestMismatch,
    FormatError,
    InvalidModel,
    LimitExceeded,
    NotFound,
    SignatureError,
    StorageError,
)
from veriml.core.keys import load_public_key
from veriml.core.timestamps import parse_time, utc_now
from veriml.ledger.entries import ModelEntry
from veriml.models.blobstore import BlobRef, BlobStore
from veriml.models.digest import DEFAULT_SIGNATURE_NAME
from veriml.models.gguf import LLMPackage
from veriml.models.package import ModelPackage, load_package
from veriml.models.signing import MAX_SIGNATURE_BYTES, verify_model
from veriml.models.validate import Limits
from veriml.tlog.log import Log
from veriml.tlog.merkle import leaf_hash

__all__ = ["PUBLISHER_KEY_HEADER", "HubService", "openai_model", "router"]

PUBLISHER_KEY_HEADER = "X-Veriml-Publisher-Key"
IMMUTABLE = "public, max-age=31536000, immutable"
# Staging folders older than this (seconds) were left by a crash and are swept at start-up.
STALE_UPLOAD = 6 * 3600.0
# How long a publish waits for another replica that is registering the same digest.
PENDING_WAIT = 10.0


class HubService:
    """Registers verified model folders and answers model queries."""

    def __init__(self, *, settings: Settings, models: ModelRepository, blobs: BlobStore, log: Log):
        self.settings = settings
        self.models = models
        self.blobs = blobs
        self.log = log
        fs, root = url_to_fs(blobs.url)
        local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        self.staging_root = Path(root) / "uploads" if local else settings.data_dir / "uploads"
        self.checkout_root = settings.data_dir / "models"
        self._checkout_lock = threading.Lock()

    def package(self, digest: Digest) -> ModelPackage | LLMPackage:
        """A registered model as a verified local folder (blocking), for the coordinator's own
        use: tolerance bounds, the dispute referee, LLM metadata.

        The folder is written once under ``HOME/coordinator/models/<hex>`` from the blob store
        (each blob checked by digest) and loaded with :func:`load_package` (ONNX or GGUF),
        whose OMS digest must be the registered one.
        """
        record = self.models.get(digest)
        if record is None:
            raise NotFound("no model with this digest", digest=digest)
        target = self.checkout_root / digest.hex
        with self._checkout_lock:
            if not target.is_dir():
                staging = self.checkout_root / f".{digest.hex}.{uuid.uuid4().hex}"
                staging.mkdir(parents=True)
                try:
                    manifest = {
                        str(e["path"]): BlobRef(Digest.from_text(e["digest"]), int(e["size"]))
                        for e in record.manifest
                    }
                    self.blobs.get_folder(manifest, staging)
                    staging.rename(target)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
        package = load_package(target)
        if package.digest != digest:
            raise DigestMismatch(
                "checked-out model folder is not the registered model",
                check="root-digest",
                expected=digest,
                calculated=package.digest,
            )
        return package

    def onnx_package(self, digest: Digest) -> ModelPackage:
        """:meth:`package` for callers that run the graph: an LLM is :class:`InvalidModel`."""
        package = self.package(digest)
        if not isinstance(package, ModelPackage):
            raise InvalidModel("this model is not an ONNX graph", digest=digest, kind=package.kind)
        return package

    @property
    def archive_limits(self) -> ArchiveLimits:
        return ArchiveLimits(
            max_bytes=self.settings.max_upload_bytes,
            max_files=self.settings.max_files,
            max_depth=self.settings.max_path_depth,
        )

    def sweep_staging(self, *, older_than: float = STALE_UPLOAD) -> int:
        """Remove staging folders a crashed process left behind; how many were removed.

        Only old ones: another replica sharing the blob store may be receiving an upload.
        """
        removed = 0
        cutoff = time.time() - older_than
        if not self.staging_root.is_dir():
            return 0
        for folder in self.staging_root.iterdir():
            try:
                if folder.stat().st_mtime < cutoff:
                    shutil.rmtree(folder, ignore_errors=True)
                    removed += 1
            except FileNotFoundError:
                continue  # removed meanwhile by its owner
        return removed

    def new_staging(self) -> Path:
        path = self.staging_root / uuid.uuid4().hex
        path.mkdir(parents=True)
        return path

    # -- registration ---------------------------------------------------------------------

    def register_folder(
        self, folder: Path, publisher_key: bytes, *, submitted_by: str | None = None
    ) -> tuple[ModelRecord, bool]:
        """Verify and register the model folder; ``(record, created)``. Steps 4 to 7."""
        folder = _model_root(folder)
        publisher = load_public_key(publisher_key, kind="ec")
        limits = Limits(
            max_files=self.settings.max_files, max_total_bytes=self.settings.max_upload_bytes
        )
        package = load_package(folder, limits=limits)  # 4
        card = package.card
        if card is None or not card.name or not card.version:
            raise InvalidModel(
                "the model card (README.md front matter) must give name and version",
                path="README.md",
            )
        signature = folder / DEFAULT_SIGNATURE_NAME
        if not signature.is_file():
            raise SignatureError(
                "the upload has no model.sig (OMS signature)", check="signature-file"
            )
        pub_path = folder.parent / "publisher.pub"
        pub_path.write_bytes(publisher.to_pem())
        digest = verify_model(folder, pub_path)  # 5
        if digest != package.digest:
            raise DigestMismatch(
                "the signed digest is not the loaded model's",
                check="root-digest",
                expected=digest,
                calculated=package.digest,
            )
        existing = self.models.get(digest)
        if existing is not None:
            return existing, False
        refs = self.blobs.put_folder(folder, limits=limits)  # 6
        sig_ref = refs.get(DEFAULT_SIGNATURE_NAME)
        if sig_ref is None or sig_ref.size > MAX_SIGNATURE_BYTES:
            raise SignatureError("the OMS signature is missing or too large", check="signature")
        manifest = tuple(
            {"path": e.path, "digest": e.digest.to_text(), "size": refs[e.path].size}
            for e in package.manifest
        )
        record = ModelRecord(
            digest=digest,
            name=card.name,
            version=card.version,
            task=card.task,
            license=card.license,
            publisher_key_id=publisher.key_id,
            publisher_key=publisher.to_pem().decode(),
            files_digest=package.files_digest,
            signature=sig_ref.digest,
            size=sum(refs[e.path].size for e in package.manifest),
            manifest=manifest,
            io=dict(package.io) if isinstance(package, LLMPackage) else package.io.to_json(),
            card=card.to_json(),
            parents=tuple(p.to_text() for p in card.parents),
            datasets=tuple(str(d) for d in card.datasets),
            registered_at=utc_now(),
            submitted_by=submitted_by,
        )
        return self.register(record)  # 7

    def register(self, record: ModelRecord) -> tuple[ModelRecord, bool]:
        """Reserve, log once, complete. ``(record, created)``; see the module docstring."""
        held = self.models.reserve(record)
        if held is record:
            return self._finish(record, recovering=False), True
        deadline = time.monotonic() + PENDING_WAIT
        while held.log_index is None:
            if self.models.claim(held.digest):
                return self._finish(held, recovering=True), True
            if time.monotonic() > deadline:
                raise StorageError(
                    "another replica is registering this model; retry", digest=str(held.digest)
                )
            time.sleep(0.1)
            current = self.models.get(held.digest, pending=True)
            if current is None:
                return self.register(record)  # the other attempt failed and released it
            held = current
        return held, False

    def _finish(self, record: ModelRecord, *, recovering: bool) -> ModelRecord:
        entry = model_entry(record).to_bytes()
        index: int | None = None
        if recovering:  # a crashed replica may have appended the entry already
            index = self.log.storage.find_leaf(leaf_hash(entry), self.log.size)
        if index is None:
            try:
                index = self.log.add(entry)
            except BaseException:
                if not recovering:
                    self.models.release(record.digest)
                raise
        self.models.complete(record.digest, index)
        return replace(record, log_index=index)

    # -- queries --------------------------------------------------------------------------

    def describe(self, record: ModelRecord) -> dict[str, Any]:
        """The public model object with ``lineage``: each parent, resolved if it is known."""
        lineage = []
        for parent in record.parents:
            try:
                known: ModelRecord | None = self.models.resolve(parent)
            except (NotFound, FormatError):
                known = None
            lineage.append(
                {"ref": parent, "digest": None, "name": None, "version": None, "log_index": None}
                if known is None
                else {
                    "ref": parent,
                    "digest": known.digest.to_text(),
                    "name": known.name,
                    "version": known.version,
                    "log_index": known.log_index,
                }
            )
        return record.to_json() | {"lineage": lineage}


def model_entry(record: ModelRecord) -> ModelEntry:
    """The log entry of a registration (rebuilt byte for byte from the row)."""
    return ModelEntry(
        digest=record.digest,
        files_digest=record.files_digest,
        name=record.name,
        version=record.version,
        publisher_key_id=record.publisher_key_id,
        publisher_key=record.publisher_key,
        signature=record.signature,
        size=record.size,
        registered_at=record.registered_at,
        task=record.task,
        license=record.license,
        parents=record.parents,
        datasets=record.datasets,
    )


def _model_root(folder: Path) -> Path:
    """The model folder in the extracted archive: the archive root, or its only folder
    (``tar -cf - my-model`` puts everything under ``my-model/``)."""
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return folder


async def receive_tar(request: Request, dest: Path, limits: ArchiveLimits) -> Digest:
    """Steps 1 and 2: stream the body into ``extract_tar``; the digest of the raw body."""
    pipe = ChunkPipe()
    loop = asyncio.get_running_loop()
    extractor = loop.run_in_executor(None, extract_tar, pipe, dest, limits)
    body = hashlib.sha256()
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limits.max_bytes:
                raise LimitExceeded("upload is too large", limit=limits.max_bytes)
            body.update(chunk)
            if pipe.closed:  # the extractor stopped: refused the archive, or it ended
                if not extractor.done():
                    await asyncio.wait([extractor], timeout=5)
                if extractor.done() and extractor.exception() is not None:
                    break  # the archive was refused: stop reading
                continue  # the archive ended; hash what trails it (the signature covers it)
            if not chunk or pipe.put_nowait(chunk):
                continue
            await run_in_threadpool(pipe.put, chunk)
        await run_in_threadpool(pipe.put, None)
    except BaseException:
        pipe.abort()
        await asyncio.wait([extractor])
        raise
    await extractor
    return Digest(body.digest())


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
    :class:`RangeNotSatisfiable` when no byte of it exists."""
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
            raise RangeNotSatisfiable(size)
        return max(size - suffix, 0), size - 1
    if not first.isdigit() or (last and not last.isdigit()):
        return None
    start = int(first)
    if last and int(last) < start:
        return None  # an invalid range is ignored (RFC 9110 §14.2)
    if start >= size:
        raise RangeNotSatisfiable(size)
    return start, min(int(last), size - 1) if last else size - 1


class RangeNotSatisfiable(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


# -- routes -------------------------------------------------------------------------------


def _hub(request: Request) -> HubService:
    hub: HubService = request.app.state.hub
    return hub


HubDep = Annotated[HubService, Depends(_hub)]
router = APIRouter(tags=["hub"])


@router.post("/v1/models", operation_id="publish_model", status_code=201)
async def publish_model(request: Request, hub: HubDep) -> JSONResponse:
    """Publish a model: the folder as a tar stream, ``model.sig`` inside; header
    ``X-Veriml-Publisher-Key`` = base64 of the publisher's PEM public key (EC)."""
    encoded = request.headers.get(PUBLISHER_KEY_HEADER)
    if not encoded:
        raise FormatError(f"missing header {PUBLISHER_KEY_HEADER} (base64 PEM public key)")
    try:
        publisher_key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{PUBLISHER_KEY_HEADER} is not base64") from exc
    signature = RequestSignature.from_headers(request.headers)
    if signature is None and hub.settings.require_signed_publish:
        raise SignatureError("this hub accepts signed publications only", check="request-signature")
    declared = request.headers.get("content-length")
    if (
        declared is not None
        and declared.isdigit()
        and int(declared) > hub.settings.max_upload_bytes
    ):
        raise LimitExceeded("upload is too large", limit=hub.settings.max_upload_bytes)
    staging = await run_in_threadpool(hub.new_staging)
    try:
        upload = staging / "upload"
        upload.mkdir()
        body = await receive_tar(request, upload, hub.archive_limits)
        submitted_by = signature.verify("POST", request.url.path, body) if signature else None
        record, created = await run_in_threadpool(
            hub.register_folder, upload, publisher_key, submitted_by=submitted_by
        )
    finally:
        await run_in_threadpool(shutil.rmtree, staging, True)
    return JSONResponse(hub.describe(record), status_code=201 if created else 200)


@router.get("/v1/models", operation_id="list_models")
def list_models(
    models: ModelsDep,
    name: str | None = None,
    task: str | None = None,
    publisher: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    """Registered models, newest first; ``name`` matches a substring, ``publisher`` a key id.

    The answer has the hub's members (``models``, ``next_offset``) and, for OpenAI clients
    (``client.models.list()``), OpenAI's list shape beside them: ``object: "list"`` and
    ``data``, one ``{"id": "name@version", "object": "model", "created", "owned_by"}`` per
    model (``owned_by``: the publisher's key id).
    """
    found = models.search(name=name, task=task, publisher=publisher, limit=limit + 1, offset=offset)
    page = found[:limit]
    return {
        "object": "list",
        "data": [openai_model(m) for m in page],
        "models": [m.to_json() for m in page],
        "next_offset": offset + limit if len(found) > limit else None,
    }


def openai_model(record: ModelRecord) -> dict[str, Any]:
    """A registered model as an OpenAI model object (``created``: registration, Unix seconds)."""
    created = parse_time(record.registered_at, what="registered_at")
    return {
        "id": record.ref,
        "object": "model",
        "created": int(created.timestamp()),
        "owned_by": record.publisher_key_id,
    }


@router.get("/v1/models/{ref}", operation_id="get_model")
def get_model(ref: str, hub: HubDep) -> dict[str, Any]:
    """One model by digest, ``name`` (latest registered) or ``name@version``, with lineage."""
    return hub.describe(hub.models.resolve(ref))


@router.get("/v1/blobs/{digest}", operation_id="get_blob")
def get_blob(digest: str, request: Request, hub: HubDep) -> Response:
    """A blob by digest; one ``Range`` honoured (206, or 416 beyond the end); immutable."""
    wanted = Digest.from_text(digest)
    if not hub.blobs.has(wanted):
        raise NotFound("no such blob", digest=digest)
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
        except RangeNotSatisfiable:
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
