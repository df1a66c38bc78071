"""A node's retries of the coordinator are jittered and bounded (issue 11 §5): after a
coordinator restart every node finds it gone at once, and nodes that waited alike would come
back in lockstep. The random source is injected, so the waits are known and checked."""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import veriml.node._coordinator as link_module
from _servers import serve
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key
from veriml.node._coordinator import HEARTBEAT_JITTER, CoordinatorLink, jittered_waits
from veriml.protocol.accounts import OperatorBinding


class Recording(random.Random):
    """A seeded random source that remembers every draw."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.draws: list[tuple[float, float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        value = super().uniform(a, b)
        self.draws.append((a, b, value))
        return value


def test_every_wait_is_within_start_and_cap() -> None:
    waits = jittered_waits(0.25, 30.0, rng=random.Random(1))
    drawn = [next(waits) for _ in range(500)]
    assert all(0.25 <= w <= 30.0 for w in drawn)
    assert max(drawn) == 30.0  # it does reach the cap ...
    assert len({round(w, 6) for w in drawn[20:]}) > 100  # ... and keeps drawing below it


def test_the_waits_grow_on_average() -> None:
    runs = [jittered_waits(0.25, 1000.0, rng=random.Random(seed)) for seed in range(300)]
    table = [[next(run) for _ in range(6)] for run in runs]
    means = [statistics.mean(column) for column in zip(*table, strict=True)]
    assert means == sorted(means)
    assert means[-1] > 8 * means[0]


def test_nodes_that_start_retrying_together_drift_apart() -> None:
    # 100 nodes that lost the coordinator at the same instant: when they come back.
    comebacks = []
    for seed in range(100):
        waits = jittered_waits(0.25, 30.0, rng=random.Random(seed))
        comebacks.append(sum(next(waits) for _ in range(5)))
    # The schedule without jitter (0.25 s doubling) brings all of them back at 7.75 s.
    assert statistics.pstdev(comebacks) > 2.0
    assert len({round(t, 3) for t in comebacks}) == 100


def test_one_seed_gives_one_schedule() -> None:
    first = jittered_waits(rng=random.Random(7))
    second = jittered_waits(rng=random.Random(7))
    assert [next(first) for _ in range(10)] == [next(second) for _ in range(10)]


def test_a_backoff_needs_a_positive_start_below_its_cap() -> None:
    for start, cap in ((0, 1), (2, 1), (-1, 1)):
        with pytest.raises(FormatError):
            next(jittered_waits(start, cap, rng=random.Random()))


def _link(url: str, client: httpx.AsyncClient, rng: random.Random) -> CoordinatorLink:
    key, operator = generate_key("ed25519"), generate_key("ed25519")
    return CoordinatorLink(
        url=url,
        key=key,
        binding=OperatorBinding.of(operator, key.key_id).sign(operator),
        endpoint="http://127.0.0.1:9",
        client=client,
        status=lambda: ({"active": 0, "queued": 0, "capacity": 1}, []),
        heartbeat_interval=10.0,
        rng=rng,
    )


def test_registration_retries_after_the_jittered_waits_until_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(link_module, "BACKOFF_START", 0.02)
    monkeypatch.setattr(link_module, "BACKOFF_MAX", 0.1)
    app = FastAPI()
    seen: list[float] = []

    @app.post("/v1/nodes")
    async def register(request: Request) -> Any:
        await request.body()
        seen.append(time.monotonic())
        if len(seen) <= 4:
            return JSONResponse({"detail": "restarting"}, status_code=503)
        return JSONResponse({"log_index": 3}, status_code=201)

    rng = Recording(11)

    async def main() -> None:
        async with httpx.AsyncClient() as client:
            link = _link(url, client, rng)
            await asyncio.wait_for(link.register(), 10)
            assert link.log_index == 3

    with serve(app) as url:
        asyncio.run(main())
    # Four refusals, four waits, each drawn from the injected source within its bounds.
    assert len(seen) == 5
    assert len(rng.draws) == 4
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    previous = 0.02
    for (low, high, drawn), gap in zip(rng.draws, gaps, strict=True):
        wait = min(0.1, drawn)
        assert (low, high) == (0.02, previous * 3)  # up to thrice the wait before
        assert gap >= wait - 0.005  # and the link did wait that long
        previous = wait


def test_heartbeats_come_up_to_a_fifth_early_and_never_late() -> None:
    link = _link("http://127.0.0.1:9", None, random.Random(3))  # type: ignore[arg-type]
    waits = [link.heartbeat_wait() for _ in range(1000)]
    assert all(10.0 * (1 - HEARTBEAT_JITTER) <= w <= 10.0 for w in waits)
    assert max(waits) - min(waits) > 1.5
