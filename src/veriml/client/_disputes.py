"""The challenger's side of a dispute (docs/verification.md, "Disputes").

Anyone holding their own trace of a logged inference (a watcher, a client, a node) can
challenge the answer of the node that served it. The coordinator hosts the dispute and asks
both parties for trace entries until the bisection ends at one operator, which its referee
re-executes; every step is logged. :class:`Challenger` plays the challenger:

1. ``POST /v1/disputes`` with the challenger's trace commitment (``{"root", "size"}``), the
   output digests it claims and its signed ``challenge`` ledger request for the rules'
   ``challenge_bond`` (``GET /v1/ledger/rules``; :func:`challenge_authorization`): the bond
   is locked while the dispute runs and lost if the challenge fails, or if the challenger
   stops moving (with a bond of 0 the signed request is how the challenger signs in);
2. while the dispute is open, answer the state's ``query``: ``{"index": i}`` with the trace
   entry at ``i`` and its RFC 9162 inclusion proof against the committed root
   (``POST /v1/disputes/{id}/reveal``), ``{"tensors": [names]}`` with those recorded tensors
   (``POST /v1/disputes/{id}/tensors``); with no query (the coordinator is asking the
   defendant, or its referee is running) poll ``GET /v1/disputes/{id}``;
3. when the state is ``settled``, return its ``result``: the verdict log entry.

Every request is signed with the client's key (the challenger's account is that key's id).
The loop is bounded by a number of moves and a deadline: a coordinator that never settles
cannot hold the challenger forever. A coordinator that is unreachable or answers 502-504 for
a while (it restarts: open disputes resume from its database) is polled again with backoff
until the deadline, and play goes on from the state it then shows. Other coordinator problems
surface as veriml errors.

>>> with Client(url, key=watcher_key) as client:  # doctest: +SKIP
...     outputs, trace = runner.traced(inputs)
...     verdict = Challenger(client).challenge(
...         inference_id, node_id, trace, {n: tensor_digest(a) for n, a in outputs.items()}
...     )
...     verdict["winner"]
'challenger'
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

import httpx

from veriml.client._requests import json_answer, raise_for_problem, request_headers
from veriml.core.digest import Digest
from veriml.core.errors import FormatError, KeyFileError, LimitExceededError, NodeUnavailableError
from veriml.core.keys import SigningKey
from veriml.core.tensors import tensor_to_json
from veriml.protocol.accounts import LedgerRequest

if TYPE_CHECKING:
    from veriml.client._client import Client
    from veriml.runtime import Trace

__all__ = [
    "DEFAULT_DISPUTE_TIMEOUT",
    "DEFAULT_MAX_MOVES",
    "Challenger",
    "DisputeState",
    "Query",
    "challenge_authorization",
    "reveal_body",
    "tensors_body",
]

DEFAULT_MAX_MOVES = 512
"""Requests one dispute may take: a bisection needs O(log L) rounds, each a reveal and at
most a few tensor answers, so 512 covers traces far beyond any model's size."""
DEFAULT_DISPUTE_TIMEOUT = 600.0
"""Seconds from opening a dispute to its settlement before the challenger gives up."""
MAX_STATE_BYTES = 1 << 20
_POLL_START, _POLL_MAX = 0.05, 1.0
_RETRY_MAX = 2.0
_TRANSIENT = frozenset({502, 503, 504})


class _Unreachable(NodeUnavailableError):
    """The coordinator did not answer this time (down, restarting, overloaded)."""


def challenge_authorization(
    http: httpx.Client, key: SigningKey, inference: str, node: str
) -> dict[str, Any]:
    """The bond of a challenge of ``node``'s answer to ``inference``: ``key``'s signed
    ``challenge`` ledger request for the rules' ``challenge_bond`` (``GET /v1/ledger/rules``),
    as the body's ``authorization`` (for a bond of 0 too: the ledger admits no account into a
    dispute it did not sign into)."""
    response = http.get("/v1/ledger/rules")
    raise_for_problem(response)
    try:
        rules = response.json().get("rules") or {}
        bond = int(rules.get("challenge_bond", 0))
    except (ValueError, TypeError, AttributeError) as exc:
        raise FormatError("the coordinator's ledger rules are malformed") from exc
    signed = LedgerRequest.signed(key, "challenge", max(bond, 0), inference=inference, node=node)
    return signed.to_json()


Status = Literal["open", "settled"]


@dataclass(frozen=True, slots=True)
class Query:
    """What the coordinator asks the challenger now: one trace ``index``, or ``tensors``."""

    index: int | None = None
    tensors: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, obj: Any) -> Query | None:
        if obj is None:
            return None
        if not isinstance(obj, Mapping):
            raise FormatError("a dispute query is an object or null", got=type(obj).__name__)
        if "index" in obj:
            index = obj["index"]
            if isinstance(index, bool) or not isinstance(index, int) or index < 0:
                raise FormatError("a dispute query index is a non-negative integer", got=index)
            return cls(index=index)
        names = obj.get("tensors")
        if isinstance(names, list) and names and all(isinstance(n, str) for n in names):
            return cls(tensors=tuple(names))
        raise FormatError("a dispute query asks for an index or a list of tensor names")


