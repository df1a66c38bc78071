"""The node's trace reveals (docs/verification.md, "Service"): every entry comes with an
RFC 9162 proof against the root the receipt signed, every kept tensor hashes to its entry,
a re-traced request replaces its trace, traces outlive a restart for their challenge window,
a busy node still runs retraces and serves reveals, and the job path runs with the configured
threads and byzantine behaviour."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from _node_harness import (
    HubStandIn,
    SignedModel,
    inputs_for,
    job_body,
    make_signed_model,
    node_config,
    running_node,
    wait_until,
)

from _servers import serve
from _traces import read_trace
from veriml.core.keys import SigningKey, generate_key
from veriml.core.tensors import tensor_digest, tensor_from_json
from veriml.core.timestamps import format_time
from veriml.runtime import RunResult, TraceEntry
from veriml.tlog.merkle import leaf_hash, verify_inclusion


@pytest.fixture
def node(tmp_path: Path, hub_url: str, coordinator_pub: Path) -> Iterator[tuple[str, str]]:
    with running_node(node_config(tmp_path / "node", hub_url, coordinator_pub)) as url:
        yield url, httpx.get(f"{url}/v1/info").json()["node_id"]


def _traced(
    url: str,
    node_id: str,
    coordinator_key: SigningKey,
    model: SignedModel,
    request_id: str,
    seed: int = 1,
    *,
    trace: bool = True,
    retain_until: str | None = None,
) -> RunResult:
    body = job_body(
        coordinator_key,
        node_id,
        model.digest,
        inputs_for(seed),
        trace=trace,
        request_id=request_id,
        retain_until=retain_until,
    )
    response = httpx.post(f"{url}/v1/jobs", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return RunResult.from_json(response.json())


def _reveal(key: SigningKey, url: str, request_id: str, index: int | str) -> httpx.Response:
    return read_trace(key, f"{url}/v1/traces/{request_id}/entries/{index}")


def _check_reveal(key: SigningKey, url: str, result: RunResult, index: int) -> TraceEntry:
    """Entry ``index`` as the coordinator checks it: proven against the receipt's root."""
    commitment = result.predicate.trace
    assert commitment is not None
    response = _reveal(key, url, result.predicate.request_id, index)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["root"] == commitment.root.to_text()
    assert (body["size"], body["index"]) == (commitment.size, index)
    entry = TraceEntry.from_json(body["entry"])
    proof = [bytes.fromhex(h) for h in body["proof"]]
    verify_inclusion(
        leaf_hash(entry.digest.raw), index, commitment.size, proof, commitment.root.raw
    )
    return entry


def _problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return dict(response.json())


