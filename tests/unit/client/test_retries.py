"""The SDK behaves like a good HTTP client (issue 11 §5): an idempotent call is asked again after
a 503 or a broken connection, waiting as the server's Retry-After says or with jittered
backoff, a bounded number of times and for a bounded time; anything else is never repeated.

Against real servers on loopback (uvicorn, and a TCP proxy that breaks connections) that answer
from a script and record what they were asked.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from _proxy import flaky_proxy
from _servers import serve
from veriml.client import AsyncClient, ChatStream, Client
from veriml.client._retry import Retries, RetryTransport, parse_retry_after
from veriml.core.errors import FormatError, NodeUnavailableError, NotFoundError, VerificationError
from veriml.core.keys import generate_key
from veriml.tlog.note import NoteSigner

INFO = {"version": "test"}


@dataclass
class Scripted:
    """A server answering each request with the next answer scripted for its path (the last
    one again once the script runs out), recording when each request came."""

    answers: dict[str, list[Any]]
    seen: list[tuple[str, str, float, dict[str, str]]] = field(default_factory=list)

    def times(self, path: str) -> list[float]:
        return [t for _, p, t, _ in self.seen if p == path]

    def count(self, path: str) -> int:
        return len(self.times(path))

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST"])
        async def answer(request: Request, path: str) -> Response:
            await request.body()
            path = "/" + path
            self.seen.append((request.method, path, time.monotonic(), dict(request.headers)))
            queue = self.answers.get(path)
            if not queue:
                return Response(status_code=404)
            made = queue.pop(0) if len(queue) > 1 else queue[0]
            return made if isinstance(made, Response) else made()

        return app


def problem(status: int, **headers: str) -> Response:
    body = json.dumps({"title": "scripted", "status": status, "detail": f"scripted {status}"})
    return Response(body, status, headers=headers, media_type="application/problem+json")


def ok(body: dict[str, Any]) -> Response:
    return Response(json.dumps(body), 200, media_type="application/json")


@pytest.fixture
def scripted() -> Iterator[tuple[Scripted, str]]:
    script = Scripted({})
    with serve(script.app()) as url:
        yield script, url


def client(url: str, **kwargs: Any) -> Client:
    return Client(url, verify=False, checkpoints=False, **kwargs)


# -- Retry-After ---------------------------------------------------------------------------------


def test_retry_after_is_read_as_delay_seconds_or_an_http_date() -> None:
    now = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT
    assert parse_retry_after("120", now=now) == 120.0
    assert parse_retry_after(" 0 ", now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=now) == 5.0
    assert parse_retry_after(email.utils.formatdate(now + 3, usegmt=True), now=now) == 3.0
    # A date already past asks for no wait; "-0000" is GMT too.
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:02 -0000", now=now) == 2.0
    for unreadable in (None, "", "soon", "-5", "1.5", "²"):
        assert parse_retry_after(unreadable, now=now) is None


def test_a_503_with_retry_after_is_asked_again_after_that_wait(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503, **{"Retry-After": "1"}), ok(INFO)]
    with client(url) as c:
        assert c.info() == INFO
    first, second = script.times("/v1/info")
    assert second - first >= 1.0


def test_an_http_date_retry_after_is_honoured(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted

    def busy_for_two_seconds() -> Response:
        when = email.utils.formatdate(time.time() + 2, usegmt=True)
        return problem(503, **{"Retry-After": when})

    script.answers["/v1/info"] = [busy_for_two_seconds, ok(INFO)]
    with client(url) as c:
        assert c.info() == INFO
    first, second = script.times("/v1/info")
    assert second - first >= 1.0  # the date has a resolution of one second


def test_a_429_is_retried_only_when_it_says_when(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(429, **{"Retry-After": "0"}), ok(INFO)]
    script.answers["/v1/nodes"] = [problem(429), ok({"nodes": []})]
    with client(url) as c:
        assert c.info() == INFO
        with pytest.raises(NodeUnavailableError) as caught:
            c.nodes()
    assert caught.value.evidence["status"] == 429
    assert "rate limited" in caught.value.message
    assert (script.count("/v1/info"), script.count("/v1/nodes")) == (2, 1)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, FormatError),
        (403, VerificationError),
        (404, NotFoundError),
        (500, NodeUnavailableError),
    ],
)
def test_other_errors_are_never_retried(
    scripted: tuple[Scripted, str], status: int, error: type[Exception]
) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(status, **{"Retry-After": "0"}), ok(INFO)]
    with client(url) as c, pytest.raises(error):
        c.info()
    assert script.count("/v1/info") == 1


def test_a_server_that_is_always_unavailable_fails_after_the_retries_with_its_error(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503, **{"Retry-After": "0"})]
    started = time.monotonic()
    with client(url, retries=3) as c, pytest.raises(NodeUnavailableError) as caught:
        c.info()
    assert time.monotonic() - started < 5
    assert caught.value.evidence["status"] == 503
    assert "scripted 503" in caught.value.message
    assert script.count("/v1/info") == 4  # the call and three retries


def test_retrying_stops_once_the_retry_time_is_spent(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503)]  # no Retry-After: backoff, growing
    started = time.monotonic()
    with client(url, retries=100, retry_timeout=1.0) as c, pytest.raises(NodeUnavailableError):
        c.info()
    spent = time.monotonic() - started
    # No retry is decided on after 1 s; the last wait is at most 1.5 s (0.25 s doubling + 0.5).
    assert spent < 1.0 + 1.5 + 1.0
    assert 2 <= script.count("/v1/info") < 8


def test_a_retry_after_beyond_the_retry_time_is_not_waited_out(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503, **{"Retry-After": "3600"}), ok(INFO)]
    started = time.monotonic()
    with client(url) as c, pytest.raises(NodeUnavailableError):
        c.info()
    assert time.monotonic() - started < 1.0
    assert script.count("/v1/info") == 1


def test_retries_0_never_retries(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503, **{"Retry-After": "0"}), ok(INFO)]
    with client(url, retries=0) as c, pytest.raises(NodeUnavailableError):
        c.info()
    assert script.count("/v1/info") == 1


def test_a_post_without_an_idempotency_key_is_never_retried(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/ledger/stake"] = [problem(503, **{"Retry-After": "0"}), ok({})]
    with client(url, key=generate_key("ed25519")) as c, pytest.raises(NodeUnavailableError):
        c.stake(5)
    assert script.count("/v1/ledger/stake") == 1


def test_retry_settings_are_checked() -> None:
    for bad in ({"retries": -1}, {"retries": True}, {"timeout": 0}, {"wait_max": -1}):
        with pytest.raises(FormatError):
            Retries(**bad)  # type: ignore[arg-type]
    with pytest.raises(FormatError):
        Client("http://127.0.0.1:9", verify=False, checkpoints=False, retries=-1)


# -- broken connections --------------------------------------------------------------------------


def test_a_connection_broken_before_the_answer_is_retried(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [ok(INFO)]
    with flaky_proxy(url, drop=b"GET /v1/info", when="request") as proxy, client(proxy.url) as c:
        assert c.info() == INFO
    assert proxy.dropped == 1
    assert script.count("/v1/info") == 1  # the dropped request never reached the server


def test_an_answer_lost_on_the_way_is_asked_for_again(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [ok(INFO)]
    with flaky_proxy(url, drop=b"GET /v1/info", when="answer") as proxy, client(proxy.url) as c:
        assert c.info() == INFO
    assert script.count("/v1/info") == 2


def test_a_coordinator_that_cannot_be_reached_fails_with_the_attempts_it_took() -> None:
    with serve(FastAPI()) as url:
        pass  # a port nothing listens on any more
    started = time.monotonic()
    with client(url, retries=2) as c, pytest.raises(NodeUnavailableError) as caught:
        c.info()
    assert time.monotonic() - started < 5
    assert "after 3 attempts" in caught.value.evidence["reason"]


# -- streams -------------------------------------------------------------------------------------

CHAT = [{"role": "user", "content": "Hi"}]


def broken_stream() -> Response:
    async def body() -> Any:
        chunk = {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]}
        yield f"data: {json.dumps(chunk)}\n\n".encode()
        await asyncio.sleep(0.05)
        raise RuntimeError("the coordinator died mid-stream")

    return StreamingResponse(body(), media_type="text/event-stream")


def test_a_stream_is_retried_before_its_first_byte_and_never_after(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/v1/chat/completions"] = [
        problem(503, **{"Retry-After": "0"}),
        broken_stream,
        ok({}),
    ]
    with client(url) as c:
        stream = c.chat("m", CHAT, stream=True)
        assert isinstance(stream, ChatStream)
        pieces = iter(stream)
        assert next(pieces) == "Hel"  # shown before the break
        with pytest.raises(NodeUnavailableError):
            next(pieces)
    assert script.count("/v1/chat/completions") == 2  # the 503 asked again; the break not
    keys = {h["idempotency-key"] for m, p, _, h in script.seen if p == "/v1/chat/completions"}
    assert len(keys) == 1  # the retry is the same request


def test_an_answer_that_fails_verification_is_not_asked_for_again(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    vkey = NoteSigner("veriml.test/retries", generate_key("ed25519")).vkey
    script.answers["/v1/ledger/rules"] = [ok({"epoch": 1, "rules": {}})]
    chat = {"id": "x", "model": "m", "choices": [], "veriml": {"id": "x"}}
    script.answers["/v1/chat/completions"] = [ok(chat)]
    with Client(url, log_vkey=vkey, checkpoints=False) as c, pytest.raises(FormatError):
        c.chat("m", CHAT)
    assert script.count("/v1/chat/completions") == 1


def test_the_async_client_retries_alike(scripted: tuple[Scripted, str]) -> None:
    script, url = scripted
    script.answers["/v1/info"] = [problem(503, **{"Retry-After": "0"}), ok(INFO)]

    async def main() -> dict[str, Any]:
        with flaky_proxy(url, drop=b"GET /v1/info", when="request") as proxy:
            async with AsyncClient(proxy.url, verify=False, checkpoints=False) as c:
                return await c.info()

    assert asyncio.run(main()) == INFO
    assert script.count("/v1/info") == 2  # the dropped one never came; the 503 was asked again


def test_the_transport_passes_a_one_pass_body_through_untouched(
    scripted: tuple[Scripted, str],
) -> None:
    script, url = scripted
    script.answers["/upload"] = [problem(503, **{"Retry-After": "0"}), ok({})]
    transport = RetryTransport(httpx.HTTPTransport(), Retries())
    with httpx.Client(base_url=url, transport=transport) as http:
        body = iter([b"a", b"b"])
        response = http.post("/upload", content=body, headers={"Idempotency-Key": "k"})
    assert response.status_code == 503
    assert script.count("/upload") == 1