@dataclass(frozen=True, slots=True)
class DisputeState:
    """The coordinator's view of one dispute (docs/verification.md, "Service")."""

    id: str
    status: Status
    inference: str
    defendant: str
    challenger: str
    mode: str
    query: Query | None
    deadline: str | None
    rounds: int
    messages: int
    result: Mapping[str, Any] | None

    @property
    def settled(self) -> bool:
        return self.status == "settled"

    @property
    def winner(self) -> str | None:
        """The verdict's winner once settled (``challenger``, ``defendant``, ``none``,
        ``neither``)."""
        return None if self.result is None else str(self.result.get("winner"))

    @classmethod
    def from_json(cls, obj: Any) -> DisputeState:
        if not isinstance(obj, Mapping):
            raise FormatError("a dispute state is a JSON object")
        try:
            status = obj["status"]
            if status not in ("open", "settled"):
                raise FormatError("a dispute status is open or settled", got=str(status)[:40])
            result = obj.get("result")
            if result is not None and not isinstance(result, Mapping):
                raise FormatError("a dispute result is the verdict entry object or null")
            if status == "settled" and result is None:
                raise FormatError("a settled dispute carries its verdict entry")
            rounds, messages = obj.get("rounds", 0), obj.get("messages", 0)
            if not all(isinstance(n, int) and not isinstance(n, bool) for n in (rounds, messages)):
                raise FormatError("dispute rounds and messages are integers")
            deadline = obj.get("deadline")
            return cls(
                id=_text(obj["id"], "id"),
                status=status,
                inference=_text(obj["inference"], "inference"),
                defendant=_text(obj["defendant"], "defendant"),
                challenger=_text(obj["challenger"], "challenger"),
                mode=_text(obj.get("mode", "bitwise"), "mode"),
                query=Query.from_json(obj.get("query")),
                deadline=None if deadline is None else _text(deadline, "deadline"),
                rounds=rounds,
                messages=messages,
                result=None if result is None else dict(result),
            )
        except KeyError as exc:
            raise FormatError("a dispute state lacks a member", member=str(exc)) from exc


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value:
        raise FormatError(f"dispute {what} must be a non-empty string", got=repr(value)[:80])
    return value


