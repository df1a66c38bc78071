"""What travels with a request and what must come back: problem answers as veriml errors,
optional request signatures (docs/network.md, "Coordinator HTTP API"), and the expectation an
answer must meet to be about the request this client sent.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np

from veriml.core.digest import Digest
from veriml.core.errors import (
    Check,
    ConflictError,
    Error,
    FormatError,
    InvalidInputError,
    LimitExceededError,
    NodeUnavailableError,
    NotFoundError,
    PaymentRequiredError,
    VerificationError,
)
from veriml.core.keys import SigningKey
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.protocol.draw import Draw
from veriml.protocol.http_signatures import sign_request
from veriml.verify.inference import VerifiedInference

__all__ = [
    "Expected",
    "error_for_status",
    "json_answer",
    "raise_for_problem",
    "request_headers",
    "stream_digest",
]


def request_headers(
    key: SigningKey,
    method: str,
    url: str,
    body_digest: Digest,
    headers: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """``headers`` and the RFC 9421 signature of the request (docs/network.md, "Signed
    requests"): the method, ``url``, the body's ``Content-Digest`` and every meaningful header
    among ``headers`` are covered, so the request must be sent with exactly these headers.
    Sign last, once every other header is known."""
    return dict(headers or {}) | sign_request(key, method, url, body_digest, headers)


def stream_digest(chunks: Iterable[bytes]) -> Digest:
    """SHA-256 of a stream, chunk by chunk (a signed upload is hashed before it is sent)."""
    h = hashlib.sha256()
    for chunk in chunks:
        h.update(chunk)
    return Digest.from_hex(h.hexdigest())


def raise_for_problem(response: httpx.Response) -> None:
    """Turn an RFC 9457 problem answer into the veriml error it stands for
    (:func:`error_for_status`)."""
    if response.status_code < 400:
        return
    try:
        problem = response.json()
    except ValueError:
        problem = {}
    if not isinstance(problem, dict):
        problem = {}
    detail = str(problem.get("detail") or problem.get("title") or response.reason_phrase)
    evidence = {"status": response.status_code, "url": str(response.request.url)}
    check = _known_check(problem.get("check"), evidence)
    retry_after = response.headers.get("Retry-After")
    raise error_for_status(response.status_code, detail, evidence, check, retry_after)


def _known_check(name: object, evidence: dict[str, Any]) -> Check:
    """A problem's ``check`` as a published :class:`~veriml.errors.Check`; a name this SDK does
    not know (a newer server, or a lying one) reads as ``signature``, and the name it sent is
    kept in ``evidence`` as ``server_check``."""
    if not name:
        return Check.SIGNATURE
    try:
        return Check(str(name))
    except ValueError:
        evidence["server_check"] = str(name)[:128]
        return Check.SIGNATURE


def json_answer(response: httpx.Response, limit: int, what: str) -> Any:
    """The JSON of a successful answer of at most ``limit`` bytes (a problem answer raises
    the error it stands for); ``what`` names it in the errors."""
    raise_for_problem(response)
    if len(response.content) > limit:
        raise LimitExceededError(f"the {what} is too large", limit=limit)
    try:
        return response.json()
    except ValueError as exc:
        raise FormatError(f"the coordinator's {what} is not JSON") from exc


def error_for_status(
    status: int,
    message: str,
    evidence: Mapping[str, Any],
    check: Check = Check.SIGNATURE,
    retry_after: str | None = None,
) -> Error:
    """The veriml error an HTTP error status stands for (docs/sdk.md, "Errors from the
    coordinator"): 404 :class:`NotFoundError`, 409 :class:`ConflictError`, 402
    :class:`PaymentRequiredError`, 413 :class:`LimitExceededError`, 403 a :class:`VerificationError`
    naming ``check``, 422 :class:`InvalidInputError`, 429 (too many requests, once the retries of
    :mod:`veriml.client._retry` gave up) and 5xx :class:`NodeUnavailableError`, any other 4xx
    :class:`FormatError`."""
    if status == 404:
        return NotFoundError(message, **evidence)
    if status == 409:
        return ConflictError(message, **evidence)
    if status == 402:
        return PaymentRequiredError(message, **evidence)
    if status == 413:
        return LimitExceededError(message, **evidence)
    if status == 403:
        return VerificationError(message, check=check, **evidence)
    if status == 422:
        return InvalidInputError(message, **evidence)
    if status == 429:
        waits = {} if retry_after is None else {"retry_after": retry_after[:64]}
        return NodeUnavailableError(f"rate limited: {message}", **evidence, **waits)
    if 400 <= status < 500:
        return FormatError(message, **evidence)
    return NodeUnavailableError(message, **evidence)


@dataclass(frozen=True, slots=True)
class Expected:
    """What this client asked for: the answer must be about exactly that (a coordinator could
    otherwise return a genuine, logged answer to someone else's request)."""

    model: str
    inputs: Mapping[str, Digest]
    policy: str
    request_id: str
    body: Mapping[str, Any]
    client: str | None = None
    epoch: int | None = None
    """The randomness epoch this client named (``X-Veriml-Epoch``), learnt before the request
    id was sent: the answer must draw from it (:func:`check_epoch`)."""
    own_id: bool = True
    """The request id is a fresh one this client made (not the caller's, which may be a retry
    of a request answered under an earlier epoch)."""
    public: bool = False
    """The client let anyone read what the request leaves (``visibility: "public"``,
    docs/privacy.md); the logged request must say so, and say nothing of the kind otherwise."""

    @classmethod
    def of(
        cls,
        model: str,
        inputs: Mapping[str, Any],
        policy: str,
        request_id: str | None,
        client: str | None = None,
        epoch: int | None = None,
        public: bool = False,
    ) -> Expected:
        arrays = {name: np.asarray(value) for name, value in inputs.items()}
        body: dict[str, Any] = {
            "model": model,
            "inputs": {name: tensor_to_json(a) for name, a in arrays.items()},
            "policy": policy,
        }
        if public:
            body["visibility"] = "public"
        return cls(
            model=model,
            inputs={name: tensor_digest(a) for name, a in arrays.items()},
            policy=policy,
            request_id=request_id or str(uuid.uuid4()),
            body=body,
            client=client,
            epoch=epoch,
            public=public,
            own_id=request_id is None,
        )

    def content(self) -> bytes:
        """The exact body bytes sent (and signed)."""
        return json.dumps(self.body, separators=(",", ":")).encode()

    def headers(
        self, key: SigningKey | None, url: str, content: bytes, extra: Mapping[str, str]
    ) -> dict[str, str]:
        headers = {"Idempotency-Key": self.request_id, "Content-Type": "application/json"}
        headers |= epoch_header(self.epoch) | dict(extra)
        if key is not None:
            return request_headers(key, "POST", url, Digest.of(content), headers)
        return headers

    def check(self, verified: VerifiedInference) -> None:
        result = verified.result
        mismatch = (
            result.id != self.request_id
            or result.policy != self.policy
            or (self.model.startswith("sha256:") and result.model.to_text() != self.model)
            or any(dict(p.inputs) != dict(self.inputs) for p in verified.predicates)
            or (self.client is not None and result.request.get("client") != self.client)
            or (result.request.get("visibility") == "public") != self.public
        )
        if mismatch:
            raise VerificationError(
                "the answer is not for the request this client sent",
                check=Check.REQUEST,
                request=self.request_id,
                answered=result.id,
            )
        check_epoch(result.verdict.draw, self.epoch, own_id=self.own_id)


EPOCH_HEADER = "X-Veriml-Epoch"


def epoch_header(epoch: int | None) -> dict[str, str]:
    """``X-Veriml-Epoch``, when the client named an epoch."""
    return {} if epoch is None else {EPOCH_HEADER: str(epoch)}


def check_epoch(draw: Draw | None, epoch: int | None, *, own_id: bool) -> None:
    """The answer drew from the epoch this client named before it sent the request id
    (docs/verification.md, "Randomness"): a coordinator that learns the id cannot then begin
    an epoch whose key draws what it wants, nor pick the older of two epochs. A request id the
    caller chose may be a retry answered under an earlier epoch: then an earlier one passes."""
    if epoch is None:
        return
    drew = None if draw is None else draw.epoch
    if drew == epoch or (not own_id and drew is not None and drew <= epoch):
        return
    raise VerificationError(
        "the answer drew from another epoch than the one this client named",
        check=Check.EPOCH,
        named=epoch,
        drew=drew,
    )
