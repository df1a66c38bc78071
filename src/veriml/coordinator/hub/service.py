"""The hub: publish a signed model folder, find models, download their blobs.

``POST /v1/models`` registers a model in this order, and nothing is registered unless every
step passes (the staging folder is removed whatever happens):

0. who publishes: the publisher key in ``X-Veriml-Publisher-Key`` (400 if malformed or not
   EC); without one, the upload is an *unsigned* model, refused (403, ``publisher-key``)
   unless the operator allows unsigned publishing. With ``require_signed_publish`` (the
   default) the request must be signed by that publisher key (403, ``request-signature``);
1. the body is spooled to a staging file, its digest computed as it arrives; limits:
   ``Content-Length`` and then every byte as it streams (413);
2. the request signature, if any, over the body's digest (403): with the default settings
   the publisher is authenticated before any byte of the archive is parsed;
3. the spooled tar is extracted member by member into a staging folder (400 naming a member
   that is unsafe: links, devices, ``..``, absolute paths; 413 beyond the extracted size,
   the compression ratio or the size of an extended header: :mod:`.archive`);
4. ``load_package``: the folder is a valid model, ONNX or GGUF (docs/llm.md) (400);
5. the OMS signature ``model.sig`` with the publisher key (403 naming the failed check:
   signature file, key, signature, file digest, files); then the name: its namespace (the
   part before the first ``/``) must be unclaimed or the publisher's (403, ``namespace``);
6. the files go into the content-addressed blob store (``model.sig`` is a blob too);
7. a pending row reserves the digest and ``name@version`` (409 if bound to another digest),
   and, for the first model of a namespace, a pending row claims the namespace; the log
   entries go through the ledger book (which checks them against the fold) as ONE group,
   ``[NamespaceEntry, ModelEntry]`` or ``[ModelEntry]``; the rows get their log indexes.

An unsigned model (step 0) skips the signature and the name: it claims no namespace, its
``name@version`` is reserved for nobody, names never resolve to it, and it is marked
``unsigned`` wherever it is listed (docs/models.md, "Names").

Publishing the same digest again answers 200 with the registered model; a signed publication
of a model registered unsigned replaces that registration. A replica that crashed between the
log append and step 7's completion leaves pending rows; whoever claims them later finds the
entries in the log by their leaf hashes instead of appending them twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fastapi import Request
from fsspec.core import url_to_fs
from starlette.concurrency import run_in_threadpool

from veriml.coordinator.db.models import NamespaceRecord, NamespaceRepository
from veriml.coordinator.db.nodes import ModelRecord, ModelRepository
from veriml.coordinator.hub.archive import ArchiveLimits, extract_tar
from veriml.coordinator.ledger.service import LedgerBook
from veriml.coordinator.settings import Settings
from veriml.core.digest import CHUNK_SIZE, Digest
from veriml.core.errors import (
    Check,
    ConflictError,
    DigestMismatchError,
    FormatError,
    InvalidModelError,
    LimitExceededError,
    NotFoundError,
    SignatureError,
    StorageError,
    VerificationError,
)
from veriml.core.keys import VerifyingKey
from veriml.core.timestamps import utc_now
from veriml.ledger.entries import Entry, ModelEntry, NamespaceEntry, namespace_of
from veriml.models.blobstore import BlobRef, BlobStore
from veriml.models.digest import DEFAULT_SIGNATURE_NAME
from veriml.models.gguf import LLMPackage
from veriml.models.package import ModelPackage, load_package
from veriml.models.signing import MAX_SIGNATURE_BYTES, verify_model
from veriml.models.validate import Limits
from veriml.tlog.log import Log
from veriml.tlog.merkle import leaf_hash

__all__ = [
    "PUBLISHER_KEY_HEADER",
    "UNSIGNED_OWNER",
    "HubService",
    "Provenance",
    "model_entry",
    "namespace_entry",
]

PUBLISHER_KEY_HEADER = "X-Veriml-Publisher-Key"
UNSIGNED_OWNER = "unsigned"
"""``owned_by`` of an unsigned model in OpenAI's model list (no publisher owns it)."""
IMMUTABLE = "public, max-age=31536000, immutable"
# Staging folders older than this (seconds) were left by a crash and are swept at start-up.
STALE_UPLOAD = 6 * 3600.0
# How long a publish waits for another replica that is registering the same digest.
PENDING_WAIT = 10.0


