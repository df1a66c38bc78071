"""What :class:`veriml.Client` and :class:`veriml.AsyncClient` share: one implementation of
building each request and of checking each answer (docs/sdk.md); the two subclasses only send.

Answers are verified by default (:func:`veriml.client.verify_inference`, docs/sdk.md "What is
verified, in order"): node keys come from the log, proven against a checkpoint signed by the
pinned log key, never from the coordinator's say-so.
"""

from __future__ import annotations

import base64
import json
import time
from abc import abstractmethod
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from veriml.client._chat import LLMRequest, openai_error
from veriml.client._config import cache_dir, pin_log_key, pin_witnesses, resolve_url
from veriml.client._history import Checkpoints, LogHistory
from veriml.client._publish import Progress, counted, publisher_header, tar_size, tar_stream
from veriml.client._pull import cached_model
from veriml.client._requests import Expected, json_answer, request_headers, stream_digest
from veriml.client._retry import DEFAULT_RETRIES, DEFAULT_RETRY_TIMEOUT, Retries
from veriml.core.digest import Digest
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    FormatError,
    KeyFileError,
    LimitExceededError,
    NodeUnavailableError,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.tensors import DEFAULT_MAX_TENSOR_BYTES, Array, tensor_from_canonical
from veriml.protocol.accounts import LedgerRequest
from veriml.protocol.http_signatures import sign_request
from veriml.tlog.client import LogClient, SignedCheckpoint
from veriml.tlog.cosignature import CosignatureVerifier
from veriml.tlog.note import NoteVerifier
from veriml.verify.answer import InferenceResult, NodeEvidence
from veriml.verify.completion import VerifiedCompletion, verify_completion
from veriml.verify.completion_answer import CompletionEvidence
from veriml.verify.evidence import open_checkpoint_note
from veriml.verify.inference import verify_inference
from veriml.verify.network import DEFAULT_MAX_EPOCH_AGE, NetworkEvidence, Requirements

if TYPE_CHECKING:
    from veriml.verify.tolerance import OutputBounds

__all__ = ["DEFAULT_TIMEOUT", "MAX_LIST_PAGES", "BaseClient", "Listing"]

DEFAULT_TIMEOUT = 60.0
MAX_ANSWER_BYTES = 256 << 20
EPOCH_TTL = 10.0
"""Seconds a client reuses the randomness epoch it learnt (the coordinator accepts the
current epoch and the one before, so this only needs to be well under its beacon interval)."""
MAX_MODEL_BYTES = 8 << 30
PAYMENT_HEADER = "X-Veriml-Payment"
CAPABILITY_HEADER = "X-Veriml-Capability"
_EMPTY_DIGEST = Digest.of(b"")
# The canonical encoding's header is at most a few hundred bytes on top of the tensor's data.
MAX_TENSOR_ANSWER_BYTES = DEFAULT_MAX_TENSOR_BYTES + 4096
LIST_PAGE_SIZE = 1000
"""Items asked for per page of a listing (the coordinator's largest ``limit``)."""
MAX_LIST_PAGES = 10_000
"""Pages a listing follows at the most: a server that pages forever ends in
:class:`LimitExceededError`, not a loop."""


@dataclass(slots=True)
class Listing:
    """One listing (``GET /v1/models``, ``GET /v1/nodes``) followed page by page to its end
    (docs/network.md: ``limit`` and ``offset`` asked, ``next_offset`` answered, null on the
    last page). An answer without ``next_offset`` is the whole listing, as ``/v1/nodes``
    answered before it paged. Sans I/O: the clients send :meth:`params` and :meth:`feed` the
    answers until :attr:`done`."""

    path: str
    member: str
    filters: Mapping[str, str | None] = field(default_factory=dict)
    items: list[dict[str, Any]] = field(default_factory=list)
    offset: int | None = 0
    pages: int = 0

    @property
    def done(self) -> bool:
        return self.offset is None

    def params(self) -> dict[str, Any]:
        """The query of the next page."""
        return {**self.filters, "limit": LIST_PAGE_SIZE, "offset": self.offset}

    def feed(self, body: Any) -> None:
        """Take one page: its items, and where the next one starts (it must move forward)."""
        items = body.get(self.member, body) if isinstance(body, dict) else body
        if not isinstance(items, list):
            raise FormatError(f"the listing has no {self.member} list")
        self.items += [dict(item) for item in items]
        self.pages += 1
        following = body.get("next_offset") if isinstance(body, dict) else None
        if following is None:
            self.offset = None
            return
        if type(following) is not int or self.offset is None or following <= self.offset:
            raise FormatError("a listing's next_offset does not move forward", got=str(following))
        if self.pages >= MAX_LIST_PAGES:
            raise LimitExceededError("the listing does not end", limit=MAX_LIST_PAGES)
        self.offset = following


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
        raise LimitExceededError("the tensor served is too large", limit=MAX_TENSOR_ANSWER_BYTES)