def test_every_entry_is_proven_against_the_receipt_root_and_every_tensor_matches_it(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    result = _traced(url, node_id, coordinator_key, signed_model, "r-1")
    assert result.trace is not None
    for index in range(result.trace.size):
        entry = _check_reveal(coordinator_key, url, result, index)
        assert entry == result.trace.entries[index]
        kept = read_trace(coordinator_key, f"{url}/v1/traces/r-1/tensors/{entry.output}")
        assert kept.status_code == 200, kept.text
        assert "b64" in kept.json()
        assert tensor_digest(tensor_from_json(kept.json())) == entry.digest
    graph_input = read_trace(coordinator_key, f"{url}/v1/traces/r-1/tensors/x")
    assert tensor_digest(tensor_from_json(graph_input.json())) == result.predicate.inputs["x"]


def test_only_the_coordinator_the_node_trusts_reads_its_traces(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    # docs/privacy.md: a trace holds a request's intermediate tensors.
    url, node_id = node
    _traced(url, node_id, coordinator_key, signed_model, "r-private")
    for path in ("r-private", "r-private/entries/0", "r-private/tensors/x"):
        where = f"{url}/v1/traces/{path}"
        assert _problem(httpx.get(where), 403)["check"] == "access"
        assert _problem(read_trace(generate_key(), where), 403)["check"] == "access"
        assert read_trace(coordinator_key, where).status_code == 200


def test_unknown_requests_and_names_are_404_and_bad_indices_400(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    result = _traced(url, node_id, coordinator_key, signed_model, "r-2")
    assert result.trace is not None
    _problem(_reveal(coordinator_key, url, "no-such-request", 0), 404)
    _problem(read_trace(coordinator_key, f"{url}/v1/traces/no-such-request/tensors/x"), 404)
    missing = _problem(
        read_trace(coordinator_key, f"{url}/v1/traces/r-2/tensors/no/such/tensor"), 404
    )
    assert missing["name"] == "no/such/tensor"
    out_of_range = _problem(_reveal(coordinator_key, url, "r-2", result.trace.size), 400)
    assert out_of_range["size"] == result.trace.size
    for bad in ("-1", "one", "1.5", "99999999999999999999"):
        _problem(_reveal(coordinator_key, url, "r-2", bad), 400)
    # An untraced job keeps nothing to reveal.
    _traced(url, node_id, coordinator_key, signed_model, "r-3", trace=False)
    _problem(_reveal(coordinator_key, url, "r-3", 0), 404)


def test_a_later_traced_job_for_the_same_request_replaces_the_trace(
    node: tuple[str, str], coordinator_key: SigningKey, signed_model: SignedModel
) -> None:
    url, node_id = node
    first = _traced(url, node_id, coordinator_key, signed_model, "r-4", seed=1)
    again = _traced(url, node_id, coordinator_key, signed_model, "r-4", seed=2)
    assert first.predicate.trace is not None
    assert again.predicate.trace is not None
    assert first.predicate.trace.root != again.predicate.trace.root
    _check_reveal(coordinator_key, url, again, 0)
    body = _reveal(coordinator_key, url, "r-4", 0).json()
    assert body["root"] == again.predicate.trace.root.to_text()


def test_the_thread_count_is_recorded_in_every_receipt(
    tmp_path: Path,
    hub_url: str,
    coordinator_pub: Path,
    coordinator_key: SigningKey,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, threads=2)
    with running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        result = _traced(url, node_id, coordinator_key, signed_model, "r-5", trace=False)
    assert result.predicate.runtime["intra_op_threads"] == 2
    assert result.predicate.runtime["inter_op_threads"] == 1


def test_a_byzantine_node_warns_at_start_and_reveals_a_trace_consistent_with_its_lie(
    tmp_path: Path,
    hub_url: str,
    coordinator_pub: Path,
    coordinator_key: SigningKey,
    signed_model: SignedModel,
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, byzantine="wrong-output")
    with caplog.at_level(logging.WARNING, logger="veriml.node"), running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        lie = _traced(url, node_id, coordinator_key, signed_model, "r-6")
        assert lie.trace is not None
        last = lie.trace.size - 1
        entry = _check_reveal(coordinator_key, url, lie, last)
        (name,) = lie.outputs
        assert entry.output == name
        assert entry.digest == tensor_digest(lie.outputs[name])
        kept = read_trace(coordinator_key, f"{url}/v1/traces/r-6/tensors/{name}").json()
        assert tensor_digest(tensor_from_json(kept)) == entry.digest
    assert any(
        "BYZANTINE" in r.getMessage() and "wrong-output" in r.getMessage() for r in caplog.records
    )


def _in(seconds: float) -> str:
    return format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))


def test_a_trace_outlives_a_node_restart_for_its_challenge_window(
    tmp_path: Path,
    hub_url: str,
    coordinator_pub: Path,
    coordinator_key: SigningKey,
    signed_model: SignedModel,
) -> None:
    """The job's ``retain_until`` (the answer's challenge window), not the node's short
    default, decides how long the trace is kept, and a restart does not lose it."""
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, trace_retention=1)
    with running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        result = _traced(
            url, node_id, coordinator_key, signed_model, "r-kept", retain_until=_in(86_400)
        )
        _traced(url, node_id, coordinator_key, signed_model, "r-default")
    assert result.trace is not None
    with running_node(config) as url:
        for index in range(result.trace.size):
            _check_reveal(coordinator_key, url, result, index)
        assert read_trace(coordinator_key, f"{url}/v1/traces/r-kept/tensors/x").status_code == 200
        assert httpx.get(f"{url}/healthz").json()["traces"] == 2


