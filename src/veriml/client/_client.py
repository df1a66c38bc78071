"""``veriml.Client``: publish, list, infer, and verify every answer (docs/sdk.md).

It speaks the coordinator API of docs/network.md over httpx; what it shares with
:class:`veriml.AsyncClient` (building requests, checking answers) lives in
:mod:`veriml.client._base`. Answers are verified by default; ``verify=False`` skips
verification, explicitly.

>>> with Client("http://127.0.0.1:8700", log_vkey=vkey) as client:  # doctest: +SKIP
...     result = client.infer("iris", {"x": x}, policy="quorum:3/2")
...     result.save(Path("answer.json"))
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

from veriml.client._base import (
    BaseClient,
    Listing,
    _account,
    _answer_to,
    _append_bounded,
    _digest,
    _json_body,
    _size_params,
    _tensor,
)
from veriml.client._chat import ChatResult, LLMRequest, StreamedAnswer, llm_request
from veriml.client._publish import Progress, ensure_signed
from veriml.client._requests import raise_for_problem
from veriml.client._retry import STREAM, RetryTransport
from veriml.core.digest import Digest
from veriml.core.errors import NodeUnavailableError
from veriml.core.keys import SigningKey
from veriml.core.tensors import Array
from veriml.protocol.sse import parse_sse
from veriml.verify.answer import InferenceResult
from veriml.verify.completion import VerifiedCompletion
from veriml.verify.completion_answer import Kind

__all__ = ["ChatStream", "Client"]


class Client(BaseClient):
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
    byte; a 4xx, or an answer that fails verification, never.

    ``limits`` bounds the connection pool (``httpx.Limits``)."""

    def _connect(self, timeout: float, limits: httpx.Limits) -> None:
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=RetryTransport(httpx.HTTPTransport(limits=limits), self.retries),
        )

    def close(self) -> None:
        """Store the largest checkpoint seen (a fork found now raises
        :class:`LogInconsistencyError`), then close the connections."""
        try:
            self._close_store()
        finally:
            self._http.close()
            self._close_log()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc

    def _get(self, path: str, **params: Any) -> Any:
        response = self._request("GET", path, params=self._query(params))
        raise_for_problem(response)
        return response.json()

    def _post(self, path: str, content: Any, headers: Mapping[str, str]) -> dict[str, Any]:
        response = self._request("POST", path, content=content, headers=dict(headers))
        raise_for_problem(response)
        return dict(response.json())

    def _list(self, listing: Listing) -> list[dict[str, Any]]:
        while not listing.done:
            listing.feed(self._get(listing.path, **listing.params()))
        return listing.items

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: version, coordinator key and the log's origin and key (as the
        coordinator claims them: pin the log key from elsewhere)."""
        return dict(self._get("/v1/info"))

    def publish(
        self,
        folder: Path,
        key: Path,
        *,
        passphrase: bytes | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Sign ``folder`` with the EC key file ``key`` if ``model.sig`` is absent or stale,
        then upload it as a streamed tar, the request signed by that key; returns the
        registered model. Its name's namespace (``acme`` of ``acme/iris``) must be unclaimed
        or claimed by this key (403 ``namespace`` otherwise). ``progress(done, total)`` is
        called as the archive's bytes are sent (after it has been hashed once)."""
        folder = Path(folder)
        signing = ensure_signed(folder, Path(key), passphrase=passphrase)
        headers = self._publish_headers(folder, signing)
        return self._post("/v1/models", self._publish_body(folder, progress), headers)

    def models(self, **filters: str | None) -> list[dict[str, Any]]:
        """``GET /v1/models`` filtered by ``name``, ``task`` or ``publisher``: every page,
        newest first (at most ``MAX_LIST_PAGES`` pages)."""
        return self._list(Listing("/v1/models", "models", filters))

    def model(self, ref: str) -> dict[str, Any]:
        """One model by digest, ``name`` or ``name@version``."""
        return dict(self._get(f"/v1/models/{ref}"))

    def nodes(self) -> list[dict[str, Any]]:
        """``GET /v1/nodes``: registered nodes with liveness, every page."""
        return self._list(Listing("/v1/nodes", "nodes"))

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
            raise self._unreachable(exc) from exc
        self._forget_epoch(response)
        self._keep_capability(expect.request_id, response)
        return self._answer(response, verify, expect)

        epoch = self._named_epoch(verify)
        expect, content, headers = self._expect(model, inputs, policy, request_id, epoch, public)
        response = self._request("POST", "/v1/inferences", content=content, headers=headers)
        self._forget_epoch(response)
        self._keep_capability(expect.request_id, response)
        return self._answer(response, verify, expect)

    def _named_epoch(self, verify: bool | None) -> int | None:
        """The epoch a verified request names (``X-Veriml-Epoch``), cached for ``EPOCH_TTL``
        seconds; None when the answer will not be verified."""
        if not self._verifies(verify):
            return None
        cached = self._cached_epoch()
        return cached if cached is not None else self._learn_epoch(self._get("/v1/ledger/rules"))

    def inference(self, id: str, *, verify: bool | None = None) -> InferenceResult:
        """``GET /v1/inferences/{id}``, verified like :meth:`infer`, and it must be the answer
        to ``id`` (``check="request"``)."""
        path = f"/v1/inferences/{id}"
        response = self._request("GET", path, headers=self._known_size() | self._reader(path, id))
        return _answer_to(id, self._answer(response, verify))

    def ledger_state(self, size: int | None = None) -> dict[str, Any]:
        """``GET /v1/ledger/state``: the coordinator's ledger fold (docs/verification.md,
        "State"), over the first ``size`` log entries when given. As the coordinator claims
        it: ``veriml log audit --coordinator`` folds the log itself and compares."""
        return dict(self._get("/v1/ledger/state", **_size_params(size)))

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
            raise self._unreachable(exc) from exc
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
        request = llm_request("chat.completion", model, payload, params, policy, request_id, public)
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
        request = llm_request(
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
        request = llm_request(
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
        wire, content, headers = self._llm_wire(request, stream, self._named_epoch(verify))
        if not stream:
            response = self._request("POST", wire.path, content=content, headers=headers)
            self._forget_epoch(response)
            return self._llm_result(wire, _json_body(response), verify)
        try:
            sent = self._http.build_request(
                "POST", wire.path, content=content, headers=headers, extensions={STREAM: True}
            )
            response = self._http.send(sent, stream=True)
        except httpx.HTTPError as exc:
            raise self._unreachable(exc) from exc
        self._forget_epoch(response)
        if response.status_code >= 400:
            try:
                response.read()
            finally:
                response.close()
            _json_body(response)
        return ChatStream(self, wire, response, verify)

    def _llm_result(
        self, request: LLMRequest, body: Mapping[str, Any], verify: bool | None
    ) -> ChatResult:
        if not self._verifies(verify):
            return ChatResult.of(request.kind, body)
        verified = self._verify_llm(request, body, self._model_digest(request.model))
        return ChatResult.of(request.kind, body, verified)


class ChatStream(StreamedAnswer):
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
        super().__init__(request, response, verify)
        self._client = client

    def __iter__(self) -> Iterator[str]:
        try:
            for event, data in parse_sse(self._response.iter_lines()):
                piece = self._assembler.feed(event, data)
                if piece:
                    yield piece
        except httpx.HTTPError as exc:
            raise NodeUnavailableError(
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
