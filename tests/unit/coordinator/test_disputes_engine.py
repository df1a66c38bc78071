"""The dispute engine on real traces: bisection to the first differing operator, the referee,
deadlines, proofs, and the ledger entries a verdict writes (checked by the real fold); a busy
node asked again until its deadline, the defendant spared when both sides fault, one dispute
per claim, and a dispute stored at every move and resumed by another process."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import numpy.typing as npt
import onnx
import pytest
from onnx import numpy_helper

from _ledger import node_entry
from _ledger import receipt as signed_receipt
from veriml.coordinator.db import tables as db
from veriml.coordinator.db.disputes import DisputeStore
from veriml.coordinator.disputes.service import (
    Claim,
    DisputeOptions,
    DisputeRun,
    DisputeService,
    NodeParty,
    PartyFaultError,
    RemoteParty,
)
from veriml.coordinator.ledger.service import LedgerBook
from veriml.coordinator.nodes.dispatch import JobSpec
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import ConflictError, FormatError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest, tensor_to_json
from veriml.core.timestamps import format_time, utc_now
from veriml.ledger.entries import (
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    StateEntry,
    parse_entry,
)
from veriml.models.examples import build_mlp
from veriml.protocol.accounts import LedgerRequest
from veriml.runtime import Runner, Trace, TraceEntry, build_trace
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.verify.dispute import TraceLayout

Array = npt.NDArray[Any]
STAKE = 1000
ADMIN = generate_key()
# Two registered nodes, each bound to its own staked operator (slashes hit the operator), and
# a watcher account that challenges through HTTP.
DEFENDANT_KEY, DEFENDANT_OP = generate_key(), generate_key()
CHALLENGER_KEY, CHALLENGER_OP = generate_key(), generate_key()
WATCHER_KEY = generate_key()
DEFENDANT, CHALLENGER = DEFENDANT_KEY.key_id, CHALLENGER_KEY.key_id
WATCHER = WATCHER_KEY.key_id


# -- parties built from real traces --------------------------------------------------------------


class TraceParty:
    """A party that answers from a trace it holds: honest about *its* trace, whatever that
    trace is. ``silent`` parties never answer a reveal; ``bad_proof`` ones send a proof of
    another index."""

    def __init__(
        self,
        account: str,
        trace: Trace,
        outputs: Mapping[str, Digest],
        *,
        silent: bool = False,
        bad_proof: bool = False,
        no_tensors: bool = False,
        statement: Envelope | None = None,
    ) -> None:
        self._claim = Claim(account, dict(outputs), trace.commitment, account, statement)
        self.trace = trace
        self.silent = silent
        self.bad_proof = bad_proof
        self.no_tensors = no_tensors
        self.asked: list[int] = []

    @property
    def claim(self) -> Claim:
        return self._claim

    async def open(self, timeout: float) -> TraceCommitment:
        return self.trace.commitment

    async def reveal(self, index: int, timeout: float) -> tuple[TraceEntry, list[bytes]]:
        self.asked.append(index)
        if self.silent:
            await asyncio.sleep(3600)
        proof_of = (index + 1) % self.trace.size if self.bad_proof else index
        return self.trace.entries[index], self.trace.inclusion_proof(proof_of)

    async def tensors(self, names: Sequence[str], timeout: float) -> dict[str, Array]:
        assert self.trace.tensors is not None
        if self.no_tensors:
            return {}
        return {n: self.trace.tensors[n] for n in names if n in self.trace.tensors}


def as_challenger(trace: Trace, outputs: Mapping[str, Digest], **options: Any) -> TraceParty:
    """The challenging node, signed in with its own receipt for req-1 over the outputs it
    claims (the ledger takes no node into a dispute on a statement that claims otherwise)."""
    statement = signed_receipt(CHALLENGER_KEY, "req-1", outputs=dict(outputs))
    return TraceParty(CHALLENGER, trace, outputs, statement=statement, **options)


def signed_in(amount: int = 0) -> Envelope:
    """The watcher's signed challenge request against the defendant (its bond)."""
    return LedgerRequest.signed(WATCHER_KEY, "challenge", amount, inference="req-1", node=DEFENDANT)


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> onnx.ModelProto:
    return build_mlp((4, 8, 8, 8, 8, 3), seed=3)