class HubService:
    """Registers verified model folders and answers model queries."""

    def __init__(
        self,
        *,
        settings: Settings,
        models: ModelRepository,
        namespaces: NamespaceRepository,
        blobs: BlobStore,
        log: Log,
        book: LedgerBook,
    ):
        self.settings = settings
        self.models = models
        self.namespaces = namespaces
        self.blobs = blobs
        self.log = log
        self.book = book
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
            raise NotFoundError("no model with this digest", digest=digest)
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
            raise DigestMismatchError(
                "checked-out model folder is not the registered model",
                check=Check.ROOT_DIGEST,
                expected=digest,
                calculated=package.digest,
            )
        return package

    def onnx_package(self, digest: Digest) -> ModelPackage:
        """:meth:`package` for callers that run the graph: an LLM is :class:`InvalidModelError`."""
        package = self.package(digest)
        if not isinstance(package, ModelPackage):
            raise InvalidModelError(
                "this model is not an ONNX graph", digest=digest, kind=package.kind
            )
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

    def prepare(
        self, folder: Path, publisher: VerifyingKey | None, *, submitted_by: str | None = None
    ) -> tuple[ModelRecord, ModelRecord | None]:
        """Steps 4 to 6 (blocking): verify the folder and store its blobs.

        ``(record, registered)``: the record to register, and the model already registered
        under its digest, if any. When ``registered`` is returned as is (``record is
        registered``) there is nothing to do; otherwise ``registered`` is an unsigned
        registration that this signed one replaces.
        """
        folder = _model_root(folder)
        limits = Limits(
            max_files=self.settings.max_files, max_total_bytes=self.settings.max_upload_bytes
        )
        package = load_package(folder, limits=limits)  # 4
        card = package.card
        if card is None or not card.name or not card.version:
            raise InvalidModelError(
                "the model card (README.md front matter) must give name and version",
                path="README.md",
            )
        signature = folder / DEFAULT_SIGNATURE_NAME
        digest = package.digest
        if publisher is None:  # unsigned publishing (the operator allowed it)
            if signature.exists():
                raise FormatError(
                    f"the folder has a signature ({DEFAULT_SIGNATURE_NAME}): name its "
                    f"publisher key in {PUBLISHER_KEY_HEADER}"
                )
        else:
            if not signature.is_file():
                raise SignatureError(
                    "the upload has no model.sig (OMS signature)", check=Check.SIGNATURE_FILE
                )
            pub_path = folder.parent / "publisher.pub"
            pub_path.write_bytes(publisher.to_pem())
            signed = verify_model(folder, pub_path)  # 5
            if signed != digest:
                raise DigestMismatchError(
                    "the signed digest is not the loaded model's",
                    check=Check.ROOT_DIGEST,
                    expected=signed,
                    calculated=digest,
                )
            namespace_entry_for(card.name, publisher, digest)  # a name that can be claimed
            self.check_namespace(card.name, publisher.key_id)  # 5b
        existing = self.models.get(digest)
        if existing is not None and not (existing.unsigned and publisher is not None):
            return existing, existing
        refs = self.blobs.put_folder(folder, limits=limits)  # 6
        sig_ref = None
        if publisher is not None:
            sig_ref = refs.get(DEFAULT_SIGNATURE_NAME)
            if sig_ref is None or sig_ref.size > MAX_SIGNATURE_BYTES:
                raise SignatureError(
                    "the OMS signature is missing or too large", check=Check.SIGNATURE
                )
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
            publisher_key_id=None if publisher is None else publisher.key_id,
            publisher_key=None if publisher is None else publisher.to_pem().decode(),
            files_digest=package.files_digest,
            signature=None if sig_ref is None else sig_ref.digest,
            size=sum(refs[e.path].size for e in package.manifest),
            manifest=manifest,
            io=dict(package.io) if isinstance(package, LLMPackage) else package.io.to_json(),
            card=card.to_json(),
            parents=tuple(p.to_text() for p in card.parents),
            datasets=tuple(str(d) for d in card.datasets),
            registered_at=utc_now(),
            submitted_by=submitted_by,
        )
        return record, existing

    def check_namespace(self, name: str, publisher: str) -> None:
        """Refuse (403, ``check: "namespace"``) a name whose namespace another key owns,
        by the coordinator's records or by the ledger fold of its log (blocking)."""
        namespace = namespace_of(name)
        claim = self.namespaces.get(namespace)
        owner = claim.owner if claim is not None else None
        if owner is None:
            owner = self.book.state().namespace_owner(namespace)
        if owner is not None and owner != publisher:
            raise namespace_taken(namespace, owner, publisher)

    async def publish(
        self, folder: Path, publisher: VerifyingKey | None, *, submitted_by: str | None = None
    ) -> tuple[ModelRecord, bool]:
        """Steps 4 to 7: verify, store and register the model folder; ``(record, created)``.
        ``publisher`` None registers it unsigned (the route allows that only when the
        operator does)."""
        record, registered = await asyncio.to_thread(
            self.prepare, folder, publisher, submitted_by=submitted_by
        )
        if registered is record:
            return record, False
        return await self.register(record, replaces=registered)

    async def register(
        self, record: ModelRecord, *, replaces: ModelRecord | None = None
    ) -> tuple[ModelRecord, bool]:
        """Step 7: reserve, log once, complete. ``(record, created)``; see the module
        docstring. ``replaces`` is the unsigned registration of the same model that this
        signed one takes over (restored if the registration fails)."""
        held = await asyncio.to_thread(self.models.reserve, record)
        if held is record:
            return await self._finish(record, recovering=False, replaces=replaces), True
        deadline = time.monotonic() + PENDING_WAIT
        while held.log_index is None:
            if await asyncio.to_thread(self.models.claim, held.digest):
                return await self._finish(held, recovering=True), True
            if time.monotonic() > deadline:
                raise StorageError(
                    "another replica is registering this model; retry", digest=str(held.digest)
                )
            await asyncio.sleep(0.1)
            current = await asyncio.to_thread(self.models.get, held.digest, pending=True)
            if current is None:  # the other attempt failed and released it
                return await self.register(record, replaces=replaces)
            held = current
        if held.unsigned and not record.unsigned:  # registered unsigned meanwhile: take over
            return await self.register(record, replaces=held)
        return held, False

    async def _finish(
        self, record: ModelRecord, *, recovering: bool, replaces: ModelRecord | None = None
    ) -> ModelRecord:
        # Shielded: a client that hangs up must not cut a registration between its log
        # append and the rows' completion (a crash can; recovery then finds the entries).
        return await asyncio.shield(self._log_once(record, recovering, replaces))

    async def _log_once(
        self, record: ModelRecord, recovering: bool, replaces: ModelRecord | None
    ) -> ModelRecord:
        claim: NamespaceRecord | None = None
        try:
            if not record.unsigned:
                claim = await self._claim_namespace(record)
            entries: list[Entry] = [model_entry(record)]
            if claim is not None:
                entries.insert(0, namespace_entry(claim, record))
            indexes: list[int] | None = None
            if recovering:  # a crashed replica may have appended the group already
                indexes = await asyncio.to_thread(self._find_logged, entries)
            if indexes is None:
                try:
                    indexes = (await self.book.append(entries))[: len(entries)]
                except ConflictError as exc:  # the fold refused it: another key owns the name
                    raise await self._fold_refusal(record) or exc from exc
        except BaseException:
            if not recovering:
                await asyncio.to_thread(self._release, record, replaces)
            raise
        if claim is not None:
            await asyncio.to_thread(self.namespaces.complete, claim.namespace, indexes[0])
        await asyncio.to_thread(self.models.complete, record.digest, indexes[-1])
        return replace(record, log_index=indexes[-1])

    async def _claim_namespace(self, record: ModelRecord) -> NamespaceRecord | None:
        """The pending claim of ``record``'s namespace that its registration logs (one group:
        ``namespace`` then ``model`` entry), or None when its publisher's claim is logged
        already. 403 when another key owns the namespace."""
        owner, owner_key = record.publisher_key_id, record.publisher_key
        if owner is None or owner_key is None:
            raise FormatError("an unsigned model claims no namespace")
        namespace = namespace_of(record.name)
        wanted = NamespaceRecord(
            namespace=namespace, owner=owner, owner_key=owner_key, model=record.digest
        )
        deadline = time.monotonic() + PENDING_WAIT
        while True:
            claim = await asyncio.to_thread(self.namespaces.reserve, wanted)
            if claim.owner != owner:
                raise namespace_taken(namespace, claim.owner, owner)
            if claim.log_index is not None:
                return None
            if claim.model == record.digest:
                return claim
            # Another model of this publisher is claiming the namespace: its group goes first.
            settled = await asyncio.to_thread(self._settle_claim, claim)
            if isinstance(settled, ModelRecord):  # crashed: finish it on its behalf
                await self._log_once(settled, True, None)
                continue
            if settled:
                continue
            if time.monotonic() > deadline:
                raise StorageError(
                    "another registration is claiming this namespace; retry", namespace=namespace
                )
            await asyncio.sleep(0.1)

    def _settle_claim(self, claim: NamespaceRecord) -> ModelRecord | bool:
        """Look at a pending claim made by another registration (blocking): True if it was
        cleared (that registration failed), False to wait for it (in progress), or that
        registration's record when it crashed and this caller now holds it (to finish)."""
        other = self.models.get(claim.model, pending=True)
        if other is None:  # its registration failed and released its row
            self.namespaces.release(claim.namespace, claim.model)
            return True
        if other.log_index is None:
            return other if self.models.claim(other.digest) else False
        # Registered with its claim still pending: the group was logged; find the claim.
        logged = self._find_logged([namespace_entry(claim, other)])
        if logged is None:
            raise StorageError("a namespace claim was lost", namespace=claim.namespace)
        self.namespaces.complete(claim.namespace, logged[0])
        return True

    def _find_logged(self, entries: list[Entry]) -> list[int] | None:
        """The indexes of ``entries`` if all are in the log already (blocking)."""
        size = self.log.size
        found = [self.log.storage.find_leaf(leaf_hash(e.to_bytes()), size) for e in entries]
        if any(index is None for index in found):
            return None
        return [int(index) for index in found if index is not None]

    async def _fold_refusal(self, record: ModelRecord) -> VerificationError | None:
        if record.unsigned:
            return None
        namespace = namespace_of(record.name)
        state = await asyncio.to_thread(self.book.refresh)
        owner = state.namespace_owner(namespace)
        if owner is None or owner == record.publisher_key_id:
            return None
        return namespace_taken(namespace, owner, str(record.publisher_key_id))

    def _release(self, record: ModelRecord, replaces: ModelRecord | None) -> None:
        """Undo a registration that did not reach the log, so a retry starts afresh."""
        if not record.unsigned:
            self.namespaces.release(namespace_of(record.name), record.digest)
        if replaces is not None:
            self.models.restore(replaces)
        else:
            self.models.release(record.digest)

    # -- queries --------------------------------------------------------------------------

    def provenance(self, digest: Digest) -> Provenance:
        """Where a registered model's provenance evidence is in the log (blocking): the index
        of its ``model`` entry and of its namespace's ``namespace`` entry (None for an
        unsigned model). Answers cite both, and the SDK checks them with
        :func:`veriml.verify.check_provenance`. :class:`NotFoundError` for an unknown model."""
        record = self.models.get(digest)
        if record is None or record.log_index is None:
            raise NotFoundError("no model with this digest", digest=digest)
        if record.unsigned:
            return Provenance(record.log_index, None)
        claim = self.namespaces.get(namespace_of(record.name))
        if claim is None or claim.log_index is None or claim.owner != record.publisher_key_id:
            raise StorageError(
                "the model's namespace claim is not recorded", namespace=namespace_of(record.name)
            )
        return Provenance(record.log_index, claim.log_index)

    def describe(self, record: ModelRecord) -> dict[str, Any]:
        """The public model object with ``lineage`` (each parent, resolved if it is known)
        and ``namespace`` (``{"name", "owner", "log_index"}`` of its claim; null when the
        model is unsigned) (blocking)."""
        lineage = []
        for parent in record.parents:
            try:
                known: ModelRecord | None = self.models.resolve(parent)
            except (NotFoundError, FormatError):
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
        claim = None if record.unsigned else self.namespaces.get(namespace_of(record.name))
        return record.to_json() | {
            "lineage": lineage,
            "namespace": None if claim is None else claim.to_json(),
        }