def test_a_job_asking_to_keep_its_trace_longer_than_the_node_does_is_refused(
    tmp_path: Path,
    hub_url: str,
    coordinator_pub: Path,
    coordinator_key: SigningKey,
    signed_model: SignedModel,
) -> None:
    config = node_config(tmp_path / "node", hub_url, coordinator_pub, max_retention=3600)
    with running_node(config) as url:
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        body = job_body(
            coordinator_key,
            node_id,
            signed_model.digest,
            inputs_for(1),
            trace=True,
            retain_until=_in(7200),
        )
        refused = _problem(httpx.post(f"{url}/v1/jobs", json=body, timeout=60), 422)
        assert refused["check"] == "job-retention"
        # The job id was not consumed: nothing ran, nothing is kept.
        assert httpx.get(f"{url}/healthz").json()["traces"] == 0


def test_a_node_whose_job_queue_is_full_still_runs_retraces_and_serves_reveals(
    tmp_path: Path,
    coordinator_pub: Path,
    coordinator_key: SigningKey,
    signed_model: SignedModel,
) -> None:
    """A busy node (503 to ordinary jobs) is not a loser: a retrace (a traced job for a
    request it answered) has its own lane, and reveals never wait behind jobs."""
    slow = make_signed_model(tmp_path / "slow", seed=5, name="slow")
    hub = HubStandIn(coordinator_key)
    hub.publish(signed_model)
    hub.publish(slow)
    config_args = {"concurrency": 1, "queue_length": 0}
    with (
        serve(hub.app()) as hub_url,
        running_node(
            node_config(tmp_path / "node", hub_url, coordinator_pub, **config_args)
        ) as url,
        ThreadPoolExecutor(1) as pool,
    ):
        node_id = httpx.get(f"{url}/v1/info").json()["node_id"]
        answered = _traced(url, node_id, coordinator_key, signed_model, "r-answered", trace=False)
        optimistic = _traced(url, node_id, coordinator_key, signed_model, "r-traced")
        # Fill the ordinary lane: a job whose model pull waits at the hub.
        hub.blob_gate = threading.Event()
        stuck = job_body(coordinator_key, node_id, slow.digest, inputs_for(2))
        pending = pool.submit(httpx.post, f"{url}/v1/jobs", json=stuck, timeout=60)
        wait_until(lambda: httpx.get(f"{url}/healthz").json()["load"]["queued"] == 1)
        ordinary = job_body(coordinator_key, node_id, signed_model.digest, inputs_for(3))
        busy = httpx.post(f"{url}/v1/jobs", json=ordinary, timeout=60)
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        # A fresh traced job (an optimistic request) is ordinary work: refused too.
        fresh = job_body(coordinator_key, node_id, signed_model.digest, inputs_for(3), trace=True)
        assert httpx.post(f"{url}/v1/jobs", json=fresh, timeout=60).status_code == 503
        # The retrace of the answered request runs, and the kept trace is served.
        retrace = _traced(url, node_id, coordinator_key, signed_model, "r-answered")
        assert retrace.outputs.keys() == answered.outputs.keys()
        assert retrace.trace is not None
        _check_reveal(coordinator_key, url, retrace, retrace.trace.size - 1)
        _check_reveal(coordinator_key, url, optimistic, 0)
        hub.blob_gate.set()
        assert pending.result().status_code == 200