class Challenger:
    """Open a dispute against a node's answer and play it to the verdict, with one trace.

    ``client`` must sign its requests (``Client(key=...)``): the coordinator records the key
    id as the challenger's account, which locks the bond and receives the reward.
    ``max_moves`` bounds the requests of one dispute and ``timeout`` its duration (seconds);
    exceeding either raises (:class:`LimitExceededError`, :class:`NodeUnavailableError`) and
    leaves the dispute to the coordinator's own deadlines.
    """

    def __init__(
        self,
        client: Client,
        *,
        max_moves: int = DEFAULT_MAX_MOVES,
        timeout: float = DEFAULT_DISPUTE_TIMEOUT,
        on_state: Callable[[DisputeState], None] | None = None,
    ) -> None:
        if client.key is None:
            raise KeyFileError("a challenger signs its requests: give the client a key")
        if max_moves < 1 or timeout <= 0:
            raise FormatError("a dispute needs at least one move and a positive timeout")
        self.client = client
        self.key = client.key
        self.max_moves = max_moves
        self.timeout = timeout
        self.on_state = on_state
        self._http: httpx.Client = client._http

    # -- the protocol ------------------------------------------------------------------------

    def challenge(
        self,
        inference: str,
        node: str,
        trace: Trace,
        outputs: Mapping[str, Digest],
        *,
        mode: str | None = None,
    ) -> dict[str, Any]:
        """Dispute ``node``'s answer to ``inference`` with ``trace`` (from
        ``Runner.traced`` on the same inputs, tensors kept) whose outputs digest to
        ``outputs``; return the verdict entry JSON once the coordinator settles it."""
        deadline = time.monotonic() + self.timeout
        state = self.open(inference, node, trace, outputs, mode=mode)
        return self.play(state, trace, deadline=deadline)

    def open(
        self,
        inference: str,
        node: str,
        trace: Trace,
        outputs: Mapping[str, Digest],
        *,
        mode: str | None = None,
    ) -> DisputeState:
        """Step 1: ``POST /v1/disputes``; the dispute's first state."""
        body: dict[str, Any] = {
            "inference": inference,
            "node": node,
            "trace": trace.commitment.to_json(),
            "outputs": {name: d.to_text() for name, d in sorted(outputs.items())},
        }
        if mode is not None:
            body["mode"] = mode
        body["authorization"] = challenge_authorization(self._http, self.key, inference, node)
        return self._post("/v1/disputes", body)

    def play(
        self, state: DisputeState, trace: Trace, *, deadline: float | None = None
    ) -> dict[str, Any]:
        """Steps 2-3: answer every query of ``state``'s dispute until it is settled."""
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        moves, wait = 1, _POLL_START
        path = f"/v1/disputes/{quote(state.id, safe='')}"
        while not state.settled:
            try:
                state, wait, moves = self._step(state, trace, path, deadline, wait, moves)
            except _Unreachable:
                # The coordinator is away (a restart resumes its disputes): ask for the
                # state again until it answers, then answer whatever it asks then.
                state = self._reconnect(path, state.id, deadline)
        assert state.result is not None  # DisputeState guarantees it when settled
        return dict(state.result)

    def _step(
        self, state: DisputeState, trace: Trace, path: str, deadline: float, wait: float, moves: int
    ) -> tuple[DisputeState, float, int]:
        """One move of :meth:`play` (or one poll while the other side has the move): the
        next state, poll wait and move count."""
        if moves >= self.max_moves:
            raise LimitExceededError(
                "the dispute did not settle within the allowed moves",
                dispute=state.id,
                limit=self.max_moves,
            )
        if time.monotonic() > deadline:
            raise NodeUnavailableError(
                "the coordinator did not settle the dispute in time",
                dispute=state.id,
                seconds=self.timeout,
            )
        query = state.query
        if query is None:
            # The defendant or the referee has the move: wait for it, backing off.
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            return self._get(path, state.id), min(wait * 2, _POLL_MAX), moves
        if query.index is not None:
            state = self._post(path + "/reveal", reveal_body(trace, query.index), state.id)
        else:
            state = self._post(path + "/tensors", tensors_body(trace, query.tensors), state.id)
        return state, _POLL_START, moves + 1

    def _reconnect(self, path: str, dispute: str, deadline: float) -> DisputeState:
        wait = _POLL_START
        while True:
            if time.monotonic() > deadline:
                raise NodeUnavailableError(
                    "the coordinator did not come back before the dispute's deadline",
                    dispute=dispute,
                    seconds=self.timeout,
                )
            time.sleep(min(wait, max(0.0, deadline - time.monotonic())))
            wait = min(wait * 2, _RETRY_MAX)
            try:
                return self._get(path, dispute)
            except _Unreachable:
                continue

    # -- HTTP --------------------------------------------------------------------------------

    def _post(self, path: str, body: Mapping[str, Any], dispute: str | None = None) -> DisputeState:
        content = json.dumps(body, separators=(",", ":")).encode()
        url = self.client.url.rstrip("/") + path
        headers = request_headers(
            self.key, "POST", url, Digest.of(content), {"Content-Type": "application/json"}
        )
        return self._send("POST", path, dispute, content=content, headers=headers)

    def _get(self, path: str, dispute: str) -> DisputeState:
        return self._send("GET", path, dispute)

    def _send(self, method: str, path: str, dispute: str | None, **kwargs: Any) -> DisputeState:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise _Unreachable(
                "coordinator unreachable", url=self.client.url, dispute=dispute, reason=str(exc)
            ) from exc
        if response.status_code in _TRANSIENT and dispute is not None:
            raise _Unreachable(
                "coordinator unavailable", status=response.status_code, dispute=dispute
            )
        if response.status_code == 410 and method == "POST" and dispute is not None:
            # Settled while this move was on its way (a deadline passed): read the verdict.
            return self._get(f"/v1/disputes/{quote(dispute, safe='')}", dispute)
        state = DisputeState.from_json(json_answer(response, MAX_STATE_BYTES, "dispute state"))
        if dispute is not None and state.id != dispute:
            raise FormatError("the coordinator answered about another dispute", expected=dispute)
        if self.on_state is not None:
            self.on_state(state)
        return state


def reveal_body(trace: Trace, index: int) -> dict[str, Any]:
    """The reveal of entry ``index``: the entry and its inclusion proof, hex encoded."""
    if not 0 <= index < trace.size:
        raise FormatError(
            "the coordinator asked for an index outside the trace", index=index, size=trace.size
        )
    proof: Sequence[bytes] = trace.inclusion_proof(index)
    return {
        "index": index,
        "entry": trace.entries[index].to_json(),
        "proof": [bytes(p).hex() for p in proof],
    }


def tensors_body(trace: Trace, names: Sequence[str]) -> dict[str, Any]:
    """The recorded tensors ``names`` (node outputs or graph inputs) as tensor JSON."""
    recorded = trace.tensors
    if recorded is None:
        raise FormatError("this trace kept no tensors: trace with keep_tensors=True")
    missing = [n for n in names if n not in recorded]
    if missing:
        raise FormatError(
            "the coordinator asked for tensors this trace did not record",
            names=",".join(missing)[:200],
        )
    return {"tensors": {n: tensor_to_json(recorded[n], force_b64=True) for n in names}}