@pytest.fixture(scope="module")
def digest(model: onnx.ModelProto) -> Digest:
    return Digest.of(model.SerializeToString())


@pytest.fixture(scope="module")
def inputs() -> dict[str, Array]:
    return {"x": np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def honest(
    model: onnx.ModelProto, digest: Digest, inputs: dict[str, Array]
) -> tuple[dict[str, Array], Trace]:
    return Runner(model, digest=digest).traced(inputs)


@pytest.fixture(scope="module")
def receipt(model: onnx.ModelProto, digest: Digest, inputs: dict[str, Array]) -> Envelope:
    """The defendant node's receipt for req-1: what it signed into the dispute with."""
    runner = Runner(model, digest=digest)
    return runner.run(inputs, key=DEFENDANT_KEY, trace=True, request_id="req-1").receipt


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    signer = NoteSigner("example.com/disputes", generate_key())
    options = LogOptions(batch_interval=0.0)
    with Log.open(f"sqlite:///{tmp_path}/log.db", signer, options=options) as opened:
        yield opened


def fund(book: LedgerBook, key: SigningKey, amount: int, *, staked: bool) -> None:
    """A deposit signed by the ledger's admin, and (``staked``) the account's own stake."""
    at = utc_now()
    minted = LedgerRequest.signed(ADMIN, "deposit", amount, issued_at=at, to=key.key_id, memo="")
    entries: list[Any] = [DepositEntry(key.key_id, amount, at, "", minted)]
    if staked:
        request = LedgerRequest.signed(key, "stake", amount, issued_at=at)
        entries.append(StakeEntry(key.key_id, amount, at, request))
    asyncio.run(book.append(entries))


@pytest.fixture
def book(log: Log, tmp_path: Path) -> LedgerBook:
    book = LedgerBook(log, Settings(home=tmp_path), admin=ADMIN.key_id, refresh_ttl=0)
    asyncio.run(book.open())
    nodes = [node_entry(DEFENDANT_KEY, DEFENDANT_OP), node_entry(CHALLENGER_KEY, CHALLENGER_OP)]
    asyncio.run(book.append(nodes))
    for key in (DEFENDANT_OP, CHALLENGER_OP):
        fund(book, key, STAKE, staked=True)
    return book


def stake(book: LedgerBook, operator: SigningKey) -> int:
    return int(book.state().stake_of(operator.key_id))


def outputs_of(trace: Trace, model: onnx.ModelProto) -> dict[str, Digest]:
    layout = TraceLayout.from_model(model)
    return {name: trace.entries[i].digest for name, i in layout.outputs.items()}


def wrong_output(model: onnx.ModelProto, trace: Trace) -> Trace:
    """The ``wrong-output`` cheat: one ulp on the first element of the last output, with a
    trace that agrees with it."""
    assert trace.tensors is not None
    values = dict(trace.tensors)
    last = model.graph.output[0].name
    bumped = values[last].copy()
    bumped.flat[0] = np.nextafter(bumped.flat[0], np.float32(np.inf))
    values[last] = bumped
    return build_trace(model, values)


def substitute(model: onnx.ModelProto, digest: Digest, inputs: dict[str, Array]) -> Trace:
    """The ``substitute`` cheat: the model with its first weight initializer zeroed."""
    cheap = onnx.ModelProto()
    cheap.CopyFrom(model)
    first = cheap.graph.initializer[0]
    zero = numpy_helper.from_array(np.zeros_like(numpy_helper.to_array(first)), first.name)
    first.CopyFrom(zero)
    return Runner(cheap, digest=digest).traced(inputs)[1]


def service(model: onnx.ModelProto, book: LedgerBook, **options: Any) -> DisputeService:
    return DisputeService(
        key=generate_key(),
        http=httpx.AsyncClient(),
        load_model=lambda _: model,
        book=book,
        options=DisputeOptions(**{"timeout": 5.0, "job_timeout": 5.0, **options}),
    )


def dispute(
    svc: DisputeService,
    defendant: Any,
    challenger: Any,
    *,
    receipt: Envelope,
    digest: Digest,
    inputs: dict[str, Array],
    mode: str = "bitwise",
) -> DisputeRun:
    async def main() -> DisputeRun:
        run = await svc.open(
            inference="req-1",
            defendant=defendant,
            challenger=challenger,
            receipt=receipt,
            mode=mode,
            model=digest,
            inputs=inputs,
            bond=0,
            authorization=signed_in() if isinstance(challenger, RemoteParty) else None,
        )
        await asyncio.wait_for(run.settled.wait(), 30)
        return run

    return asyncio.run(main())


def logged(log: Log) -> list[Any]:
    """The dispute's entries: from its challenge on, without the ``state`` entries the book
    adds when stakes change."""
    entries = [parse_entry(e) for e in log.entries(0, log.size)]
    first = next(i for i, e in enumerate(entries) if isinstance(e, ChallengeEntry))
    return [e for e in entries[first:] if not isinstance(e, StateEntry)]


# -- outcomes -----------------------------------------------------------------------------------


def test_a_wrong_output_is_found_at_the_last_operator_and_its_node_slashed(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
    log: Log,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    defendant = TraceParty(DEFENDANT, bad, outputs_of(bad, model))
    challenger = as_challenger(good, outputs_of(good, model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )

    assert run.status == "settled"
    assert run.winner == "challenger"
    entries = logged(log)
    assert [type(e) for e in entries] == [
        ChallengeEntry,
        DisputeVerdictEntry,
        SlashEntry,
        RewardEntry,
        ReputationEntry,
        ReputationEntry,
    ]
    verdict = entries[1]
    assert verdict.reason == "referee"
    assert verdict.node_index == len(model.graph.node) - 1
    assert verdict.op_type == "Softmax"
    assert verdict.claims == {
        "defendant": bad.entries[-1].digest,
        "challenger": good.entries[-1].digest,
    }
    assert verdict.referee[bad.entries[-1].output] == good.entries[-1].digest
    ref = run.ref()
    assert parse_entry(log.entries(ref.log_index, ref.log_index + 1)[0]) == verdict
    assert ref.opened is not None
    assert parse_entry(log.entries(ref.opened, ref.opened + 1)[0]) == entries[0]
    state = book.state()
    assert state.stake_of(DEFENDANT_OP.key_id) == STAKE // 2
    assert state.account(CHALLENGER).balance == STAKE // 4  # half the slash, the rest burned
    assert state.reputation_of(DEFENDANT) == -100
    assert state.reputation_of(CHALLENGER) == 1
    assert not state.open_disputes


def test_bisection_takes_logarithmic_rounds(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    cheat = substitute(model, digest, inputs)
    defendant = TraceParty(DEFENDANT, cheat, outputs_of(cheat, model))
    challenger = as_challenger(good, outputs_of(good, model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )

    assert run.winner == "challenger"
    assert run.result is not None
    assert run.result["node_index"] == 0
    size = good.size
    assert run.rounds <= 2 + size.bit_length()
    assert run.messages <= 2 * (run.rounds + 2)
    assert defendant.asked == challenger.asked


def test_a_false_challenge_convicts_the_challenger(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
    log: Log,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    defendant = TraceParty(DEFENDANT, good, outputs_of(good, model))
    challenger = as_challenger(bad, outputs_of(bad, model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )

    assert run.winner == "defendant"
    slashes = [e for e in logged(log) if isinstance(e, SlashEntry)]
    assert [(s.account, s.amount, s.burned) for s in slashes] == [
        (CHALLENGER_OP.key_id, STAKE // 2, STAKE // 2)  # the challenging node's operator
    ]
    assert not [e for e in logged(log) if isinstance(e, RewardEntry)]
    assert book.state().stake_of(DEFENDANT_OP.key_id) == STAKE


def test_identical_claims_are_no_difference_and_the_challenger_loses(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    outputs = outputs_of(good, model)
    run = dispute(
        service(model, book),
        TraceParty(DEFENDANT, good, outputs),
        as_challenger(good, outputs),
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "no-difference"
    assert run.rounds == 0


def test_a_party_that_never_answers_loses_by_timeout(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    defendant = TraceParty(DEFENDANT, good, outputs_of(good, model), silent=True)
    challenger = as_challenger(bad, outputs_of(bad, model))
    run = dispute(
        service(model, book, timeout=0.2),
        defendant,
        challenger,
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    # Even right, a defendant that stops answering loses: deadlines are the rule.
    assert run.winner == "challenger"
    assert run.result is not None
    assert run.result["reason"] == "timeout"
    assert book.state().stake_of(DEFENDANT_OP.key_id) == STAKE // 2


def test_a_reveal_whose_proof_does_not_verify_loses(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    defendant = TraceParty(DEFENDANT, bad, outputs_of(bad, model))
    challenger = as_challenger(good, outputs_of(good, model), bad_proof=True)
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "invalid-proof"


def test_outputs_that_are_not_the_trace_s_are_inconsistent(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    # The lazy cheat: outputs that no trace produced.
    _, good = honest
    bad = wrong_output(model, good)
    defendant = TraceParty(DEFENDANT, good, outputs_of(bad, model))
    challenger = as_challenger(good, outputs_of(good, model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )
    assert run.winner == "challenger"
    assert run.result is not None
    assert run.result["reason"] == "inconsistent"


def test_a_trace_of_the_wrong_size_loses_before_any_round(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
    log: Log,
) -> None:
    _, good = honest
    short = Trace(good.entries[:-1], good.tensors)
    defendant = TraceParty(DEFENDANT, good, outputs_of(good, model))
    challenger = as_challenger(short, outputs_of(wrong_output(model, good), model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )
    assert run.winner == "defendant"
    assert run.rounds == 0
    assert run.result is not None
    assert run.result["reason"] == "inconsistent"
    challenge = logged(log)[0]
    assert isinstance(challenge, ChallengeEntry)
    assert challenge.challenger["trace"] == short.commitment.to_json()


# -- a remote challenger -------------------------------------------------------------------------


def test_a_remote_challenger_moves_by_submissions_and_wins(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    svc = service(model, book)
    remote = RemoteParty(Claim(WATCHER, outputs_of(good, model), good.commitment))

    async def main() -> DisputeRun:
        run = await svc.open(
            inference="req-1",
            defendant=TraceParty(DEFENDANT, bad, outputs_of(bad, model)),
            challenger=remote,
            receipt=receipt,
            mode="bitwise",
            model=digest,
            inputs=inputs,
            bond=0,
            authorization=signed_in(),
        )
        await asyncio.wait_for(remote.moved.wait(), 5)
        moves = 0
        while run.status == "open":
            query = run.to_json()["query"]
            assert query is not None
            assert run.to_json()["deadline"] is not None
            if "index" in query:
                i = query["index"]
                with pytest.raises(ConflictError):  # another index than the one asked
                    await svc.submit(run, reveal={"index": i + 1, "entry": {}, "proof": []})
                body = {
                    "index": i,
                    "entry": good.entries[i].to_json(),
                    "proof": [h.hex() for h in good.inclusion_proof(i)],
                }
                await svc.submit(run, reveal=body)
            else:
                assert good.tensors is not None
                await svc.submit(run, tensors={n: good.tensors[n] for n in query["tensors"]})
            moves += 1
            assert moves < 32
        return run

    run = asyncio.run(main())
    assert run.winner == "challenger"
    state = run.to_json()
    assert state["status"] == "settled"
    assert state["query"] is None
    assert state["result"]["winner"] == "challenger"
    assert book.state().account(WATCHER).balance == STAKE // 4


def test_a_remote_challenger_that_stops_answering_loses_and_the_engine_moves_on(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    remote = RemoteParty(Claim(WATCHER, outputs_of(good, model), good.commitment))
    run = dispute(
        service(model, book, timeout=0.2),
        TraceParty(DEFENDANT, bad, outputs_of(bad, model)),
        remote,
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "timeout"
    with pytest.raises(ConflictError):
        asyncio.run(service(model, book).submit(run, reveal={"index": 0}))


def test_a_party_fault_names_its_reason() -> None:
    fault = PartyFaultError("late", reason="timeout", index=3)
    assert fault.reason == "timeout"
    assert fault.check == "dispute"
    assert "index" in fault.diagnostics()


def test_a_remote_challenger_must_commit_to_a_trace() -> None:
    with pytest.raises(FormatError):
        RemoteParty(Claim(WATCHER, {"y": Digest.of(b"y")}))


def challenge_entry(dispute: str, at: dt.datetime, *, bond: int = 10) -> ChallengeEntry:
    """A challenge of CHALLENGER's, its bond signed by its key, of the defendant's receipt."""
    trace = {"root": Digest.of(b"").to_text(), "size": 0}
    statement = signed_receipt(DEFENDANT_KEY, "req-1")
    signed = LedgerRequest.signed(
        CHALLENGER_KEY,
        "challenge",
        bond,
        issued_at=format_time(at),
        inference="req-1",
        node=DEFENDANT,
    )
    return ChallengeEntry(
        dispute=dispute,
        inference="req-1",
        defendant={
            "node": DEFENDANT,
            "receipt": Digest.of(statement.payload).to_text(),
            "trace": trace,
            "statement": statement.to_json(),
        },
        challenger={
            "account": CHALLENGER,
            "trace": trace,
            "outputs": {"y": Digest.of(dispute.encode())},
        },
        mode="bitwise",
        bond=bond,
        deadline_seconds=5.0,
        at=format_time(at),
        authorization=signed,
    )


def test_disputes_a_lost_database_left_open_are_closed_without_a_winner_once_stale(
    model: onnx.ModelProto, book: LedgerBook, tmp_path: Path
) -> None:
    """A challenge with no host and no stored record (a coordinator that lost its database)
    stays open in the fold with its bond locked until the sweeper closes it: winner none
    (nobody slashed), the bond back with the challenger. A recent one is left alone (a live
    replica may host it), and so is a stored one, however old: a restart resumes it."""
    fund(book, CHALLENGER_KEY, 30, staked=False)
    opened = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    now = dt.datetime.now(dt.UTC)
    old, new, kept = (
        challenge_entry("old", opened),
        challenge_entry("new", now),
        challenge_entry("kept", opened),
    )
    asyncio.run(book.append([old, new, kept]))
    engine = db.open_engine(f"sqlite:///{tmp_path}/state.db")
    store = DisputeStore(engine, owner="another-replica", lease=60)
    with engine.begin() as conn:  # a stored row for "kept", driven by another replica
        conn.execute(
            db.disputes.insert().values(
                id="kept",
                inference="req-1",
                defendant=DEFENDANT,
                challenger=CHALLENGER,
                claim=kept.claim.to_text(),
                receipt={},
                model="sha256:" + "0" * 64,
                mode="bitwise",
                policy="none",
                inputs={},
                parties={},
                reveals=[],
                created_at=0.0,
                lease_until=9e18,
            )
        )
    balance = book.state().account(CHALLENGER).balance
    svc = DisputeService(
        key=generate_key(),
        http=httpx.AsyncClient(),
        load_model=lambda _: model,
        book=book,
        store=store,
    )
    closed = asyncio.run(svc.void_abandoned(older_than=3600))
    assert closed == ["old"]
    state = book.state()
    assert set(state.open_disputes) == {"new", "kept"}
    assert state.account(CHALLENGER).balance == balance + 10
    assert state.account(DEFENDANT).slashes == 0


# -- busy nodes ------------------------------------------------------------------------------------


class TraceNode:
    """A node's trace endpoints over an in-memory transport, serving ``trace``. ``busy``: how
    many times each query is answered 503 before it is answered (``None``: always 503);
    ``gone``: every query is 404 (the node lost its trace)."""

    def __init__(self, trace: Trace, *, busy: int | None = 0, gone: bool = False) -> None:
        self.trace = trace
        self.busy = busy
        self.gone = gone
        self.seen: dict[str, int] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        self.seen[path] = self.seen.get(path, 0) + 1
        if self.busy is None or self.seen[path] <= self.busy:
            return httpx.Response(503, headers={"Retry-After": "0"}, json={"status": 503})
        if self.gone:
            return httpx.Response(404, json={"status": 404})
        _, _, _, _, what, rest = path.split("/", 5)
        if what == "entries":
            index = int(rest)
            proof = [h.hex() for h in self.trace.inclusion_proof(index)]
            return httpx.Response(
                200,
                json={
                    "root": self.trace.root.to_text(),
                    "size": self.trace.size,
                    "index": index,
                    "entry": self.trace.entries[index].to_json(),
                    "proof": proof,
                },
            )
        assert self.trace.tensors is not None
        return httpx.Response(200, json=tensor_to_json(self.trace.tensors[rest], force_b64=True))

    def party(self, model: onnx.ModelProto, digest: Digest, inputs: dict[str, Array]) -> NodeParty:
        node = Candidate(
            node_id=DEFENDANT,
            operator=DEFENDANT,
            endpoint="http://defendant.test",
            public_key=DEFENDANT_KEY.public.to_pem().decode(),
            log_index=0,
            last_seen=0.0,
        )
        spec = JobSpec(
            request_id="req-1",
            model=digest,
            input_digests={n: tensor_digest(a) for n, a in inputs.items()},
            inputs_json={n: tensor_to_json(a) for n, a in inputs.items()},
            policy="none",
        )
        http = httpx.AsyncClient(transport=httpx.MockTransport(self.handler))
        return NodeParty(
            http=http,
            key=generate_key(),
            node=node,
            spec=spec,
            outputs=outputs_of(self.trace, model),
            trace=self.trace.commitment,
        )


def test_a_busy_node_is_asked_again_until_it_answers(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
) -> None:
    _, good = honest
    node = TraceNode(good, busy=3)
    entry, proof = asyncio.run(node.party(model, digest, inputs).reveal(2, 5.0))
    assert entry == good.entries[2]
    assert proof == good.inclusion_proof(2)
    assert node.seen["/v1/traces/req-1/entries/2"] == 4


def test_only_a_node_that_never_answers_in_time_loses_and_a_lost_trace_is_no_answer(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
) -> None:
    _, good = honest
    always_busy = TraceNode(good, busy=None)
    with pytest.raises(PartyFaultError) as late:
        asyncio.run(always_busy.party(model, digest, inputs).reveal(0, 0.5))
    assert late.value.reason == "timeout"
    assert always_busy.seen["/v1/traces/req-1/entries/0"] > 1
    with pytest.raises(PartyFaultError) as lost:
        asyncio.run(TraceNode(good, gone=True).party(model, digest, inputs).reveal(0, 5.0))
    assert lost.value.reason == "invalid-proof"


def test_an_honest_node_that_is_busy_at_every_move_still_wins(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    node = TraceNode(good, busy=2)
    run = dispute(
        service(model, book),
        node.party(model, digest, inputs),
        as_challenger(bad, outputs_of(bad, model)),
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "referee"
    assert book.state().stake_of(DEFENDANT_OP.key_id) == STAKE
    assert all(count == 3 for count in node.seen.values())


# -- double faults ---------------------------------------------------------------------------------


def test_when_both_parties_miss_a_move_the_defendant_is_not_slashed(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    run = dispute(
        service(model, book, timeout=0.2),
        TraceParty(DEFENDANT, good, outputs_of(good, model), silent=True),
        as_challenger(bad, outputs_of(bad, model), silent=True),
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "timeout"
    state = book.state()
    assert state.stake_of(DEFENDANT_OP.key_id) == STAKE
    assert state.account(DEFENDANT).slashes == 0
    assert state.stake_of(CHALLENGER_OP.key_id) == STAKE // 2


def test_when_neither_party_produces_the_agreed_tensors_the_defendant_is_not_slashed(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)  # found at the last operator, whose input is intermediate
    run = dispute(
        service(model, book),
        TraceParty(DEFENDANT, bad, outputs_of(bad, model), no_tensors=True),
        as_challenger(good, outputs_of(good, model), no_tensors=True),
        receipt=receipt,
        digest=digest,
        inputs=inputs,
    )
    assert run.winner == "defendant"
    assert run.result is not None
    assert run.result["reason"] == "invalid-proof"
    assert book.state().account(DEFENDANT).slashes == 0


# -- one dispute per claim -------------------------------------------------------------------------


def test_a_receipt_is_disputed_once_per_claim(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
    log: Log,
) -> None:
    _, good = honest
    bad = wrong_output(model, good)
    svc = service(model, book)

    def parties() -> tuple[TraceParty, TraceParty]:
        return (
            TraceParty(DEFENDANT, good, outputs_of(good, model)),
            as_challenger(bad, outputs_of(bad, model)),
        )

    first = dispute(svc, *parties(), receipt=receipt, digest=digest, inputs=inputs)
    assert first.winner == "defendant"
    size = log.size
    defendant, challenger = parties()
    with pytest.raises(ConflictError, match="already disputed"):
        dispute(svc, defendant, challenger, receipt=receipt, digest=digest, inputs=inputs)
    assert log.size == size
    assert defendant.asked == challenger.asked == []  # refused before any move


# -- persistence -----------------------------------------------------------------------------------


class Tensors(dict[Digest, Array]):
    """The coordinator's tensor store, in memory."""

    def put(self, arrays: Mapping[str, Array]) -> None:
        for array in arrays.values():
            self[tensor_digest(array)] = array


def stored_service(
    model: onnx.ModelProto,
    book: LedgerBook,
    store: DisputeStore,
    tensors: Tensors,
    http: httpx.AsyncClient | None = None,
) -> DisputeService:
    return DisputeService(
        key=generate_key(),
        http=http or httpx.AsyncClient(),
        load_model=lambda _: model,
        book=book,
        load_tensor=tensors.__getitem__,
        store_tensors=tensors.put,
        store=store,
        options=DisputeOptions(timeout=5.0, job_timeout=5.0),
    )


async def answer(svc: DisputeService, run: DisputeRun, trace: Trace, moves: int | None) -> int:
    """Play the remote challenger's moves from ``trace``: ``moves`` of them, or to the end."""
    played = 0
    while run.status == "open" and (moves is None or played < moves):
        query = run.to_json()["query"]
        if query is None:
            await asyncio.sleep(0.01)
            continue
        if "index" in query:
            i = query["index"]
            body = {
                "index": i,
                "entry": trace.entries[i].to_json(),
                "proof": [h.hex() for h in trace.inclusion_proof(i)],
            }
            await svc.submit(run, reveal=body)
        else:
            assert trace.tensors is not None
            await svc.submit(run, tensors={n: trace.tensors[n] for n in query["tensors"]})
        played += 1
        assert played < 64
    return played


def test_an_open_dispute_resumes_in_another_process_from_its_recorded_moves(
    model: onnx.ModelProto,
    digest: Digest,
    inputs: dict[str, Array],
    honest: tuple[dict[str, Array], Trace],
    receipt: Envelope,
    book: LedgerBook,
    log: Log,
    tmp_path: Path,
) -> None:
    """A coordinator stops mid-dispute; another (same database, same log) resumes it: the
    bisection replayed from the stored reveals, the node reached again, the remote challenger
    asked its pending move again with a fresh deadline. It settles once, and its row goes."""
    _, good = honest
    cheat = substitute(model, digest, inputs)  # found at the first operator: several rounds
    engine = db.open_engine(f"sqlite:///{tmp_path}/state.db")
    tensors = Tensors()
    node = TraceNode(cheat)

    async def before_the_restart() -> tuple[str, list[Any]]:
        svc = stored_service(model, book, DisputeStore(engine, owner="first", lease=60), tensors)
        remote = RemoteParty(Claim(WATCHER, outputs_of(good, model), good.commitment))
        run = await svc.open(
            inference="req-1",
            defendant=node.party(model, digest, inputs),
            challenger=remote,
            receipt=receipt,
            mode="bitwise",
            model=digest,
            inputs=inputs,
            bond=0,
            authorization=signed_in(),
        )
        await answer(svc, run, good, moves=2)
        await asyncio.sleep(0.05)
        asked = run.to_json()["query"]
        await svc.aclose()  # the coordinator stops: leases given up, the row stays
        with engine.connect() as conn:
            row = conn.execute(db.disputes.select()).one()
        assert row.move == asked
        assert row.opened == run.opened
        return run.id, row.reveals

    dispute_id, reveals = asyncio.run(before_the_restart())
    assert len(reveals) == 2
    assert set(book.state().open_disputes) == {dispute_id}

    async def after_the_restart() -> DisputeRun:
        # No node list: the node is reached again at the endpoint the row stored.
        http = httpx.AsyncClient(transport=httpx.MockTransport(node.handler))
        store = DisputeStore(engine, owner="second", lease=60)
        svc = stored_service(model, book, store, tensors, http)
        assert await svc.resume() == [dispute_id]
        assert await svc.resume() == []  # claimed once
        run = svc.get(dispute_id)
        assert [r[0] for r in run.reveals] == [r[0] for r in reveals]
        await answer(svc, run, good, moves=None)
        await asyncio.wait_for(run.settled.wait(), 30)
        return run

    run = asyncio.run(after_the_restart())
    assert run.winner == "challenger"
    assert run.rounds > len(reveals)
    entries = logged(log)
    assert [type(e) for e in entries].count(ChallengeEntry) == 1
    assert [type(e) for e in entries].count(DisputeVerdictEntry) == 1
    assert not book.state().open_disputes
    with engine.connect() as conn:
        assert conn.execute(db.disputes.select()).all() == []