@dataclass(frozen=True, slots=True)
class Provenance:
    """The log indexes of a model's provenance evidence (:meth:`HubService.provenance`):
    its ``model`` entry, and its namespace's ``namespace`` entry (None: unsigned model)."""

    model: int
    namespace: int | None


def namespace_taken(namespace: str, owner: str, publisher: str) -> VerificationError:
    """The 403 refusal of a name in a namespace that another publisher key owns."""
    return VerificationError(
        f"namespace {namespace!r} is owned by another publisher key",
        check=Check.NAMESPACE,
        namespace=namespace,
        owner=owner,
        publisher=publisher,
    )


def namespace_entry_for(name: str, publisher: VerifyingKey, model: Digest) -> NamespaceEntry:
    """The claim of ``name``'s namespace by ``publisher``; :class:`FormatError` (400) when the
    name's namespace cannot be claimed (empty, surrounding spaces, too long)."""
    return NamespaceEntry(namespace_of(name), publisher.to_pem().decode(), model, utc_now())


def namespace_entry(claim: NamespaceRecord, record: ModelRecord) -> NamespaceEntry:
    """The log entry of a namespace claim made by ``record``'s registration (rebuilt byte for
    byte from the rows: its time is the model's registration time)."""
    return NamespaceEntry(claim.namespace, claim.owner_key, claim.model, record.registered_at)


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


async def spool_upload(request: Request, path: Path, limit: int) -> Digest:
    """Step 1: write the request body to ``path`` as it arrives, at most ``limit`` bytes (413
    beyond); the SHA-256 of the body, computed on the way. Nothing parses it."""
    body = hashlib.sha256()
    total = 0
    pending = bytearray()
    with path.open("xb") as out:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limit:
                raise LimitExceededError("upload is too large", limit=limit)
            body.update(chunk)
            pending += chunk
            if len(pending) >= CHUNK_SIZE:
                await run_in_threadpool(out.write, bytes(pending))
                pending.clear()
        await run_in_threadpool(out.write, bytes(pending))
    return Digest(body.digest())


def extract_upload(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Step 3 (blocking): the spooled archive extracted into ``dest`` under ``limits``."""
    with archive.open("rb") as source:
        extract_tar(source, dest, limits)
