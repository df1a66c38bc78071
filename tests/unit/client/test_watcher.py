"""The watcher: sampling, following a verified log across runs, and checking one inference.

Logs here are static tile trees on disk (what the coordinator serves under ``/log/``), signed
by a test log key; the coordinator's tensor route is an in-process app; models come from the
watcher's cache, so nothing needs a network.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.responses import Response

from _servers import serve
from veriml.client import Client
from veriml.client._watch import Watcher
from veriml.client._watch_report import CheckedInference, WatchState, WatchSummary
from veriml.core.errors import FormatError, LogInconsistencyError
from veriml.core.keys import generate_key
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest
from veriml.ledger.entries import InferenceEntry
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import Runner
from veriml.tlog.checkpoint import Checkpoint, sign_checkpoint
from veriml.tlog.client import LogClient
from veriml.tlog.merkle import leaf_hash, root_from_leaf_hashes
from veriml.tlog.note import NoteSigner, NoteVerifier
from veriml.tlog.tiles import build_tiles
from veriml.verify.policy import Verdict

ORIGIN = "watch.test/log"
SIGNER = NoteSigner(ORIGIN, generate_key())
VERIFIER = NoteVerifier.from_vkey(SIGNER.vkey)
NODE_KEY = generate_key("ed25519")
X = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)


def publish(folder: Path, entries: Sequence[bytes]) -> Path:
    """A static tile tree of ``entries`` with a checkpoint signed by the test log key."""
    shutil.rmtree(folder, ignore_errors=True)
    for path, data in build_tiles(list(entries)).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    root = root_from_leaf_hashes([leaf_hash(e) for e in entries])
    (folder / "checkpoint").write_bytes(
        sign_checkpoint(Checkpoint(ORIGIN, len(entries), root), [SIGNER])
    )
    return folder


@dataclass(frozen=True)
class Model:
    package: ModelPackage
    runner: Runner


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Model:
    folder = write_example_folder(
        tmp_path_factory.mktemp("model") / "mlp", build_mlp((4, 8, 3), seed=3), name="mlp"
    )
    package = ModelPackage.load(folder)
    return Model(package, Runner.for_package(package))


def inference(model: Model, request_id: str, *, runner: Runner | None = None) -> InferenceEntry:
    """A logged inference of ``model`` on X answered by NODE_KEY's node with ``runner``."""
    result = (runner or model.runner).run({"x": X}, key=NODE_KEY, request_id=request_id)
    outputs = {n: tensor_digest(a) for n, a in result.outputs.items()}
    return InferenceEntry(
        request_id=request_id,
        request_digest=result.predicate.request_digest,
        model=model.package.digest,
        policy="none",
        receipts=(result.receipt,),
        verdict=Verdict("none", "accepted", (NODE_KEY.key_id,), outputs),
        # Watchers check what requesters made public (docs/privacy.md).
        extra={"visibility": "public"},
    )


def log_entries(model: Model, count: int) -> list[bytes]:
    """``count`` entries: every third one a model-like entry, the others inferences."""
    template = inference(model, "template")
    out: list[bytes] = []
    for i in range(count):
        if i % 3 == 0:
            out.append(b'{"type":"model","name":"m%d"}' % i)
        else:
            out.append(replace(template, request_id=f"r{i}").to_bytes())
    return out


