"""A C2SP tlog-witness: the server that cosigns checkpoints, and the client a log uses to ask.

The witness keeps, for every log it trusts, the latest checkpoint it cosigned. It cosigns a new
checkpoint only after a consistency proof from that one, and it records the new checkpoint with
a compare-and-swap, so two concurrent requests can never roll its view back
(https://c2sp.org/tlog-witness, "add-checkpoint"). The cosignatures are ``cosignature/v1``
(https://c2sp.org/tlog-cosignature).

Status codes of ``POST /add-checkpoint``, as the spec assigns them::

    400  malformed body, or old size larger than the checkpoint size
    403  no valid signature by a trusted key for the origin (or a bad one by a trusted key)
    404  the origin is not a log this witness knows
    409  old size is not the size the witness last cosigned; body ``<size>\\n``,
         ``Content-Type: text/x.tlog.size``
    422  the consistency proof does not verify (or a non-empty proof from size 0, or an
         empty tree whose root is not the empty root)

Example (a witness for one log, kept in SQLite)::

    app = create_witness_app("witness.db", CosignatureSigner("w.example/w1", key), [log_vkey])
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import time
from collections.abc import Callable, MutableMapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import httpx
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool

from veriml.core.errors import (
    Check,
    Error,
    FormatError,
    LogInconsistencyError,
    NodeUnavailableError,
    SignatureError,
    VerificationError,
)
from veriml.tlog._witness_store import StoredCheckpoint, WitnessStore
from veriml.tlog.checkpoint import Checkpoint, parse_size
from veriml.tlog.cosignature import CosignatureSigner, CosignatureVerifier
from veriml.tlog.merkle import EMPTY_ROOT, HASH_SIZE, MAX_SIZE, verify_consistency
from veriml.tlog.note import Note, NoteSignature, NoteVerifier, open_note

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpointRequest",
    "Witness",
    "WitnessClient",
    "WitnessConflictError",
    "WitnessRejectedError",
    "collect_cosignatures",
    "create_witness_app",
]

MAX_PROOF_LINES = 63
MAX_REQUEST_BYTES = 256 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_MAX_RESPONSE_BYTES = 64 * 1024
_log = logging.getLogger(__name__)


def decode_hash_line(line: str) -> bytes:
    """One base64 SHA-256 hash, strictly encoded (the canonical form only)."""
    try:
        raw = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError("proof line is not base64", line=line[:60]) from exc
    if len(raw) != HASH_SIZE or base64.b64encode(raw).decode() != line:
        raise FormatError("proof line is not a base64 SHA-256 hash", line=line[:60])
    return raw


@dataclass(frozen=True, slots=True)
class AddCheckpointRequest:
    """The body of ``POST <prefix>/add-checkpoint`` (https://c2sp.org/tlog-witness#add-checkpoint).

    ``checkpoint`` is the signed checkpoint note, verbatim.

    >>> req = AddCheckpointRequest(3, (bytes(32),), b"example.com/log\\n4\\n...")
    >>> AddCheckpointRequest.from_bytes(req.to_bytes()) == req
    True
    """

    old_size: int
    proof: tuple[bytes, ...]
    checkpoint: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.old_size < MAX_SIZE:
            raise FormatError("old size out of range", old_size=self.old_size)
        if len(self.proof) > MAX_PROOF_LINES:
            raise FormatError("too many consistency proof lines", lines=len(self.proof))
        if any(len(h) != HASH_SIZE for h in self.proof):
            raise FormatError("consistency proof hashes must be 32 bytes")

    def to_bytes(self) -> bytes:
        lines = [f"old {self.old_size}\n"]
        lines += [base64.b64encode(h).decode() + "\n" for h in self.proof]
        return "".join(lines).encode() + b"\n" + self.checkpoint

    @classmethod
    def from_bytes(cls, data: bytes) -> AddCheckpointRequest:
        if len(data) > MAX_REQUEST_BYTES:
            raise FormatError("request body is too large", size=len(data))
        head, sep, note = data.partition(b"\n\n")
        if not sep:
            raise FormatError("request has no empty line before the checkpoint")
        try:
            lines = head.decode("ascii").split("\n")
        except UnicodeDecodeError as exc:
            raise FormatError("old size and proof lines must be ASCII") from exc
        first = lines[0]
        if not first.startswith("old "):
            raise FormatError("request must start with an 'old <size>' line", line=first[:40])
        old_size = parse_size(first[4:], "old size")
        if len(lines) - 1 > MAX_PROOF_LINES:
            raise FormatError("too many consistency proof lines", lines=len(lines) - 1)
        proof = tuple(decode_hash_line(line) for line in lines[1:])
        return cls(old_size, proof, note)


class WitnessRejectedError(Exception):
    """Why the witness refused a request: an HTTP status and the veriml error behind it."""

    def __init__(self, status: int, error: Error, *, body: str | None = None) -> None:
        super().__init__(error.diagnostics())
        self.status = status
        self.error = error
        self.body = body if body is not None else error.diagnostics() + "\n"


class Witness:
    """The witness logic, free of HTTP: check a request, cosign, record (compare-and-swap).

    ``logs`` are the trusted log keys; a key's name is the log's origin (c2sp.org/tlog-policy).
    """

    def __init__(
        self,
        store: WitnessStore,
        signer: CosignatureSigner,
        logs: Sequence[NoteVerifier],
        *,
        clock: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        self.store = store
        self.signer = signer
        self._clock = clock
        self._logs: dict[str, list[NoteVerifier]] = {}
        for verifier in logs:
            self._logs.setdefault(verifier.name, []).append(verifier)

    @property
    def origins(self) -> list[str]:
        return sorted(self._logs)

    def add_checkpoint(self, body: bytes) -> bytes:
        """Check and cosign; return the cosignature line(s).

        Raises :class:`WitnessRejectedError` (with its HTTP status) for a refused checkpoint.
        """
        # 1. Parse the request and the checkpoint (400 when malformed).
        try:
            request = AddCheckpointRequest.from_bytes(body)
            note = Note.from_bytes(request.checkpoint)
            checkpoint = Checkpoint.from_text(note.text)
        except FormatError as exc:
            raise WitnessRejectedError(400, exc) from exc
        # 2. Only known origins (404), signed by a trusted key for that origin (403).
        verifiers = self._logs.get(checkpoint.origin)
        if verifiers is None:
            raise WitnessRejectedError(
                404, VerificationError("unknown log", origin=checkpoint.origin)
            )
        try:
            open_note(request.checkpoint, verifiers)
        except (SignatureError, FormatError) as exc:
            raise WitnessRejectedError(403, exc) from exc
        # 3. The old size cannot exceed the new size (400); an empty tree has the empty root.
        if request.old_size > checkpoint.size:
            raise WitnessRejectedError(
                400,
                FormatError(
                    "old size is larger than the checkpoint size",
                    old_size=request.old_size,
                    size=checkpoint.size,
                ),
            )
        if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
            raise WitnessRejectedError(
                422,
                LogInconsistencyError(
                    "a checkpoint of size 0 must have the empty root", root=checkpoint.root_hash
                ),
            )
        # 4. The old size must be the latest cosigned size (409), and consistent with it (422).
        latest = self.store.latest(checkpoint.origin)
        self._check_consistency(request, checkpoint, latest)
        # 5. Cosign, then record atomically; a lost race is a 409 with the winner's size.
        signature = self.signer.sign(checkpoint, self._clock())
        line = signature.to_line()
        cosigned = note.add_signatures(signature).to_bytes()
        if not self.store.compare_and_swap(
            checkpoint.origin,
            expected=latest,
            new=StoredCheckpoint(checkpoint.size, checkpoint.root_hash, cosigned),
        ):
            now = self.store.latest(checkpoint.origin)
            raise _conflict(request.old_size, now.size if now else 0)
        return line.encode()

    @staticmethod
    def _check_consistency(
        request: AddCheckpointRequest, checkpoint: Checkpoint, latest: StoredCheckpoint | None
    ) -> None:
        latest_size = latest.size if latest else 0
        if request.old_size != latest_size:
            raise _conflict(request.old_size, latest_size)
        if latest is None or latest.size == 0:
            if request.proof:
                raise WitnessRejectedError(
                    422,
                    LogInconsistencyError(
                        "a proof from size 0 must be empty", lines=len(request.proof)
                    ),
                )
            return
        if latest.size == checkpoint.size:
            if request.proof or latest.root_hash != checkpoint.root_hash:
                raise WitnessRejectedError(
                    422,
                    LogInconsistencyError(
                        "same size as the cosigned checkpoint: the root must match, no proof",
                        size=checkpoint.size,
                        cosigned_root=latest.root_hash,
                        root=checkpoint.root_hash,
                    ),
                )
            return
        try:
            verify_consistency(
                latest.size,
                checkpoint.size,
                list(request.proof),
                latest.root_hash,
                checkpoint.root_hash,
            )
        except VerificationError as exc:
            raise WitnessRejectedError(422, exc) from exc


def _conflict(old_size: int, latest_size: int) -> WitnessRejectedError:
    error = LogInconsistencyError(
        "old size is not the latest cosigned size", old_size=old_size, latest_size=latest_size
    )
    return WitnessRejectedError(409, error, body=f"{latest_size}\n")


async def _read_bounded(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise WitnessRejectedError(
            400, FormatError("request body is too large", size=int(declared))
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise WitnessRejectedError(400, FormatError("request body is too large", limit=limit))
        chunks.append(chunk)
    return b"".join(chunks)


def create_witness_app(
    state: str | Path | WitnessStore,
    signer: CosignatureSigner,
    logs: Sequence[NoteVerifier],
    *,
    clock: Callable[[], int] | None = None,
) -> FastAPI:
    """The witness as an ASGI app: ``POST /add-checkpoint`` and ``GET /<origin hash>/checkpoint``.

    ``state`` is a SQLAlchemy URL, a SQLite file path, or an open :class:`WitnessStore`.
    """
    store = state if isinstance(state, WitnessStore) else WitnessStore.open(state)
    witness = Witness(store, signer, logs, clock=clock) if clock else Witness(store, signer, logs)
    by_hash = {hashlib.sha256(o.encode()).hexdigest(): o for o in witness.origins}
    app = FastAPI(title="veriml witness", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.witness = witness

    @app.post("/add-checkpoint", operation_id="add_checkpoint")
    async def add_checkpoint(request: Request) -> Response:
        try:
            body = await _read_bounded(request, MAX_REQUEST_BYTES)
            lines = await run_in_threadpool(witness.add_checkpoint, body)
        except WitnessRejectedError as rejected:
            if rejected.status == 422:  # possible evidence of log misbehaviour: keep a record
                _log.warning("refused checkpoint: %s", rejected.error.diagnostics())
            media = SIZE_CONTENT_TYPE if rejected.status == 409 else "text/plain; charset=utf-8"
            return Response(rejected.body, status_code=rejected.status, media_type=media)
        return Response(lines, media_type="text/plain; charset=utf-8")

    @app.get("/{origin_hash}/checkpoint", operation_id="latest_checkpoint")
    def latest_checkpoint(
        origin_hash: Annotated[str, PathParam(pattern="^[0-9a-f]{64}$")],
    ) -> Response:
        origin = by_hash.get(origin_hash)
        latest = store.latest(origin) if origin else None
        if latest is None or not latest.note:
            return PlainTextResponse("no checkpoint cosigned for this log\n", status_code=404)
        return Response(
            latest.note,
            media_type="text/plain; charset=utf-8",
            headers={"Cache-Control": "no-cache"},
        )

    return app


class WitnessConflictError(LogInconsistencyError):
    """The witness's latest cosigned size is not the old size we sent (HTTP 409)."""

    def __init__(self, message: str, *, witness: str, old_size: int, latest_size: int) -> None:
        super().__init__(
            message,
            check=Check.WITNESS_SIZE,
            witness=witness,
            old_size=old_size,
            latest_size=latest_size,
        )
        self.latest_size = latest_size


class WitnessClient:
    """Asks one witness to cosign checkpoints (https://c2sp.org/tlog-witness#add-checkpoint).

    ``url`` is the witness's submission prefix. Cosignatures are checked against ``verifier``
    before they are returned.
    """

    def __init__(
        self,
        url: str,
        verifier: CosignatureVerifier,
        *,
        timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/") + "/add-checkpoint"
        self.verifier = verifier
        self._http = httpx.Client(timeout=timeout, transport=transport)

    @property
    def name(self) -> str:
        return self.verifier.name

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> WitnessClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def add_checkpoint(
        self, old_size: int, consistency_proof: Sequence[bytes], signed_checkpoint: bytes
    ) -> NoteSignature:
        """Submit a checkpoint; return the witness's verified cosignature.

        Raises :class:`WitnessConflictError` (409, with the witness's size),
        :class:`LogInconsistencyError` (422: the witness found the proof or roots inconsistent),
        :class:`SignatureError` (403), :class:`VerificationError` (400, 404),
        :class:`NodeUnavailableError` (unreachable or 5xx).
        """
        body = AddCheckpointRequest(old_size, tuple(consistency_proof), signed_checkpoint)
        try:
            response = self._http.post(
                self.url,
                content=body.to_bytes(),
                headers={"Content-Type": "text/plain; charset=utf-8"},
            )
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
                "witness unreachable", witness=self.name, url=self.url
            ) from exc
        text = response.text[:_MAX_RESPONSE_BYTES]
        status = response.status_code
        if status == 200:
            return self._cosignature(signed_checkpoint, response.content)
        if status == 409:
            try:
                latest = parse_size(text.removesuffix("\n"), "witness size")
            except FormatError as exc:
                raise VerificationError(
                    "witness sent a malformed 409 body", witness=self.name, body=text[:80]
                ) from exc
            raise WitnessConflictError(
                "witness has cosigned another size",
                witness=self.name,
                old_size=old_size,
                latest_size=latest,
            )
        detail = text.strip()[:200]
        if status == 422:
            raise LogInconsistencyError(
                "witness found the checkpoint inconsistent",
                check=Check.WITNESS,
                witness=self.name,
                detail=detail,
            )
        if status == 403:
            raise SignatureError(
                "witness does not accept the log's signature", witness=self.name, detail=detail
            )
        if status in (400, 404):
            raise VerificationError(
                "witness rejected the request", witness=self.name, status=status, detail=detail
            )
        raise NodeUnavailableError(
            "witness failed", witness=self.name, status=status, detail=detail
        )

    def _cosignature(self, signed_checkpoint: bytes, lines: bytes) -> NoteSignature:
        if len(lines) > _MAX_RESPONSE_BYTES:
            raise VerificationError("witness response is too large", witness=self.name)
        # The spec's recipe: append the lines to the note and open it with the witness key.
        try:
            note = open_note(signed_checkpoint + lines, [self.verifier])
        except (FormatError, SignatureError) as exc:
            raise SignatureError(
                "witness returned no valid cosignature", witness=self.name, reason=str(exc)
            ) from exc
        return note.verified[0]


def collect_cosignatures(
    witnesses: Sequence[WitnessClient],
    old_sizes: MutableMapping[str, int],
    proof_source: Callable[[int, int], list[bytes]],
    signed_checkpoint: bytes,
    quorum: int,
) -> bytes:
    """Ask every witness to cosign; return the note with all cosignatures obtained.

    ``old_sizes`` maps a witness name to the size we believe it last cosigned (0 if unknown);
    it is updated. On a 409 the request is retried once from the size the witness reports,
    with a proof from ``proof_source(old, new)``. Raises :class:`LogInconsistencyError` if fewer
    than ``quorum`` cosigned and some witness reported an inconsistency, otherwise
    :class:`VerificationError`.
    """
    note = Note.from_bytes(signed_checkpoint)
    size = Checkpoint.from_text(note.text).size

    def ask(client: WitnessClient) -> tuple[NoteSignature, int]:
        old = old_sizes.get(client.name, 0)
        for attempt in range(2):
            proof = proof_source(old, size) if 0 < old < size else []
            try:
                return client.add_checkpoint(old, proof, signed_checkpoint), size
            except WitnessConflictError as conflict:
                if attempt or conflict.latest_size > size:
                    raise
                old = conflict.latest_size
        raise AssertionError("unreachable")  # pragma: no cover

    signatures: list[NoteSignature] = []
    failures: dict[str, Error] = {}
    if witnesses:
        with ThreadPoolExecutor(max_workers=min(8, len(witnesses))) as pool:
            futures = {client.name: pool.submit(ask, client) for client in witnesses}
            for name, future in futures.items():
                try:
                    signature, cosigned_size = future.result()
                except Error as exc:
                    failures[name] = exc
                    continue
                signatures.append(signature)
                old_sizes[name] = cosigned_size
    if len(signatures) < quorum:
        evidence = {
            "quorum": quorum,
            "cosigned": len(signatures),
            "failures": "; ".join(f"{n}: {e.diagnostics()}" for n, e in failures.items()),
        }
        if any(isinstance(e, LogInconsistencyError) for e in failures.values()):
            raise LogInconsistencyError(
                "too few witnesses cosigned", check=Check.WITNESS_QUORUM, **evidence
            )
        raise VerificationError(
            "too few witnesses cosigned", check=Check.WITNESS_QUORUM, **evidence
        )
    return note.add_signatures(*signatures).to_bytes()