def _tensor(wanted: Digest, data: bytes) -> Array:
    """A tensor fetched by digest: the canonical bytes must hash to the digest asked for."""
    calculated = Digest.of(data)
    if calculated != wanted:
        raise DigestMismatchError(
            "the tensor served does not hash to the digest asked for",
            check=Check.TENSOR,
            expected=wanted,
            calculated=calculated,
        )
    return tensor_from_canonical(data)


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
            check=Check.REQUEST,
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
        raise LimitExceededError("the answer is too large", limit=MAX_ANSWER_BYTES)
    if not isinstance(body, dict):
        raise FormatError("the coordinator's answer is not a JSON object")
    return body


class BaseClient(LogHistory):
    """The state and the request and answer logic of both clients; see :class:`Client` for
    the arguments. A subclass opens its own HTTP client in :meth:`_connect`."""

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
        self._capabilities: dict[str, str] = {}
        self._epoch: tuple[float, int] | None = None
        self.verify = verify
        # Pinned up front: a client that verifies fails at construction, not mid-request.
        # A log key pinned from the local network's file brings that network's witnesses.
        self.log_key: NoteVerifier | None = pin_log_key(log_vkey, home) if verify else None
        self.witnesses, self.quorum = pin_witnesses(log_vkey, tuple(witnesses), quorum, home)
        self._home = home
        self._log: LogClient | None = None
        super().__init__(checkpoints)
        self._connect(timeout, limits or httpx.Limits())

    @abstractmethod
    def _connect(self, timeout: float, limits: httpx.Limits) -> None:
        """Open the HTTP client (with the retry transport, veriml.client._retry)."""
        ...

    def _verifies(self, verify: bool | None) -> bool:
        """Whether an answer is verified: the call's ``verify``, else the client's."""
        return self.verify if verify is None else verify

    def _unreachable(self, exc: httpx.HTTPError) -> NodeUnavailableError:
        return NodeUnavailableError("coordinator unreachable", url=self.url, reason=str(exc))

    @staticmethod
    def _query(params: Mapping[str, Any]) -> dict[str, Any]:
        """A request's query: the parameters given, without the unset (None or empty) ones."""
        return {k: v for k, v in params.items() if v is not None and v != ""}

    @staticmethod
    def _publish_body(folder: Path, progress: Progress | None) -> Iterator[bytes]:
        """The upload of ``folder``: its tar stream, told to ``progress`` as it goes."""
        if progress is None:
            return tar_stream(folder)
        return counted(tar_stream(folder), tar_size(folder), progress)

    def _llm_wire(
        self, request: LLMRequest, stream: bool, epoch: int | None
    ) -> tuple[LLMRequest, bytes, dict[str, str]]:
        """The request as sent (``stream`` and the epoch it names), its bytes and headers."""
        body = dict(request.body) | ({"stream": True} if stream else {})
        wire = replace(request, body=body, epoch=epoch)
        content = wire.content()
        return wire, content, self._llm_headers(wire, content)

    def _model_digest(self, ref: str) -> Digest | None:
        """The digest ``ref`` pins when it is one; a name is bound to the digest that ran by
        the answer's logged provenance (its namespace owner published it), not by asking the
        hub, and a relayed model has none."""
        return _pinned_digest(ref)

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
                    check=Check.NODE_KEY,
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
                check=Check.EPOCH,
            )
        self._epoch = (time.monotonic(), epoch)
        return epoch

    def _forget_epoch(self, response: httpx.Response) -> None:
        """A 409 may be a stale epoch (two rotations since it was learnt): ask again next time."""
        if response.status_code == 409:
            self._epoch = None

    def _answer(
        self, response: httpx.Response, verify: bool | None, expect: Expected | None = None
    ) -> InferenceResult:
        body = json_answer(response, MAX_ANSWER_BYTES, "inference answer")
        result = InferenceResult.from_json(body)
        if not self._verifies(verify):
            return result
        bounds = self.output_bounds(result.model) if result.policy.endswith(",tolerance") else None
        return self._verify_result(result, expect, bounds)

    def output_bounds(self, model: Digest, *, progress: Progress | None = None) -> OutputBounds:
        """The output bounds of ``model`` (blocking), to recompute a tolerance verdict: the
        model is pulled from the hub and verified as a node pulls it (OMS signature and
        digest), cached under the user's cache directory, and its bounds computed here
        (:func:`veriml.verify.tolerance.output_bounds`), never taken from the coordinator.
        ``progress(done, total)`` is told the bytes of a pull as they arrive."""
        found = self._bounds.get(model)
        if found is not None:
            return found
        from veriml.verify.tolerance import output_bounds

        models = cache_dir() / "models"
        package = cached_model(
            self.url, model, models, max_bytes=MAX_MODEL_BYTES, progress=progress
        )
        if package.kind != "onnx":
            raise VerificationError(
                "tolerance mode needs an ONNX model", check=Check.TOLERANCE, model=model
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

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
