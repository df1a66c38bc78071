"""``veriml.Client`` and ``veriml.AsyncClient``: publish, list, infer, and verify every answer.

Both speak the coordinator API of docs/network.md over httpx. Answers are verified by default
(:func:`veriml.client.verify_inference`, issue 4 §3): node keys come from the log, proven
against a checkpoint signed by the pinned log key, never from the coordinator's say-so.
``verify=False`` skips verification, explicitly.

>>> with Client("http://127.0.0.1:8700", log_vkey=vkey) as client:  # doctest: +SKIP
...     result = client.infer("iris", {"x": x}, policy="quorum:3/2")
...     result.save(Path("answer.json"))
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from veriml.client._chat import (
    ChatResult,
    LLMRequest,
    StreamAssembler,
    canonical_policy,
    openai_error,
)
from veriml.client._checkpoints import CheckpointStore
from veriml.client._config import cache_dir, pin_log_key, pin_witnesses, resolve_url
from veriml.client._publish import ensure_signed, publisher_header, tar_stream
from veriml.client._requests import Expected, raise_for_problem, request_headers, stream_digest
from veriml.client._retry import (
    DEFAULT_RETRIES,
    DEFAULT_RETRY_TIMEOUT,
    STREAM,
    AsyncRetryTransport,
    Retries,
    RetryTransport,
)
from veriml.core.digest import Digest
from veriml.core.errors import DigestMismatchError as DigestMismatch
from veriml.core.errors import Error, FormatError, KeyFileError, VerificationError
from veriml.core.errors import LimitExceededError as LimitExceeded
from veriml.core.errors import LogInconsistencyError as LogInconsistency
from veriml.core.errors import NodeUnavailableError as NodeUnavailable
from veriml.core.errors import NotFoundError as NotFound
from veriml.core.keys import SigningKey
from veriml.core.tensors import DEFAULT_MAX_TENSOR_BYTES, Array, tensor_from_canonical
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.http_signatures import sign_request
from veriml.protocol.sse import SSEReader, parse_sse
from veriml.tlog.checkpoint import Checkpoint
from veriml.tlog.client import LogClient, SignedCheckpoint
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.merkle import verify_consistency
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import InferenceResult, NodeEvidence
from veriml.verify.completion import VerifiedCompletion, verify_completion
from veriml.verify.completion_answer import CompletionEvidence, Kind
from veriml.verify.evidence import open_checkpoint_note
from veriml.verify.inference import verify_inference
from veriml.verify.network import DEFAULT_MAX_EPOCH_AGE, NetworkEvidence, Requirements

if TYPE_CHECKING:
    from veriml.verify.tolerance import OutputBounds

__all__ = [
    "DEFAULT_TIMEOUT",
    "AsyncChatStream",
    "AsyncClient",
    "ChatStream",
    "Client",
    "raise_for_problem",
]

DEFAULT_TIMEOUT = 60.0
MAX_ANSWER_BYTES = 256 << 20
EPOCH_TTL = 10.0
"""Seconds a client reuses the randomness epoch it learnt (the coordinator accepts the
current epoch and the one before, so this only needs to be well under its beacon interval)."""
MAX_MODEL_BYTES = 8 << 30
LOG_SIZE_HEADER = "X-Veriml-Log-Size"
PAYMENT_HEADER = "X-Veriml-Payment"
CAPABILITY_HEADER = "X-Veriml-Capability"
_EMPTY_DIGEST = Digest.of(b"")
# The canonical encoding's header is at most a few hundred bytes on top of the tensor's data.
MAX_TENSOR_ANSWER_BYTES = DEFAULT_MAX_TENSOR_BYTES + 4096
CHECKPOINT_WRITE_INTERVAL = 1.0
"""Seconds between two writes of the checkpoint store by one client (it always writes on close)."""

Checkpoints = bool | str | os.PathLike[str]
_log = logging.getLogger(__name__)


def _checkpoint_store(checkpoints: Checkpoints) -> CheckpointStore | None:
    """``True``: the user's store (``cache_dir()/checkpoints``); ``False``: none; a path: that
    folder."""
    if checkpoints is True:
        try:
            return CheckpointStore(cache_dir() / "checkpoints")
        except RuntimeError as exc:  # no home directory to find a cache folder in
            _log.warning("no checkpoint store (set VERIML_CACHE_DIR): %s", exc)
            return None
    if checkpoints is False:
        return None
    if isinstance(checkpoints, str | os.PathLike):
        return CheckpointStore(Path(checkpoints))
    raise FormatError("checkpoints is True, False or a folder", got=repr(checkpoints)[:40])


def _amount(amount: int) -> int:
    """Ledger amounts are positive integers (docs/verification.md, "Entries"); checked before
    anything is signed or sent."""
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount < 1 << 53:
        raise FormatError("a ledger amount is a positive integer", got=str(amount)[:40])
    return amount


def _account(account: str) -> str:
    if not isinstance(account, str) or not 0 < len(account) <= 256:
        raise FormatError("a deposit names the account it credits (a key id)")
    return account


def _size_params(size: int | None) -> dict[str, int]:
    if size is None:
        return {}
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise FormatError("a ledger state size is a non-negative integer", got=str(size)[:40])
    return {"size": size}


def _digest(digest: Digest | str) -> Digest:
    return digest if isinstance(digest, Digest) else Digest.from_text(digest)


def _append_bounded(data: bytearray, chunk: bytes) -> None:
    data += chunk
    if len(data) > MAX_TENSOR_ANSWER_BYTES:
        raise LimitExceeded("the tensor served is too large", limit=MAX_TENSOR_ANSWER_BYTES)


def _tensor(wanted: Digest, data: bytes) -> Array:
    """A tensor fetched by digest: the canonical bytes must hash to the digest asked for."""
    calculated = Digest.of(data)
    if calculated != wanted:
        raise DigestMismatch(
            "the tensor served does not hash to the digest asked for",
            check="tensor",
            expected=wanted,
            calculated=calculated,
        )
    return tensor_from_canonical(data)


def _llm_request(
    kind: Kind,
    model: str,
    payload: Mapping[str, Any],
    params: Mapping[str, Any],
    policy: str,
    request_id: str | None,
    public: bool = False,
) -> LLMRequest:
    """The OpenAI request body: the model, the prompt member, then the caller's parameters
    as given (the coordinator validates them; unset ones are left to its defaults), and
    ``veriml.visibility`` when the caller lets anyone read what the request leaves."""
    if not isinstance(model, str) or not model:
        raise FormatError("a model is a hub name, name@version or digest")
    reserved = sorted(set(params) & {"model", "messages", "prompt", "input", "veriml"})
    if reserved:
        raise FormatError("parameters repeat a request member", members=",".join(reserved))
    body = {"model": model, **payload, **{k: v for k, v in params.items() if v is not None}}
    if public:
        body["veriml"] = {"visibility": "public"}
    return LLMRequest(
        kind,
        body,
        canonical_policy(policy),
        request_id or str(uuid.uuid4()),
        own_id=request_id is None,
    )


def _pinned_digest(ref: str) -> Digest | None:
    """The digest a model reference pins: itself when it is one, else None (a name is bound
    by the answer's logged provenance; a relayed model has no digest)."""
    return Digest.from_text(ref) if ref.startswith("sha256:") else None


def _answer_to(request_id: str, result: InferenceResult) -> InferenceResult:
    """``result`` when it answers ``request_id``: a coordinator could return another genuine,
    logged answer for the id asked."""
    if result.id != request_id:
        raise VerificationError(
            "the answer is for another request id",
            check="request",
            asked=request_id[:200],
            answered=result.id[:200],
        )
    return result


def _json_body(response: httpx.Response) -> dict[str, Any]:
    """An OpenAI answer's JSON body, or the veriml error its error object stands for."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        raise openai_error(response.status_code, body, str(response.request.url))
    if len(response.content) > MAX_ANSWER_BYTES:
        raise LimitExceeded("the answer is too large", limit=MAX_ANSWER_BYTES)
    if not isinstance(body, dict):
        raise FormatError("the coordinator's answer is not a JSON object")
    return body


class _Base:
    def __init__(
        self,
        url: str | None,
        *,
        log_vkey: str | NoteVerifier | None,
        witnesses: Sequence[str | CosignatureVerifier],
        quorum: int,
        verify: bool,
        home: Path | None,
        key: SigningKey | None = None,
        min_stake: int = 1,
        trusted_operators: Collection[str] | None = None,
        allow_unsigned: bool = False,
        max_epoch_age: float = DEFAULT_MAX_EPOCH_AGE,
        max_fee: int = 0,
        checkpoints: Checkpoints = True,
        retries: int = DEFAULT_RETRIES,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        self.url = resolve_url(url, home)
        self.key = key
        # Idempotent calls are retried by the transport (veriml.client._retry).
        self.retries = Retries(retries=retries, timeout=retry_timeout)
        if isinstance(max_fee, bool) or not isinstance(max_fee, int) or max_fee < 0:
            raise FormatError("max_fee is a non-negative integer", got=str(max_fee)[:40])
        self.max_fee = max_fee
        # What this client requires of the operators and models behind an answer.
        self.requirements = Requirements(
            min_stake=min_stake,
            trusted_operators=None if trusted_operators is None else frozenset(trusted_operators),
            allow_unsigned=allow_unsigned,
            max_epoch_age=max_epoch_age,
        )
        self._bounds: dict[Digest, OutputBounds] = {}
        self._rules: tuple[float, Mapping[str, Any]] | None = None
        self._capabilities: dict[str, str] = {}
        self._epoch: tuple[float, int] | None = None
        self.verify = verify
        # Pinned up front: a client that verifies fails at construction, not mid-request.
        # A log key pinned from the local network's file brings that network's witnesses.
        self.log_key: NoteVerifier | None = pin_log_key(log_vkey, home) if verify else None
        self.witnesses, self.quorum = pin_witnesses(log_vkey, tuple(witnesses), quorum, home)
        self._home = home
        self._log: LogClient | None = None
        # The largest checkpoint this client has seen: every later one must extend it. It
        # starts from the one any process of this user stored for the log (read once, on first
        # use) and is written back when it grows (at most once a second, and on close).
        self._latest: SignedCheckpoint | None = None
        self._latest_lock = threading.Lock()
        self._store = _checkpoint_store(checkpoints)
        self._store_lock = threading.Lock()
        self._store_read = False
        self._stored: Checkpoint | None = None  # what this client last read or wrote there
        self._stored_at = -float("inf")
        self._forked = False  # a fork was found against the store: leave it as evidence
        # Model references resolved to digests through the hub (None: not a hub model).
        self._models: dict[str, Digest | None] = {}

    def _check_consistent(
        self, signed: SignedCheckpoint, proof: tuple[int, Sequence[bytes]] | None = None
    ) -> None:
        """Online only: the answer's tree and the largest one seen before, by this client or
        (through the checkpoint store) any process of this user, are one history (RFC 9162
        §2.1.4 consistency proof: the one the answer carries from the size this client told
        it, else one computed from tiles), so a coordinator cannot show two forks of its log."""
        self._read_store()
        self._advance(signed, proof)
        self._write_store()

    def _advance(
        self, shown: SignedCheckpoint, proof: tuple[int, Sequence[bytes]] | None = None
    ) -> None:
        """Prove ``shown`` and the largest checkpoint seen so far one history, and keep the
        larger. Another thread may have moved that one meanwhile: then ``shown`` is proven
        against the new one too, so two answers that fork from each other never both pass."""
        while True:
            with self._latest_lock:
                latest = self._latest
            newer = shown
            if latest is not None and latest.checkpoint != shown.checkpoint:
                newer = self._one_history(latest, shown, proof)
            with self._latest_lock:
                if self._latest is not latest:
                    continue
                if latest is None or latest.checkpoint.size < newer.checkpoint.size:
                    self._latest = newer
                return

    def _one_history(
        self,
        seen: SignedCheckpoint,
        shown: SignedCheckpoint,
        proof: tuple[int, Sequence[bytes]] | None = None,
    ) -> SignedCheckpoint:
        """The larger of two checkpoints once the smaller is proven a prefix of it (with
        ``proof``, from the smaller size to ``shown``'s, when it is one), else
        :class:`LogInconsistency` naming both sizes."""
        older, newer = (
            (seen, shown) if seen.checkpoint.size <= shown.checkpoint.size else (shown, seen)
        )
        old, new = older.checkpoint, newer.checkpoint
        try:
            if proof is not None and proof[0] == old.size and newer is shown:
                verify_consistency(old.size, new.size, proof[1], old.root_hash, new.root_hash)
            else:
                self._log_client().verify_consistent(old, newer)
        except (VerificationError, NotFound) as exc:
            # NotFound: the log serves no tiles at a size it signed before (a rollback).
            evidence: dict[str, Any] = {}
            if self._store is not None and self._stored in (old, new) and self.log_key:
                evidence["stored"] = str(self._store.path(self.log_key))
            raise LogInconsistency(
                "the log forked: a checkpoint it showed before and this one are not one history",
                check="consistency",
                old=old.size,
                new=new.size,
                reason=exc.message,
                **evidence,
            ) from exc
        return newer

    def _read_store(self) -> None:
        """Once per client: the checkpoint any process of this user stored for the log
        becomes the one every answer must extend."""
        if self._store is None or self._store_read or self.log_key is None:
            return
        with self._store_lock:
            if self._store_read:
                return
            stored = self._store.load(self.log_key)
            self._store_read = True
            if stored is None:
                return
            self._stored = stored.checkpoint
            with self._latest_lock:
                if self._latest is None:
                    self._latest = stored

    def _write_store(self, *, closing: bool = False) -> None:
        """Store the largest checkpoint this client has seen if it grew (at most once a
        second unless ``closing``). When another process stored another one meanwhile, the two
        must be one history (:class:`LogInconsistency` otherwise); the larger is kept."""
        store, key = self._store, self.log_key
        if store is None or key is None or not self._store_read or self._forked:
            return
        if not closing and time.monotonic() - self._stored_at < CHECKPOINT_WRITE_INTERVAL:
            return  # the common case, decided without waiting for a writing thread
        with self._store_lock:
            for _ in range(8):
                with self._latest_lock:
                    latest = self._latest
                if latest is None or latest.checkpoint == self._stored:
                    return
                if not closing and time.monotonic() - self._stored_at < CHECKPOINT_WRITE_INTERVAL:
                    return
                try:
                    other = store.swap(key, self._stored, latest)
                except Error as exc:  # the check in memory still holds; the next write retries
                    _log.warning("checkpoint not stored: %s", exc.diagnostics())
                    return
                self._stored_at = time.monotonic()
                if other is None:
                    self._stored = latest.checkpoint
                    return
                try:
                    self._advance(other)
                except LogInconsistency:
                    self._forked = True
                    raise
                self._stored = other.checkpoint

    def _close_store(self) -> None:
        """On close: store what this client saw last. A fork found now still raises; a store
        or log that cannot be reached only warns."""
        try:
            self._write_store(closing=True)
        except LogInconsistency:
            raise
        except Error as exc:
            _log.warning("checkpoint not stored on close: %s", exc.diagnostics())

    def _expect(
        self,
        model: str,
        inputs: Mapping[str, Any],
        policy: str,
        request_id: str | None,
        epoch: int | None,
        public: bool = False,
    ) -> tuple[Expected, bytes, dict[str, str]]:
        client = self.key.key_id if self.key is not None else None
        expect = Expected.of(model, inputs, policy, request_id, client, epoch, public)
        content = expect.content()
        extra = self._extra_headers(expect.request_id)
        headers = expect.headers(self.key, self._url("/v1/inferences"), content, extra)
        return expect, content, headers

    def _keep_capability(self, request_id: str, response: httpx.Response) -> None:
        """Remember the capability an answer came with (``X-Veriml-Capability``), so this
        client can read its own request again without a key (the last 1024)."""
        token = response.headers.get(CAPABILITY_HEADER)
        if token and len(token) <= 128:
            self._capabilities[request_id] = token
            while len(self._capabilities) > 1024:
                self._capabilities.pop(next(iter(self._capabilities)))

    def _reader(self, path: str, request_id: str) -> dict[str, str]:
        """What shows the coordinator this client may read ``request_id``'s data: the
        capability it keeps, and a signed ``GET`` when it has a key (docs/privacy.md)."""
        headers = {}
        token = self._capabilities.get(request_id)
        if token is not None:
            headers[CAPABILITY_HEADER] = token
        if self.key is not None:
            headers |= sign_request(self.key, "GET", self._url(path), _EMPTY_DIGEST)
        return headers

    def _url(self, path: str) -> str:
        """The absolute URL of ``path`` on the coordinator (what a request signature covers)."""
        return self.url.rstrip("/") + path

    def _extra_headers(self, request_id: str) -> dict[str, str]:
        """What every request adds: the size of the last checkpoint seen (the answer proves
        consistency from it) and, with a key and ``max_fee``, a signed payment of at most
        ``max_fee`` for this request's fees (docs/ledger.md, "Fees")."""
        headers = self._known_size()
        if self.key is not None and self.max_fee > 0:
            payment = LedgerRequest.signed(self.key, "payment", self.max_fee, request=request_id)
            headers[PAYMENT_HEADER] = base64.b64encode(payment.to_bytes()).decode()
        return headers

    def _publish_headers(self, folder: Path, publisher: SigningKey) -> dict[str, str]:
        """A publication is signed by the publisher key itself, whatever key the client
        signs its other requests with: hubs require it by default (docs/models.md, "Names").
        The archive is hashed once before it is sent: two passes, no buffer."""
        digest = stream_digest(tar_stream(folder))
        headers = {
            "Content-Type": "application/x-tar",
            "X-Veriml-Publisher-Key": publisher_header(publisher),
        }
        return request_headers(publisher, "POST", self._url("/v1/models"), digest, headers)

    def _signed_json(
        self, path: str, body: Mapping[str, Any], key: SigningKey | None, what: str
    ) -> tuple[bytes, dict[str, str]]:
        """The exact body bytes of a signed JSON request and their signature headers."""
        if key is None:
            raise KeyFileError(f"{what} requests are signed: give the client a key (key=...)")
        content = json.dumps(dict(body), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json"}
        return content, request_headers(key, "POST", self._url(path), Digest.of(content), headers)

    def _ledger_request(
        self, op: str, amount: int, key: SigningKey | None, **members: str
    ) -> tuple[bytes, dict[str, str]]:
        """The body of a ledger move: the account's signed ledger request (a DSSE envelope,
        docs/ledger.md "Authority"), which the coordinator logs inside the entry."""
        if key is None:
            raise KeyFileError(f"{op} requests are signed: give the client a key (key=...)")
        envelope = LedgerRequest.signed(key, op, _amount(amount), **members)
        return envelope.to_bytes(), {"Content-Type": "application/json"}

    def _log_client(self) -> LogClient:
        if self._log is None:
            self._log = LogClient(self.url + "/log/", self._pinned())
        return self._log

    def _pinned(self) -> NoteVerifier:
        if self.log_key is None:
            self.log_key = pin_log_key(None, self._home)
        return self.log_key

    def _node_evidence(
        self,
        nodes: Sequence[NodeEvidence],
        network: NetworkEvidence,
        signed: SignedCheckpoint,
    ) -> list[NodeEvidence]:
        """The answering nodes' registrations: from the answer's own ``evidence`` (proven at
        its checkpoint), else fetched from the log's tiles (a coordinator that cites none)."""
        cited = {e.index for e in network.entries}
        out: list[NodeEvidence] = []
        for node in nodes:
            if node.entry is not None or node.log_index in cited:
                out.append(node)
                continue
            if not 0 <= node.log_index < signed.checkpoint.size:
                raise VerificationError(
                    "a node's registration is not in the answer's checkpoint",
                    check="node-key",
                    node=node.id,
                    index=node.log_index,
                )
            entry, proof = self._log_client().entry(node.log_index, signed)
            out.append(NodeEvidence(node.id, node.log_index, entry, tuple(proof)))
        return out

    def _signed(self, note: bytes) -> SignedCheckpoint:
        """The answer's checkpoint under the pinned key and witness quorum."""
        return open_checkpoint_note(
            note, self._pinned(), witnesses=self.witnesses, quorum=self.quorum
        )

    def _verify_result(
        self,
        result: InferenceResult,
        expect: Expected | None = None,
        bounds: OutputBounds | None = None,
    ) -> InferenceResult:
        """Verify an answer with the evidence it carries (node registrations, ledger state,
        provenance and disputes, all proven at its checkpoint) against the pinned key, then
        keep the log consistent with what this client saw before."""
        signed = self._signed(result.log.checkpoint)
        full = result.with_nodes(self._node_evidence(result.nodes, result.network, signed))
        verified = verify_inference(
            full,
            log_key=self._pinned(),
            witnesses=self.witnesses,
            quorum=self.quorum,
            bounds=bounds,
            trust=self.requirements,
            ref=None if expect is None else expect.model,
        )
        if expect is not None:
            expect.check(verified)
        self._check_consistent(signed, result.log.consistency)
        return replace(full, verified=verified.checks, verification=verified.verification)

    def _cached_epoch(self) -> int | None:
        cached = self._epoch
        if cached is not None and time.monotonic() - cached[0] < EPOCH_TTL:
            return cached[1]
        return None

    def _learn_epoch(self, rules: Mapping[str, Any]) -> int:
        """The current epoch from ``GET /v1/ledger/rules``, fetched before the request id is
        sent (so the coordinator cannot choose an epoch for it); none is refused."""
        epoch = rules.get("epoch")
        if type(epoch) is not int or epoch < 0:
            raise VerificationError(
                "the coordinator names no randomness epoch: its draws cannot be pinned",
                check="epoch",
            )
        self._epoch = (time.monotonic(), epoch)
        return epoch

    def _forget_epoch(self, response: httpx.Response) -> None:
        """A 409 may be a stale epoch (two rotations since it was learnt): ask again next time."""
        if response.status_code == 409:
            self._epoch = None

    def _known_size(self) -> dict[str, str]:
        """``X-Veriml-Log-Size``: the size of the largest checkpoint this client verified (or
        found in the checkpoint store), so the answer proves its own checkpoint consistent
        with it."""
        self._read_store()
        with self._latest_lock:
            latest = self._latest
        return {} if latest is None else {LOG_SIZE_HEADER: str(latest.checkpoint.size)}

    def _answer(
        self, response: httpx.Response, verify: bool | None, expect: Expected | None = None
    ) -> InferenceResult:
        raise_for_problem(response)
        if len(response.content) > MAX_ANSWER_BYTES:
            raise LimitExceeded("inference answer is too large", limit=MAX_ANSWER_BYTES)
        try:
            body = response.json()
        except ValueError as exc:
            raise FormatError("the coordinator's answer is not JSON") from exc
        result = InferenceResult.from_json(body)
        if not (self.verify if verify is None else verify):
            return result
        bounds = self.output_bounds(result.model) if result.policy.endswith(",tolerance") else None
        return self._verify_result(result, expect, bounds)

    def output_bounds(self, model: Digest) -> OutputBounds:
        """The output bounds of ``model`` (blocking), to recompute a tolerance verdict: the
        model is pulled from the hub and verified as a node pulls it (OMS signature and
        digest), cached under the user's cache directory, and its bounds computed here
        (:func:`veriml.verify.tolerance.output_bounds`), never taken from the coordinator."""
        found = self._bounds.get(model)
        if found is not None:
            return found
        from veriml.models.pull import load_cached, pull_model
        from veriml.verify.tolerance import output_bounds

        models = cache_dir() / "models"
        folder = models / model.hex
        package = None
        if folder.is_dir():
            try:
                package = load_cached(folder, model)
            except Error:  # changed on disk or half-written: pull it again
                shutil.rmtree(folder, ignore_errors=True)
        if package is None:
            with httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0)) as http:
                try:
                    package = pull_model(http, self.url, model, models, max_bytes=MAX_MODEL_BYTES)
                except httpx.HTTPError as exc:
                    raise NodeUnavailable(
                        "cannot pull the model from the hub", model=model, reason=repr(exc)[:200]
                    ) from exc
        if package.kind != "onnx":
            raise VerificationError(
                "tolerance mode needs an ONNX model", check="tolerance", model=model
            )
        bounds = output_bounds(package.load_proto())
        self._bounds[model] = bounds
        return bounds

    def _llm_headers(self, request: LLMRequest, content: bytes) -> dict[str, str]:
        headers = request.headers() | self._extra_headers(request.request_id)
        if self.key is not None:
            digest = Digest.of(content)
            return request_headers(self.key, "POST", self._url(request.path), digest, headers)
        return headers

    def _verify_llm(
        self,
        request: LLMRequest,
        body: Mapping[str, Any],
        model: Digest | None,
        *,
        check_policy: bool = True,
    ) -> VerifiedCompletion:
        """Like :meth:`_verify_result` for an OpenAI-style answer: the evidence it carries,
        then :func:`verify_completion` against the request this client sent (a model asked for
        by name is bound to the digest that ran by its logged provenance), and the checkpoint
        kept consistent with earlier ones."""
        evidence = CompletionEvidence.from_json(body.get("veriml"))
        signed = self._signed(evidence.log.checkpoint)
        verified = verify_completion(
            body,
            log_vkey=self._pinned(),
            kind=request.kind,
            request=request.body,
            model=model,
            witnesses=self.witnesses,
            quorum=self.quorum,
            nodes=self._node_evidence(evidence.nodes, evidence.network, signed),
            trust=self.requirements,
        )
        if check_policy:
            request.check(verified)
        self._check_consistent(signed, evidence.log.consistency)
        return verified

    def _remember_model(self, ref: str, model: Mapping[str, Any] | None) -> Digest | None:
        digest = None if model is None else model.get("digest")
        value = None if digest is None else Digest.from_text(str(digest))
        self._models[ref] = value
        return value

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class Client(_Base):
    """A synchronous client of a veriml coordinator. Answers are verified unless
    ``verify=False``; the log key is pinned from ``log_vkey``, ``$VERIML_LOG_VKEY`` or the
    local network's ``network.json`` (see :mod:`veriml.client`), which also names the witnesses
    whose cosignatures are then required (else ``witnesses`` and ``quorum``). With ``key``
    (Ed25519 or EC) every publish and inference request is signed, and the logged inference
    names its key id (``request.client``), which the SDK checks.

    ``checkpoints`` keeps the largest checkpoint of the log verified by any process of this
    user (``True``: in ``cache_dir()/checkpoints``; a path: in that folder; ``False``: in
    memory only), so a log that forks is caught on the next call, not only within this
    object.

    A call that repeating cannot do twice (a ``GET``; ``infer``, ``chat``, ``complete`` and
    ``embed``, whose request id travels as ``Idempotency-Key``) is retried after a connection
    failure or a 503, waiting as the server's ``Retry-After`` asks or with jittered
    exponential backoff: at most ``retries`` times, none decided on once ``retry_timeout``
    seconds have passed (``retries=0``: never). A stream is retried only before its first
    byte; a 4xx, or an answer that fails verification, never."""

    def __init__(
        self,
        url: str | None = None,
        *,
        log_vkey: str | NoteVerifier | None = None,
        witnesses: Sequence[str | CosignatureVerifier] = (),
        quorum: int = 0,
        verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        home: Path | None = None,
        key: SigningKey | None = None,
        min_stake: int = 1,
        trusted_operators: Collection[str] | None = None,
        allow_unsigned: bool = False,
        max_epoch_age: float = DEFAULT_MAX_EPOCH_AGE,
        max_fee: int = 0,
        checkpoints: Checkpoints = True,
        retries: int = DEFAULT_RETRIES,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        super().__init__(
            url,
            log_vkey=log_vkey,
            witnesses=witnesses,
            quorum=quorum,
            verify=verify,
            home=home,
            key=key,
            min_stake=min_stake,
            trusted_operators=trusted_operators,
            allow_unsigned=allow_unsigned,
            max_epoch_age=max_epoch_age,
            max_fee=max_fee,
            checkpoints=checkpoints,
            retries=retries,
            retry_timeout=retry_timeout,
        )
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=RetryTransport(httpx.HTTPTransport(), self.retries),
        )

    def close(self) -> None:
        """Store the largest checkpoint seen (a fork found now raises
        :class:`LogInconsistency`), then close the connections."""
        try:
            self._close_store()
        finally:
            self._http.close()
            self._close_log()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _get(self, path: str, **params: Any) -> Any:
        try:
            response = self._http.get(path, params={k: v for k, v in params.items() if v})
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        raise_for_problem(response)
        return response.json()

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: version, coordinator key and the log's origin and key (as the
        coordinator claims them: pin the log key from elsewhere)."""
        return dict(self._get("/v1/info"))

    def publish(
        self, folder: Path, key: Path, *, passphrase: bytes | None = None
    ) -> dict[str, Any]:
        """Sign ``folder`` with the EC key file ``key`` if ``model.sig`` is absent or stale,
        then upload it as a streamed tar, the request signed by that key; returns the
        registered model. Its name's namespace (``acme`` of ``acme/iris``) must be unclaimed
        or claimed by this key (403 ``namespace`` otherwise)."""
        folder = Path(folder)
        signing = ensure_signed(folder, Path(key), passphrase=passphrase)
        headers = self._publish_headers(folder, signing)
        try:
            response = self._http.post("/v1/models", content=tar_stream(folder), headers=headers)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        raise_for_problem(response)
        return dict(response.json())

    def models(self, **filters: str | None) -> list[dict[str, Any]]:
        """``GET /v1/models`` filtered by ``name``, ``task`` or ``publisher``."""
        body = self._get("/v1/models", **filters)
        items = body.get("models", body) if isinstance(body, dict) else body
        return [dict(m) for m in items]

    def model(self, ref: str) -> dict[str, Any]:
        """One model by digest, ``name`` or ``name@version``."""
        return dict(self._get(f"/v1/models/{ref}"))

    def nodes(self) -> list[dict[str, Any]]:
        """``GET /v1/nodes``: registered nodes with liveness."""
        body = self._get("/v1/nodes")
        items = body.get("nodes", body) if isinstance(body, dict) else body
        return [dict(n) for n in items]

    def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        policy: str = "none",
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
    ) -> InferenceResult:
        """Run ``model`` (digest, name or name@version) on ``inputs`` under ``policy``;
        the answer is verified unless ``verify=False`` (here or on the client).

        ``request_id`` (default: a new UUID) is sent as ``Idempotency-Key``: retrying with the
        same id after a lost answer returns the one logged answer, never a second entry.
        ``public=True`` lets anyone (watchers above all) read the request's inputs and answer;
        by default only this client can (its key, or the capability the answer came with:
        docs/privacy.md)."""
        epoch = self._named_epoch(verify)
        expect, content, headers = self._expect(model, inputs, policy, request_id, epoch, public)
        try:
            response = self._http.post("/v1/inferences", content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        self._forget_epoch(response)
        self._keep_capability(expect.request_id, response)
        return self._answer(response, verify, expect)

    def _named_epoch(self, verify: bool | None) -> int | None:
        """The epoch a verified request names (``X-Veriml-Epoch``), cached for ``EPOCH_TTL``
        seconds; None when the answer will not be verified."""
        if not (self.verify if verify is None else verify):
            return None
        cached = self._cached_epoch()
        return cached if cached is not None else self._learn_epoch(self._get("/v1/ledger/rules"))

    def inference(self, id: str, *, verify: bool | None = None) -> InferenceResult:
        """``GET /v1/inferences/{id}``, verified like :meth:`infer`, and it must be the answer
        to ``id`` (``check="request"``)."""
        try:
            path = f"/v1/inferences/{id}"
            response = self._http.get(path, headers=self._known_size() | self._reader(path, id))
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        return _answer_to(id, self._answer(response, verify))

    def _post(self, path: str, content: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        try:
            response = self._http.post(path, content=content, headers=dict(headers))
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        raise_for_problem(response)
        return dict(response.json())

    def ledger_state(self, size: int | None = None) -> dict[str, Any]:
        """``GET /v1/ledger/state``: the coordinator's ledger fold (docs/verification.md,
        "State"), over the first ``size`` log entries when given. As the coordinator claims
        it: ``veriml log audit --coordinator`` folds the log itself and compares."""
        try:
            response = self._http.get("/v1/ledger/state", params=_size_params(size))
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        raise_for_problem(response)
        return dict(response.json())

    def stake(self, amount: int) -> dict[str, Any]:
        """Move ``amount`` of this client's balance to its stake; the request is signed with
        the client's key, whose key id is the account. Returns ``{"log_index", "state"}``."""
        return self._post("/v1/ledger/stake", *self._ledger_request("stake", amount, self.key))

    def unstake(self, amount: int) -> dict[str, Any]:
        """Start unbonding ``amount`` of this client's stake (released after the coordinator's
        unstake delay, slashable until then). Signed like :meth:`stake`."""
        return self._post("/v1/ledger/unstake", *self._ledger_request("unstake", amount, self.key))

    def deposit(
        self, account: str, amount: int, key: SigningKey, *, memo: str = ""
    ) -> dict[str, Any]:
        """Mint ``amount`` to ``account``: an administrative request, signed with ``key`` (the
        coordinator's admin key), not with the client's own key."""
        return self._post(
            "/v1/ledger/deposit",
            *self._ledger_request("deposit", amount, key, to=_account(account), memo=memo),
        )

    def tensor(self, digest: Digest | str, *, inference: str) -> Array:
        """``GET /v1/inferences/{inference}/tensors/{digest}``: an input of a request, decoded
        from its canonical bytes after checking that they hash to ``digest``; readable when the
        request is public or this client's own (docs/privacy.md)."""
        wanted = _digest(digest)
        path = f"/v1/inferences/{inference}/tensors/{wanted.to_text()}"
        data = bytearray()
        try:
            with self._http.stream(
                "GET", path, headers=self._reader(path, inference), extensions={STREAM: True}
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    raise_for_problem(response)
                for chunk in response.iter_bytes():
                    _append_bounded(data, chunk)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        return _tensor(wanted, bytes(data))

    # -- LLM inference: the OpenAI-compatible API (docs/llm.md) -------------------------------

    def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        policy: str = "none",
        stream: bool = False,
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult | ChatStream:
        """``POST /v1/chat/completions``: ``messages`` answered by ``model`` (hub name,
        name@version or digest) under ``policy``, verified unless ``verify=False``.

        ``public=True`` lets anyone (watchers above all) read the request and its answer, as
        for :meth:`infer`. ``params`` are the OpenAI client's: ``temperature``, ``top_p``,
        ``max_tokens``,
        ``seed``, ``stop``, ``tools``, ``tool_choice``, ``response_format``, ... They are sent
        as given, and the receipt must sign the canonical request they make (docs/llm.md).
        With ``stream=True`` the answer is a :class:`ChatStream`: iterate it for text deltas;
        its ``result`` is verified once the stream ends, and a stream whose final ``veriml``
        event is missing or wrong raises instead of ending quietly.

        >>> reply = client.chat("smollm2", [{"role": "user", "content": "Hi"}],
        ...                     max_tokens=16)  # doctest: +SKIP
        >>> reply.content, reply.trust, reply.verified  # doctest: +SKIP
        """
        payload = {"messages": [dict(m) for m in messages]}
        request = _llm_request(
            "chat.completion", model, payload, params, policy, request_id, public
        )
        return self._llm(request, stream, verify)

    def complete(
        self,
        model: str,
        prompt: str,
        *,
        policy: str = "none",
        stream: bool = False,
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult | ChatStream:
        """``POST /v1/completions``: raw-text completion of ``prompt``; as :meth:`chat`."""
        request = _llm_request(
            "text_completion", model, {"prompt": prompt}, params, policy, request_id, public
        )
        return self._llm(request, stream, verify)

    def embed(
        self,
        model: str,
        input: str | Sequence[str],
        *,
        policy: str = "none",
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult:
        """``POST /v1/embeddings``: one vector per input text (``result.embeddings``),
        verified against the receipts' output digests."""
        value = input if isinstance(input, str) else list(input)
        request = _llm_request(
            "embedding", model, {"input": value}, params, policy, request_id, public
        )
        result = self._llm(request, False, verify)
        assert isinstance(result, ChatResult)
        return result

    def verify_completion(
        self,
        body: Mapping[str, Any],
        *,
        request: Mapping[str, Any],
        kind: Kind = "chat.completion",
    ) -> VerifiedCompletion:
        """Verify an answer obtained another way (the official ``openai`` client's raw body,
        a saved response) as :meth:`chat` verifies its own: node registrations fetched from
        the log, then :func:`veriml.client.verify_completion` against ``request``, the
        OpenAI body that was sent (its ``model`` resolved through the hub)."""
        model = str(request.get("model", ""))
        sent = LLMRequest(kind, dict(request), "none", "")
        return self._verify_llm(sent, body, self._model_digest(model), check_policy=False)

    def _llm(
        self, request: LLMRequest, stream: bool, verify: bool | None
    ) -> ChatResult | ChatStream:
        body = dict(request.body) | ({"stream": True} if stream else {})
        wire = replace(request, body=body, epoch=self._named_epoch(verify))
        content = wire.content()
        headers = self._llm_headers(wire, content)
        try:
            if stream:
                sent = self._http.build_request(
                    "POST", wire.path, content=content, headers=headers, extensions={STREAM: True}
                )
                response = self._http.send(sent, stream=True)
            else:
                response = self._http.post(wire.path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        self._forget_epoch(response)
        if stream:
            if response.status_code >= 400:
                try:
                    response.read()
                finally:
                    response.close()
                _json_body(response)
            return ChatStream(self, wire, response, verify)
        return self._llm_result(wire, _json_body(response), verify)

    def _llm_result(
        self, request: LLMRequest, body: Mapping[str, Any], verify: bool | None
    ) -> ChatResult:
        if not (self.verify if verify is None else verify):
            return ChatResult.of(request.kind, body)
        verified = self._verify_llm(request, body, self._model_digest(request.model))
        return ChatResult.of(request.kind, body, verified)

    def _model_digest(self, ref: str) -> Digest | None:
        """The digest ``ref`` pins when it is one; a name is bound to the digest that ran by
        the answer's logged provenance (its namespace owner published it), not by asking the
        hub, and a relayed model has none."""
        return _pinned_digest(ref)


class AsyncClient(_Base):
    """The asyncio twin of :class:`Client` (same arguments and methods, awaited)."""

    def __init__(
        self,
        url: str | None = None,
        *,
        log_vkey: str | NoteVerifier | None = None,
        witnesses: Sequence[str | CosignatureVerifier] = (),
        quorum: int = 0,
        verify: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
        home: Path | None = None,
        limits: httpx.Limits | None = None,
        key: SigningKey | None = None,
        min_stake: int = 1,
        trusted_operators: Collection[str] | None = None,
        allow_unsigned: bool = False,
        max_epoch_age: float = DEFAULT_MAX_EPOCH_AGE,
        max_fee: int = 0,
        checkpoints: Checkpoints = True,
        retries: int = DEFAULT_RETRIES,
        retry_timeout: float = DEFAULT_RETRY_TIMEOUT,
    ) -> None:
        super().__init__(
            url,
            log_vkey=log_vkey,
            witnesses=witnesses,
            quorum=quorum,
            verify=verify,
            home=home,
            key=key,
            min_stake=min_stake,
            trusted_operators=trusted_operators,
            allow_unsigned=allow_unsigned,
            max_epoch_age=max_epoch_age,
            max_fee=max_fee,
            checkpoints=checkpoints,
            retries=retries,
            retry_timeout=retry_timeout,
        )
        transport = httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=AsyncRetryTransport(transport, self.retries),
        )

    async def aclose(self) -> None:
        try:
            await asyncio.to_thread(self._close_store)
        finally:
            await self._http.aclose()
            self._close_log()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._request("GET", path, params={k: v for k, v in params.items() if v})
        raise_for_problem(response)
        return response.json()

    async def info(self) -> dict[str, Any]:
        return dict(await self._get("/v1/info"))

    async def publish(
        self, folder: Path, key: Path, *, passphrase: bytes | None = None
    ) -> dict[str, Any]:
        folder = Path(folder)
        signing = await asyncio.to_thread(ensure_signed, folder, Path(key), passphrase=passphrase)
        headers = await asyncio.to_thread(self._publish_headers, folder, signing)

        async def body() -> Any:
            for chunk in tar_stream(folder):
                yield chunk

        response = await self._request(
            "POST",
            "/v1/models",
            content=body(),
            headers=headers,
        )
        raise_for_problem(response)
        return dict(response.json())

    async def models(self, **filters: str | None) -> list[dict[str, Any]]:
        body = await self._get("/v1/models", **filters)
        items = body.get("models", body) if isinstance(body, dict) else body
        return [dict(m) for m in items]

    async def model(self, ref: str) -> dict[str, Any]:
        return dict(await self._get(f"/v1/models/{ref}"))

    async def nodes(self) -> list[dict[str, Any]]:
        body = await self._get("/v1/nodes")
        items = body.get("nodes", body) if isinstance(body, dict) else body
        return [dict(n) for n in items]

    async def infer(
        self,
        model: str,
        inputs: Mapping[str, Any],
        *,
        policy: str = "none",
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
    ) -> InferenceResult:
        epoch = await self._named_epoch(verify)
        expect, content, headers = self._expect(model, inputs, policy, request_id, epoch, public)
        response = await self._request("POST", "/v1/inferences", content=content, headers=headers)
        self._forget_epoch(response)
        self._keep_capability(expect.request_id, response)
        return await self._answer_async(response, verify, expect)

    async def _named_epoch(self, verify: bool | None) -> int | None:
        if not (self.verify if verify is None else verify):
            return None
        cached = self._cached_epoch()
        if cached is not None:
            return cached
        return self._learn_epoch(await self._get("/v1/ledger/rules"))

    async def inference(self, id: str, *, verify: bool | None = None) -> InferenceResult:
        path = f"/v1/inferences/{id}"
        headers = self._known_size() | self._reader(path, id)
        response = await self._request("GET", path, headers=headers)
        return _answer_to(id, await self._answer_async(response, verify))

    async def _post(self, path: str, content: bytes, headers: Mapping[str, str]) -> dict[str, Any]:
        response = await self._request("POST", path, content=content, headers=dict(headers))
        raise_for_problem(response)
        return dict(response.json())

    async def ledger_state(self, size: int | None = None) -> dict[str, Any]:
        response = await self._request("GET", "/v1/ledger/state", params=_size_params(size))
        raise_for_problem(response)
        return dict(response.json())

    async def stake(self, amount: int) -> dict[str, Any]:
        return await self._post(
            "/v1/ledger/stake", *self._ledger_request("stake", amount, self.key)
        )

    async def unstake(self, amount: int) -> dict[str, Any]:
        return await self._post(
            "/v1/ledger/unstake", *self._ledger_request("unstake", amount, self.key)
        )

    async def deposit(
        self, account: str, amount: int, key: SigningKey, *, memo: str = ""
    ) -> dict[str, Any]:
        return await self._post(
            "/v1/ledger/deposit",
            *self._ledger_request("deposit", amount, key, to=_account(account), memo=memo),
        )

    async def tensor(self, digest: Digest | str, *, inference: str) -> Array:
        wanted = _digest(digest)
        path = f"/v1/inferences/{inference}/tensors/{wanted.to_text()}"
        data = bytearray()
        try:
            async with self._http.stream(
                "GET", path, headers=self._reader(path, inference), extensions={STREAM: True}
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise_for_problem(response)
                async for chunk in response.aiter_bytes():
                    _append_bounded(data, chunk)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        return _tensor(wanted, bytes(data))

    async def chat(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        policy: str = "none",
        stream: bool = False,
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult | AsyncChatStream:
        """As :meth:`Client.chat`; a stream is an :class:`AsyncChatStream` (``async for``)."""
        payload = {"messages": [dict(m) for m in messages]}
        request = _llm_request(
            "chat.completion", model, payload, params, policy, request_id, public
        )
        return await self._llm(request, stream, verify)

    async def complete(
        self,
        model: str,
        prompt: str,
        *,
        policy: str = "none",
        stream: bool = False,
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult | AsyncChatStream:
        request = _llm_request(
            "text_completion", model, {"prompt": prompt}, params, policy, request_id, public
        )
        return await self._llm(request, stream, verify)

    async def embed(
        self,
        model: str,
        input: str | Sequence[str],
        *,
        policy: str = "none",
        verify: bool | None = None,
        request_id: str | None = None,
        public: bool = False,
        **params: Any,
    ) -> ChatResult:
        value = input if isinstance(input, str) else list(input)
        request = _llm_request(
            "embedding", model, {"input": value}, params, policy, request_id, public
        )
        result = await self._llm(request, False, verify)
        assert isinstance(result, ChatResult)
        return result

    async def _llm(
        self, request: LLMRequest, stream: bool, verify: bool | None
    ) -> ChatResult | AsyncChatStream:
        body = dict(request.body) | ({"stream": True} if stream else {})
        wire = replace(request, body=body, epoch=await self._named_epoch(verify))
        content = wire.content()
        headers = self._llm_headers(wire, content)
        if not stream:
            response = await self._request("POST", wire.path, content=content, headers=headers)
            self._forget_epoch(response)
            return await self._llm_result(wire, _json_body(response), verify)
        try:
            sent = self._http.build_request(
                "POST", wire.path, content=content, headers=headers, extensions={STREAM: True}
            )
            response = await self._http.send(sent, stream=True)
        except httpx.HTTPError as exc:
            raise NodeUnavailable("coordinator unreachable", url=self.url, reason=str(exc)) from exc
        self._forget_epoch(response)
        if response.status_code >= 400:
            try:
                await response.aread()
            finally:
                await response.aclose()
            _json_body(response)
        return AsyncChatStream(self, wire, response, verify)

    async def _llm_result(
        self, request: LLMRequest, body: Mapping[str, Any], verify: bool | None
    ) -> ChatResult:
        if not (self.verify if verify is None else verify):
            return ChatResult.of(request.kind, body)
        model = await self._model_digest(request.model)
        # Verification reads log tiles and checks signatures: off the event loop.
        verified = await asyncio.to_thread(self._verify_llm, request, body, model)
        return ChatResult.of(request.kind, body, verified)

    async def _model_digest(self, ref: str) -> Digest | None:
        return _pinned_digest(ref)

    async def _answer_async(
        self, response: httpx.Response, verify: bool | None, expect: Expected | None = None
    ) -> InferenceResult:
        if not (self.verify if verify is None else verify):
            return self._answer(response, False)
        # Verification reads log tiles and checks signatures: off the event loop.
        return await asyncio.to_thread(self._answer, response, True, expect)


class ChatStream:
    """A streamed completion: iterate it for the text deltas as they arrive; once the stream
    ends, ``result`` is the verified :class:`ChatResult` (as a non-streaming call returns).

    Verification happens at the end, on everything that was shown: content, tool calls and
    finish reason rebuilt from the chunks must hash to what the receipts sign. It fails
    closed: no final ``veriml`` event, a chunk after it, or an answer that does not verify
    raises from the iteration, so a caller who reads to the end never sees an unverified
    stream pass as verified. Close it (or use ``with``) to abandon it early.
    """

    def __init__(
        self, client: Client, request: LLMRequest, response: httpx.Response, verify: bool | None
    ) -> None:
        self._client = client
        self._request = request
        self._response = response
        self._verify = verify
        self._assembler = StreamAssembler(request.kind)
        self._result: ChatResult | None = None

    @property
    def result(self) -> ChatResult:
        """The verified answer; only once the stream has been read to its end."""
        if self._result is None:
            raise VerificationError("the stream has not been read to its end", check="stream")
        return self._result

    @property
    def text(self) -> str:
        """The text received so far."""
        return self._assembler.text

    def __iter__(self) -> Iterator[str]:
        try:
            for event, data in parse_sse(self._response.iter_lines()):
                piece = self._assembler.feed(event, data)
                if piece:
                    yield piece
        except httpx.HTTPError as exc:
            raise NodeUnavailable(
                "the stream broke off", url=self._client.url, reason=str(exc)
            ) from exc
        finally:
            self._response.close()
        self._result = self._client._llm_result(self._request, self._assembler.body(), self._verify)

    def close(self) -> None:
        self._response.close()

    def __enter__(self) -> ChatStream:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class AsyncChatStream:
    """The asyncio twin of :class:`ChatStream`: ``async for text in stream``, then
    ``stream.result``, verified once the stream has ended (failing closed the same way)."""

    def __init__(
        self,
        client: AsyncClient,
        request: LLMRequest,
        response: httpx.Response,
        verify: bool | None,
    ) -> None:
        self._client = client
        self._request = request
        self._response = response
        self._verify = verify
        self._assembler = StreamAssembler(request.kind)
        self._result: ChatResult | None = None

    @property
    def result(self) -> ChatResult:
        """The verified answer; only once the stream has been read to its end."""
        if self._result is None:
            raise VerificationError("the stream has not been read to its end", check="stream")
        return self._result

    @property
    def text(self) -> str:
        return self._assembler.text

    async def __aiter__(self) -> AsyncIterator[str]:
        reader = SSEReader()
        try:
            async for line in self._response.aiter_lines():
                event = reader.feed(line)
                if event is not None and (piece := self._assembler.feed(*event)):
                    yield piece
            if (event := reader.end()) is not None and (piece := self._assembler.feed(*event)):
                yield piece
        except httpx.HTTPError as exc:
            raise NodeUnavailable(
                "the stream broke off", url=self._client.url, reason=str(exc)
            ) from exc
        finally:
            await self._response.aclose()
        body = self._assembler.body()
        self._result = await self._client._llm_result(self._request, body, self._verify)

    async def aclose(self) -> None:
        await self._response.aclose()

    async def __aenter__(self) -> AsyncChatStream:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()
