"""Node selection and the retry loop of the coordinator's scheduler."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

import pytest
from hypothesis import given
from hypothesis import strategies as st

from veriml.coordinator.scheduler import Candidate, gather, pick
from veriml.core.digest import Digest
from veriml.core.errors import ExecutionError, NodeUnavailable, SignatureError

MODEL = Digest.of(b"model")
OTHER = Digest.of(b"other model")
NOW = 1_000_000.0
LIVE = 15.0


def node(
    name: str,
    operator: str | None = None,
    *,
    active: int = 0,
    age: float = 0.0,
    cached: Collection[str] = (),
    models: tuple[str, ...] = ("*",),
) -> Candidate:
    return Candidate(
        node_id=f"sha256:{name}",
        operator=operator or f"op-{name}",
        endpoint=f"http://127.0.0.1/{name}",
        public_key="",
        log_index=0,
        last_seen=NOW - age,
        active=active,
        cached=frozenset(cached),
        models=models,
    )


def choose(nodes: list[Candidate], count: int, **kw: object) -> list[str]:
    chosen = pick(nodes, MODEL, count, now=NOW, live_within=LIVE, **kw)  # type: ignore[arg-type]
    return [c.node_id.removeprefix("sha256:") for c in chosen]


def test_stale_nodes_are_never_picked() -> None:
    assert choose([node("a", age=LIVE + 1), node("b", age=LIVE)], 2) == ["b"]


def test_nodes_that_do_not_serve_the_model_are_never_picked() -> None:
    nodes = [node("a", models=(OTHER.to_text(),)), node("b", models=(MODEL.to_text(),))]
    assert choose(nodes, 2) == ["b"]


def test_fewest_active_jobs_first_then_cached() -> None:
    nodes = [
        node("busy", active=3, cached=[MODEL.to_text()]),
        node("idle"),
        node("idle-cached", cached=[MODEL.to_text()]),
    ]
    assert choose(nodes, 3) == ["idle-cached", "idle", "busy"]


def test_jobs_in_flight_count_as_load() -> None:
    nodes = [node("a"), node("b", active=1)]
    assert choose(nodes, 1, inflight={"sha256:a": 2}) == ["b"]


def test_a_quorum_takes_one_node_per_operator() -> None:
    nodes = [node("a1", "acme"), node("a2", "acme"), node("b1", "bolt")]
    chosen = pick(nodes, MODEL, 3, now=NOW, live_within=LIVE)
    assert sorted(c.operator for c in chosen) == ["acme", "bolt"]


def test_equal_nodes_share_requests() -> None:
    nodes = [node(str(i)) for i in range(4)]
    firsts = {choose(nodes, 1, salt=f"request-{r}")[0] for r in range(64)}
    assert len(firsts) > 1


names = st.sampled_from([f"n{i}" for i in range(8)])
operators = st.sampled_from(["op-a", "op-b", "op-c", "op-d"])
nodes_strategy = st.lists(
    st.builds(
        lambda n, o, a, age: node(n, o, active=a, age=age),
        names,
        operators,
        st.integers(0, 5),
        st.floats(0, 2 * LIVE),
    ),
    unique_by=lambda c: c.node_id,
    max_size=8,
)


@given(nodes_strategy, st.integers(1, 6), st.sets(names), st.sets(operators), st.text(max_size=8))
def test_picks_never_repeat_an_operator_or_a_tried_node(
    nodes: list[Candidate], count: int, tried: set[str], busy: set[str], salt: str
) -> None:
    exclude = {f"sha256:{t}" for t in tried}
    chosen = pick(
        nodes,
        MODEL,
        count,
        now=NOW,
        live_within=LIVE,
        exclude_nodes=exclude,
        exclude_operators=busy,
        salt=salt,
    )
    ops = [c.operator for c in chosen]
    assert len(ops) == len(set(ops))
    assert not {c.node_id for c in chosen} & exclude
    assert not set(ops) & busy
    assert all(c.is_live(NOW, LIVE) for c in chosen)
    # As many as possible: every eligible operator not chosen means count was reached.
    eligible_ops = {
        c.operator
        for c in nodes
        if c.is_live(NOW, LIVE) and c.node_id not in exclude and c.operator not in busy
    }
    assert len(chosen) == min(count, len(eligible_ops))


# -- the retry loop ---------------------------------------------------------------------------


def run_gather(
    first: list[Candidate],
    spares: list[Candidate],
    behaviour: dict[str, BaseException | float],
    *,
    attempts: int = 3,
    timeout: float = 5.0,
) -> tuple[list[str], list[str], list[str]]:
    asked: list[str] = []

    async def attempt(c: Candidate) -> str:
        asked.append(c.node_id)
        outcome = behaviour.get(c.node_id, 0.0)
        if isinstance(outcome, BaseException):
            raise outcome
        await asyncio.sleep(outcome)
        return c.node_id

    def replace(tried: Collection[str], busy: Collection[str]) -> Candidate | None:
        for spare in spares:
            if spare.node_id not in tried and spare.operator not in busy:
                return spare
        return None

    result = asyncio.run(
        gather(first, attempt, replace, attempts_per_slot=attempts, timeout=timeout)
    )
    return (
        [a for _, a in result.answers],
        [f.node.node_id for f in result.failures],
        asked,
    )


def test_a_node_that_fails_is_replaced_by_a_spare() -> None:
    a, b, spare = node("a"), node("b"), node("s")
    down = NodeUnavailable("down")
    answers, failed, _ = run_gather([a, b], [spare], {a.node_id: down})
    assert sorted(answers) == sorted([b.node_id, spare.node_id])
    assert failed == [a.node_id]


def test_a_bad_receipt_is_retried_elsewhere() -> None:
    a, spare = node("a"), node("s")
    answers, _, _ = run_gather([a], [spare], {a.node_id: SignatureError("forged")})
    assert answers == [spare.node_id]


def test_a_replacement_never_shares_an_operator_with_a_running_slot() -> None:
    a, b = node("a", "acme"), node("b", "bolt")
    same_as_b = node("b2", "bolt")
    answers, _, asked = run_gather([a, b], [same_as_b], {a.node_id: NodeUnavailable("down")})
    assert answers == [b.node_id]
    assert same_as_b.node_id not in asked


def test_slots_stop_after_their_attempts() -> None:
    first = node("a")
    spares = [node(f"s{i}") for i in range(5)]
    everyone_down = {c.node_id: NodeUnavailable("down") for c in [first, *spares]}
    answers, failed, asked = run_gather([first], spares, everyone_down, attempts=3)
    assert answers == []
    assert len(asked) == 3 == len(failed)


def test_slow_nodes_are_cut_off_at_the_deadline() -> None:
    fast, slow = node("fast"), node("slow")
    answers, failed, _ = run_gather([fast, slow], [], {slow.node_id: 30.0}, timeout=0.3)
    assert answers == [fast.node_id]
    assert failed == [slow.node_id]


def test_a_non_retryable_error_ends_the_request() -> None:
    a, b, spare = node("a"), node("b"), node("s")
    rejected = ExecutionError("node refused the job")
    with pytest.raises(ExecutionError):
        run_gather([a, b], [spare], {a.node_id: rejected, b.node_id: 30.0})


def test_node_keys_are_parsed_once_and_retry_options_are_checked() -> None:
    from veriml.coordinator.scheduler import check_retry_options, node_key
    from veriml.core.errors import FormatError
    from veriml.core.keys import generate_key

    pem = generate_key("ed25519").public.to_pem().decode()
    assert node_key(pem) is node_key(pem)
    check_retry_options("inference", job_timeout=1.0, attempts_per_slot=1, live_within=1.0)
    with pytest.raises(FormatError, match="completion timeouts"):
        check_retry_options("completion", job_timeout=0.0, attempts_per_slot=1, live_within=1.0)