class Recording(Watcher):
    """A watcher whose check records what it was given (the log-following logic under test)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.checked_indexes: list[int] = []

    def check(
        self, entry: InferenceEntry, *, index: int | None = None, node: str | None = None
    ) -> CheckedInference:
        assert index is not None
        self.checked_indexes.append(index)
        return CheckedInference(entry.request_id, entry.model.to_text(), "match", index=index)


@pytest.fixture
def client() -> Iterator[Client]:
    with Client("http://127.0.0.1:9", verify=False) as client:
        yield client


def recording(client: Client, log: Path, **kwargs: Any) -> Recording:
    return Recording(client, log=LogClient(str(log), VERIFIER), **kwargs)


# -- sampling ---------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.02, 0.3, 0.9])
def test_the_sampled_fraction_is_p_within_four_standard_deviations(
    client: Client, tmp_path: Path, p: float
) -> None:
    n = 20_000
    watcher = recording(client, tmp_path, sample=p, seed=11)
    hits = sum(watcher.sampled() for _ in range(n))
    assert abs(hits - n * p) <= 4 * math.sqrt(n * p * (1 - p))


def test_a_seed_makes_the_draws_reproducible_and_no_seed_uses_the_system_csprng(
    client: Client, tmp_path: Path
) -> None:
    a, b, c = (recording(client, tmp_path, sample=0.5, seed=s) for s in (1, 1, 2))
    draws = [[w.sampled() for _ in range(200)] for w in (a, b, c)]
    assert draws[0] == draws[1] != draws[2]
    unseeded = recording(client, tmp_path, sample=0.5)
    assert type(unseeded._rng).__name__ == "SystemRandom"
    hits = sum(unseeded.sampled() for _ in range(4000))
    assert abs(hits - 2000) <= 4 * math.sqrt(1000)


def test_rates_zero_and_one_never_and_always_sample(client: Client, tmp_path: Path) -> None:
    never, always = (recording(client, tmp_path, sample=p) for p in (0.0, 1.0))
    assert not any(never.sampled() for _ in range(1000))
    assert all(always.sampled() for _ in range(1000))
    with pytest.raises(FormatError, match="probability"):
        recording(client, tmp_path, sample=1.5)


# -- following the log -------------------------------------------------------------------------


def test_every_inference_entry_is_checked_once_in_log_order_across_bundles(
    client: Client, model: Model, tmp_path: Path
) -> None:
    entries = log_entries(model, 300)  # two entry bundles: 256 + a partial 44
    log = publish(tmp_path / "log", entries)
    watcher = recording(client, log, sample=1.0)
    checked = watcher.poll()
    expected = [i for i in range(300) if i % 3]
    assert watcher.checked_indexes == expected
    assert [c.index for c in checked] == expected
    assert watcher.summary.to_json()["checked"] == len(expected)
    assert watcher.summary.position == 300
    assert watcher.poll() == []  # nothing new


def test_a_malformed_inference_entry_is_reported_and_the_watcher_goes_on(
    client: Client, model: Model, tmp_path: Path
) -> None:
    good = log_entries(model, 2)[1]
    bad = b'{"type":"inference","request":{"id":"bad"}}'
    watcher = recording(client, publish(tmp_path / "log", [bad, good]), sample=1.0)
    first, second = watcher.poll()
    assert (first.index, first.id, first.result) == (0, "bad", "error")
    assert "malformed inference entry" in first.detail
    assert (second.index, second.result) == (1, "match")
    assert watcher.summary.position == 2


def test_the_state_file_resumes_where_the_last_run_stopped(
    client: Client, model: Model, tmp_path: Path
) -> None:
    entries = log_entries(model, 40)
    state = tmp_path / "watch.json"
    first = recording(client, publish(tmp_path / "log", entries[:25]), sample=1.0, state=state)
    first.poll()
    assert WatchState.load(state).position == 25
    second = recording(client, publish(tmp_path / "log", entries), sample=1.0, state=state)
    second.poll()
    assert second.checked_indexes == [i for i in range(25, 40) if i % 3]
    assert WatchState.load(state).checkpoint == Checkpoint(
        ORIGIN, 40, root_from_leaf_hashes([leaf_hash(e) for e in entries])
    )


@pytest.mark.parametrize("change", ["fork", "shrink"])
def test_a_log_that_forked_or_shrank_since_the_last_run_is_refused(
    client: Client, model: Model, tmp_path: Path, change: str
) -> None:
    entries = log_entries(model, 30)
    state = tmp_path / "watch.json"
    recording(client, publish(tmp_path / "log", entries[:20]), sample=1.0, state=state).poll()
    if change == "fork":
        later = [*entries[:5], b'{"type":"model","name":"rewritten"}', *entries[6:]]
    else:
        later = entries[:10]
    watcher = recording(client, publish(tmp_path / "log", later), sample=1.0, state=state)
    with pytest.raises(LogInconsistencyError):
        watcher.poll()
    assert watcher.checked_indexes == []
    assert WatchState.load(state).position == 20  # the state is kept, not overwritten


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ({"format": "other", "position": 0}, "format"),
        ({"format": "veriml-watch/v1", "position": -1}, "non-negative"),
        ({"format": "veriml-watch/v1", "position": 0, "checkpoint": 7}, "checkpoint text"),
    ],
)
def test_malformed_watch_states_are_refused(state: dict[str, Any], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        WatchState.from_json(state)


def test_the_summary_counts_results_and_dispute_outcomes() -> None:
    summary = WatchSummary()
    for result, winner in [
        ("match", None),
        ("mismatch", "challenger"),
        ("mismatch", "defendant"),
        ("mismatch", "none"),
        ("error", None),
        ("skipped", None),
    ]:
        dispute = None if winner is None else f"d-{winner}"
        summary.add(CheckedInference("r", "m", result, dispute=dispute, winner=winner))  # type: ignore[arg-type]
    assert summary.to_json() | {"position": 0} == {
        "sampled": 0,
        "checked": 4,
        "matched": 1,
        "mismatched": 3,
        "skipped": 1,
        "errors": 1,
        "disputes": {"opened": 3, "won": 1, "lost": 1},
        "position": 0,
    }


# -- checking one inference --------------------------------------------------------------------


@pytest.fixture
def tensor_client(model: Model) -> Iterator[Client]:
    """A client of a coordinator that serves X by its digest (and nothing else)."""
    app = FastAPI()
    stored = {tensor_digest(X).to_text(): canonical_tensor_bytes(X)}

    @app.get("/v1/inferences/{inference}/tensors/{digest}")
    def tensor(inference: str, digest: str) -> Response:
        if digest not in stored:
            return Response(b'{"title":"no such tensor"}', status_code=404)
        return Response(stored[digest], media_type="application/vnd.veriml.tensor")

    with serve(app) as url, Client(url, verify=False) as client:
        yield client


@pytest.fixture
def cached(model: Model, tmp_path: Path) -> Path:
    """A watcher model cache that already holds the model (as a previous pull left it)."""
    cache = tmp_path / "cache"
    shutil.copytree(model.package.path, cache / model.package.digest.hex)
    return cache


def test_an_honest_answer_matches(tensor_client: Client, model: Model, cached: Path) -> None:
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    checked = watcher.check(inference(model, "honest"), index=4)
    assert (checked.result, checked.node, checked.index) == ("match", NODE_KEY.key_id, 4)


def test_a_private_request_is_skipped_without_asking_for_its_inputs(
    tensor_client: Client, model: Model, cached: Path
) -> None:
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    private = replace(inference(model, "private"), extra={})
    checked = watcher.check(private)
    assert checked.result == "skipped"
    assert "private" in checked.detail


def test_a_wrong_answer_is_a_mismatch_reported_without_a_key(
    tensor_client: Client, model: Model, cached: Path
) -> None:
    other = build_mlp((4, 8, 3), seed=4)  # other weights, claimed as the real model
    cheat = Runner(other, digest=model.package.digest, files_digest=model.package.files_digest)
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    checked = watcher.check(inference(model, "cheat", runner=cheat))
    assert checked.result == "mismatch"
    assert checked.dispute is None
    assert "no signing key" in checked.detail


def test_an_input_the_coordinator_does_not_serve_is_an_error_not_a_verdict(
    tensor_client: Client, model: Model, cached: Path
) -> None:
    entry = inference(model, "honest")
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    result = model.runner.run({"x": X + 1}, key=NODE_KEY, request_id="other-input")
    checked = watcher.check(replace(entry, receipts=(result.receipt,)))
    assert checked.result == "error"
    assert "no such tensor" in checked.detail


def test_a_rejected_answer_is_skipped(tensor_client: Client, model: Model, cached: Path) -> None:
    entry = inference(model, "rejected")
    rejected = replace(entry, verdict=Verdict("quorum:2/2", "rejected", ()))
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    assert watcher.check(rejected).result == "skipped"


def test_a_node_without_a_receipt_in_the_entry_cannot_be_checked(
    tensor_client: Client, model: Model, cached: Path
) -> None:
    entry = inference(model, "honest")
    watcher = Watcher(tensor_client, sample=1.0, cache_dir=cached, log=LogClient("/", VERIFIER))
    checked = watcher.check(entry, node="someone-else")
    assert checked.result == "error"
    assert "no receipt from that node" in checked.detail
