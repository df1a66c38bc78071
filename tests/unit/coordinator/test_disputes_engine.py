"""The dispute engine on real traces: bisection to the first differing operator, the referee,
deadlines, proofs, and the ledger entries a verdict writes (checked by the real fold)."""

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

from veriml.coordinator.disputes import (
    Claim,
    DisputeOptions,
    DisputeRun,
    DisputeService,
    PartyFault,
    RemoteParty,
)
from veriml.coordinator.ledger import LedgerBook
from veriml.coordinator.settings import Settings
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import Conflict, FormatError
from veriml.core.keys import generate_key
from veriml.core.receipt import TraceCommitment
from veriml.core.timestamps import format_time, utc_now
from veriml.ledger.entries import (
    ChallengeEntry,
    DepositEntry,
    DisputeVerdictEntry,
    ReputationEntry,
    RewardEntry,
    SlashEntry,
    StakeEntry,
    parse_entry,
)
from veriml.models.examples import build_mlp
from veriml.runtime import Runner, Trace, TraceEntry, build_trace
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.verify.dispute import TraceLayout

Array = npt.NDArray[Any]
STAKE = 1000
DEFENDANT, CHALLENGER = "node-defendant", "node-challenger"


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
    ) -> None:
        self._claim = Claim(account, dict(outputs), trace.commitment, account)
        self.trace = trace
        self.silent = silent
        self.bad_proof = bad_proof
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
        return {n: self.trace.tensors[n] for n in names if n in self.trace.tensors}


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
    result = Runner(model, digest=digest).run(inputs, key=generate_key(), trace=True)
    return result.receipt


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    signer = NoteSigner("example.com/disputes", generate_key())
    options = LogOptions(batch_interval=0.0)
    with Log.open(f"sqlite:///{tmp_path}/log.db", signer, options=options) as opened:
        yield opened


@pytest.fixture
def book(log: Log, tmp_path: Path) -> LedgerBook:
    book = LedgerBook(log, Settings(home=tmp_path), refresh_ttl=0)
    at = utc_now()
    entries: list[Any] = []
    for account in (DEFENDANT, CHALLENGER):
        entries += [DepositEntry(account, STAKE, at), StakeEntry(account, STAKE, at)]
    asyncio.run(book.append(entries))
    return book


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
        )
        await asyncio.wait_for(run.settled.wait(), 30)
        return run

    return asyncio.run(main())


def logged(log: Log, start: int = 4) -> list[Any]:
    return [parse_entry(e) for e in log.entries(start, log.size)]


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
    challenger = TraceParty(CHALLENGER, good, outputs_of(good, model))
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
    assert run.ref().log_index == log.size - 5
    state = book.state()
    assert state.stake_of(DEFENDANT) == STAKE // 2
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
    challenger = TraceParty(CHALLENGER, good, outputs_of(good, model))
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
    challenger = TraceParty(CHALLENGER, bad, outputs_of(bad, model))
    run = dispute(
        service(model, book), defendant, challenger, receipt=receipt, digest=digest, inputs=inputs
    )

    assert run.winner == "defendant"
    slashes = [e for e in logged(log) if isinstance(e, SlashEntry)]
    assert [(s.account, s.amount, s.burned) for s in slashes] == [
        (CHALLENGER, STAKE // 2, STAKE // 2)
    ]
    assert not [e for e in logged(log) if isinstance(e, RewardEntry)]
    assert book.state().stake_of(DEFENDANT) == STAKE


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
        TraceParty(CHALLENGER, good, outputs),
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
    challenger = TraceParty(CHALLENGER, bad, outputs_of(bad, model))
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
    assert book.state().stake_of(DEFENDANT) == STAKE // 2


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
    challenger = TraceParty(CHALLENGER, good, outputs_of(good, model), bad_proof=True)
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
    challenger = TraceParty(CHALLENGER, good, outputs_of(good, model))
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
    challenger = TraceParty(CHALLENGER, short, outputs_of(wrong_output(model, good), model))
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
    remote = RemoteParty(Claim("watcher-key", outputs_of(good, model), good.commitment))

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
        )
        await asyncio.wait_for(remote.moved.wait(), 5)
        moves = 0
        while run.status == "open":
            query = run.to_json()["query"]
            assert query is not None
            assert run.to_json()["deadline"] is not None
            if "index" in query:
                i = query["index"]
                with pytest.raises(Conflict):  # another index than the one asked
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
    assert book.state().account("watcher-key").balance == STAKE // 4


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
    remote = RemoteParty(Claim("watcher-key", outputs_of(good, model), good.commitment))
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
    with pytest.raises(Conflict):
        asyncio.run(service(model, book).submit(run, reveal={"index": 0}))


def test_a_party_fault_names_its_reason() -> None:
    fault = PartyFault("late", reason="timeout", index=3)
    assert fault.reason == "timeout"
    assert fault.check == "dispute"
    assert "index" in fault.diagnostics()


def test_a_remote_challenger_must_commit_to_a_trace() -> None:
    with pytest.raises(FormatError):
        RemoteParty(Claim("watcher-key", {"y": Digest.of(b"y")}))


def test_disputes_a_restart_left_open_are_closed_without_a_winner_once_stale(
    model: onnx.ModelProto, book: LedgerBook
) -> None:
    """A challenge whose host is gone stays open in the fold with its bond locked until the
    sweeper closes it: winner none (nobody slashed), the bond back with the challenger; a
    recent one is left alone, since a live replica may be hosting it."""
    opened = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    trace = {"root": Digest.of(b"").to_text(), "size": 0}

    def challenge(dispute: str, at: dt.datetime) -> ChallengeEntry:
        return ChallengeEntry(
            dispute=dispute,
            inference="req-1",
            defendant={"node": DEFENDANT, "receipt": Digest.of(b"r").to_text(), "trace": trace},
            challenger={"account": CHALLENGER, "trace": trace, "outputs": {}},
            mode="bitwise",
            bond=10,
            deadline_seconds=5.0,
            at=format_time(at),
        )

    fund = DepositEntry(CHALLENGER, 20, utc_now())
    now = dt.datetime.now(dt.UTC)
    asyncio.run(book.append([fund, challenge("old", opened), challenge("new", now)]))
    balance = book.state().account(CHALLENGER).balance
    closed = asyncio.run(service(model, book).void_abandoned(older_than=3600))
    assert closed == ["old"]
    state = book.state()
    assert set(state.open_disputes) == {"new"}
    assert state.account(CHALLENGER).balance == balance + 10
    assert state.account(DEFENDANT).slashes == 0
