"""``veriml.AsyncClient``: the asyncio twin of :class:`veriml.Client` (docs/sdk.md).

Same arguments and methods, awaited. Requests are built and answers checked by the code both
share (:mod:`veriml.client._base`); verification reads log tiles and checks signatures, so it
runs off the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
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
from veriml.client._requests import Expected, raise_for_problem
from veriml.client._retry import STREAM, AsyncRetryTransport
from veriml.core.digest import Digest
from veriml.core.errors import NodeUnavailableError
from veriml.core.keys import SigningKey
from veriml.core.tensors import Array
from veriml.protocol.sse import SSEReader
from veriml.verify.answer import InferenceResult

__all__ = ["AsyncChatStream", "AsyncClient"]


class AsyncClient(BaseClient):
    """The asyncio twin of :class:`veriml.Client` (same arguments and methods, awaited)."""

    def _connect(self, timeout: float, limits: httpx.Limits) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.url,
            timeout=timeout,
            transport=AsyncRetryTransport(httpx.AsyncHTTPTransport(limits=limits), self.retries),
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
            raise self._unreachable(exc) from exc

    async def _get(self, path: str, **params: Any) -> Any:
        response = await self._request("GET", path, params=self._query(params))
        raise_for_problem(response)
        return response.json()

    async def _post(self, path: str, content: Any, headers: Mapping[str, str]) -> dict[str, Any]:
        response = await self._request("POST", path, content=content, headers=dict(headers))
        raise_for_problem(response)
        return dict(response.json())

    async def _list(self, listing: Listing) -> list[dict[str, Any]]:
        while not listing.done:
            listing.feed(await self._get(listing.path, **listing.params()))
        return listing.items

    async def info(self) -> dict[str, Any]:
        return dict(await self._get("/v1/info"))

    async def publish(
        self,
        folder: Path,
        key: Path,
        *,
        passphrase: bytes | None = None,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """As :meth:`veriml.Client.publish`; signing and hashing run off the event loop."""
        folder = Path(folder)
        signing = await asyncio.to_thread(ensure_signed, folder, Path(key), passphrase=passphrase)
        headers = await asyncio.to_thread(self._publish_headers, folder, signing)
        return await self._post("/v1/models", _aiter(self._publish_body(folder, progress)), headers)

    async def models(self, **filters: str | None) -> list[dict[str, Any]]:
        return await self._list(Listing("/v1/models", "models", filters))

    async def model(self, ref: str) -> dict[str, Any]:
        return dict(await self._get(f"/v1/models/{ref}"))

    async def nodes(self) -> list[dict[str, Any]]:
        return await self._list(Listing("/v1/nodes", "nodes"))

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
        epoch = await self._named_epoch(verify)
        expect, content, headers = self._expect(model, inputs, policy, request_id, epoch, public)
        response = await self._request("POST", "/v1/inferences", content=content, headers=headers)
        self._forget_epoch(response)
        self._keep_capability(expect.request_id, response)
        return await self._answer_async(response, verify, expect)

    async def _named_epoch(self, verify: bool | None) -> int | None:
        if not self._verifies(verify):
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

    async def ledger_state(self, size: int | None = None) -> dict[str, Any]:
        return dict(await self._get("/v1/ledger/state", **_size_params(size)))

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
            raise self._unreachable(exc) from exc
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
        request = llm_request("chat.completion", model, payload, params, policy, request_id, public)
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
        request = llm_request(
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
        request = llm_request(
            "embedding", model, {"input": value}, params, policy, request_id, public
        )
        result = await self._llm(request, False, verify)
        assert isinstance(result, ChatResult)
        return result

    async def _llm(
        self, request: LLMRequest, stream: bool, verify: bool | None
    ) -> ChatResult | AsyncChatStream:
        wire, content, headers = self._llm_wire(request, stream, await self._named_epoch(verify))
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
            raise self._unreachable(exc) from exc
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
        if not self._verifies(verify):
            return ChatResult.of(request.kind, body)
        model = self._model_digest(request.model)
        # Verification reads log tiles and checks signatures: off the event loop.
        verified = await asyncio.to_thread(self._verify_llm, request, body, model)
        return ChatResult.of(request.kind, body, verified)

    async def _answer_async(
        self, response: httpx.Response, verify: bool | None, expect: Expected | None = None
    ) -> InferenceResult:
        if not self._verifies(verify):
            return self._answer(response, False)
        # Verification reads log tiles and checks signatures: off the event loop.
        return await asyncio.to_thread(self._answer, response, True, expect)


async def _aiter(chunks: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator of chunks as the async body httpx streams."""
    for chunk in chunks:
        yield chunk


class AsyncChatStream(StreamedAnswer):
    """The asyncio twin of :class:`ChatStream`: ``async for text in stream``, then
    ``stream.result``, verified once the stream has ended (failing closed the same way)."""

    def __init__(
        self,
        client: AsyncClient,
        request: LLMRequest,
        response: httpx.Response,
        verify: bool | None,
    ) -> None:
        super().__init__(request, response, verify)
        self._client = client

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
            raise NodeUnavailableError(
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
