"""Watchers: follow the log, re-execute a random sample of inferences, dispute any mismatch
(docs/verification.md, "Watchers"; docs/watcher.md).

A :class:`Watcher` reads the coordinator's log through its tiles with
:class:`~veriml.tlog.client.LogClient`: every checkpoint is verified under the pinned log key,
every entry against the checkpoint's root, and each new checkpoint must extend the last one it
saw (RFC 9162 consistency, also across restarts through the state file). For every inference
entry it draws a local random choice at rate ``sample`` (a CSPRNG unless ``seed`` is given, so
no one can predict which answers a watcher checks). A sampled, accepted inference is checked:

1. the defendant is the first agreeing node; its receipt names the input digests and the
   output digests it signed;
2. each input comes from ``GET /v1/inferences/{id}/tensors/{digest}`` (:meth:`Client.tensor`;
   public requests only, docs/privacy.md), kept only if
   it hashes to its digest;
3. the model is pulled from the hub and verified (OMS signature and digest) by the node's own
   pull code (:func:`veriml.models.pull.pull_model`), cached under ``cache_dir``;
4. the watcher runs it with a trace under the pinned profile, and compares: bitwise (output
   digests) or, when the verdict says ``tolerance``, within
   :func:`veriml.verify.tolerance.output_bounds` of the model;
5. on a mismatch, with a signing key, it opens a dispute against the defendant and plays it
   with its own trace (:class:`~veriml.client._disputes.Challenger`).

Each check is reported as a :class:`~veriml.client.CheckedInference`;
:class:`~veriml.client.WatchSummary` adds them up (:mod:`veriml.client._watch_report`).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy.typing as npt

from veriml.client._config import default_home, pin_log_key
from veriml.client._disputes import (
    DEFAULT_DISPUTE_TIMEOUT,
    DEFAULT_MAX_MOVES,
    Challenger,
    challenge_authorization,
)
from veriml.client._publish import Progress
from veriml.client._pull import cached_model
from veriml.client._requests import raise_for_problem
from veriml.client._watch_report import CheckedInference, WatchState, WatchSummary
from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import (
    Check,
    Error,
    FormatError,
    InvalidModelError,
    LogInconsistencyError,
    VerificationError,
)
from veriml.core.receipt import InferencePredicate
from veriml.core.tensors import tensor_digest
from veriml.ledger.entries import InferenceEntry, parse_entry
from veriml.tlog.client import LogClient, SignedCheckpoint
from veriml.tlog.tiles import TILE_WIDTH

if TYPE_CHECKING:
    from veriml.client._client import Client
    from veriml.runtime import Runner
    from veriml.verify.answer import InferenceResult
    from veriml.verify.tolerance import OutputBounds

__all__ = ["Watcher"]

DEFAULT_MAX_MODEL_BYTES = 16 << 30
Array = npt.NDArray[Any]


def _defendant_receipt(
    entry: InferenceEntry, node: str
) -> tuple[InferencePredicate, dict[str, Digest]]:
    """The predicate and signed output digests of ``node``'s receipt in ``entry``."""
    for receipt in entry.receipts:
        predicate, outputs = _open_receipt(receipt)
        if predicate.node_id == node:
            return predicate, outputs
    raise FormatError("the inference has no receipt from that node", node=node)


def _completion_receipt(entry: InferenceEntry, node: str) -> tuple[Any, Digest]:
    """The completion predicate and signed output digest of ``node``'s receipt in ``entry``."""
    from veriml.core.completion import COMPLETION_PREDICATE_TYPE, CompletionPredicate

    for receipt in entry.receipts:
        statement = Statement.from_bytes(receipt.payload)
        if statement.predicate_type != COMPLETION_PREDICATE_TYPE:
            continue
        predicate = CompletionPredicate.from_json(statement.predicate)
        if predicate.node_id == node:
            return predicate, statement.subjects[0].digest
    raise FormatError("the inference has no completion receipt from that node", node=node)


def _open_receipt(receipt: Envelope) -> tuple[InferencePredicate, dict[str, Digest]]:
    # The coordinator verified the signatures before logging; what the watcher needs here is
    # what the node committed to, and a dispute re-checks everything against the receipt.
    statement = Statement.from_bytes(receipt.payload)
    predicate = InferencePredicate.from_json(statement.predicate)
    return predicate, {s.name: s.digest for s in statement.subjects}


class Watcher:
    """Follow a coordinator's log and re-execute a sample of its inferences.

    ``client`` gives the coordinator URL and the pinned log key (its ``log_vkey``, else
    ``$VERIML_LOG_VKEY`` or network.json); with a ``key`` it also signs disputes, without
    one a mismatch is reported but not disputed. ``sample`` is the rate in [0, 1]; ``seed``
    makes the draws reproducible (tests only: a predictable watcher can be dodged).
    ``state`` (a file) keeps the position and last checkpoint across runs.
    ``pull_progress(done, total)`` is told the bytes of each model pull as they arrive.

    >>> with Client(url, key=watcher_key) as client:  # doctest: +SKIP
    ...     watcher = Watcher(client, sample=0.05, state=Path("watch.json"))
    ...     for checked in watcher.poll():
    ...         print(checked.line())
    """

    def __init__(
        self,
        client: Client,
        *,
        sample: float,
        seed: int | None = None,
        state: Path | None = None,
        cache_dir: Path | None = None,
        max_model_bytes: int = DEFAULT_MAX_MODEL_BYTES,
        max_moves: int = DEFAULT_MAX_MOVES,
        dispute_timeout: float = DEFAULT_DISPUTE_TIMEOUT,
        log: LogClient | None = None,
        pull_progress: Progress | None = None,
    ) -> None:
        if not 0.0 <= sample <= 1.0:
            raise FormatError("the sample rate is a probability in [0, 1]", got=sample)
        self.client = client
        self.sample = sample
        # Reproducible draws only when asked for (--seed, tests): a predictable watcher can be
        # dodged by a node that knows which of its answers will be checked.
        self._rng: random.Random = secrets.SystemRandom()
        if seed is not None:
            self._rng = random.Random(seed)  # noqa: S311
        self.state_path = state
        self.state = WatchState.load(state) if state is not None else WatchState()
        self.cache_dir = cache_dir if cache_dir is not None else default_home() / "watch" / "models"
        self.max_model_bytes = max_model_bytes
        self.pull_progress = pull_progress
        self.max_moves = max_moves
        self.dispute_timeout = dispute_timeout
        self._owns_log = log is None
        if log is None:
            # The log is read under the pinned key, never one the coordinator names.
            key = client.log_key if client.log_key is not None else pin_log_key(None)
            log = LogClient(client.url + "/log/", key)
        self.log = log
        self.summary = WatchSummary(position=self.state.position)
        self._runners: dict[Digest, Runner] = {}
        self._engines: dict[Digest, Any] = {}
        self._bounds: dict[Digest, OutputBounds] = {}

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close()
        self._engines.clear()
        if self._owns_log:
            self.log.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- following the log -------------------------------------------------------------------

    def sampled(self) -> bool:
        """One draw: check this inference? True with probability ``sample``."""
        return self._rng.random() < self.sample

    def poll(
        self, on_checked: Callable[[CheckedInference], None] | None = None
    ) -> list[CheckedInference]:
        """Process every entry from the saved position to the log's current checkpoint;
        return (and pass to ``on_checked`` as they come) the sampled inferences' checks."""
        signed = self._checkpoint()
        checked: list[CheckedInference] = []
        for index, data in self._entries(signed):
            result = self._process(index, data)
            if result is not None:
                checked.append(result)
                self.summary.add(result)
                if on_checked is not None:
                    on_checked(result)
            # Saved after each check (a restart never checks an inference twice), not after
            # every skipped entry: a long log is read without a file write per entry.
            self._advance(index + 1, signed, save=result is not None)
        self._advance(signed.checkpoint.size, signed)
        return checked

    def _checkpoint(self) -> SignedCheckpoint:
        """The log's checkpoint, verified, and consistent with the last one this watcher saw."""
        signed = self.log.checkpoint()
        old = self.state.checkpoint
        if old is not None:
            if signed.checkpoint.size < old.size:
                raise LogInconsistencyError(
                    "the log shrank since this watcher last read it",
                    check=Check.CONSISTENCY,
                    old=old.size,
                    new=signed.checkpoint.size,
                )
            try:
                self.log.verify_consistent(old, signed)
            except VerificationError as exc:
                raise LogInconsistencyError(
                    "the log forked since this watcher last read it",
                    check=Check.CONSISTENCY,
                    old=old.size,
                    new=signed.checkpoint.size,
                    reason=exc.message,
                ) from exc
        return signed

    def _entries(self, signed: SignedCheckpoint) -> Iterator[tuple[int, bytes]]:
        """Entries from the saved position, each checked against ``signed``'s root."""
        size, start = signed.checkpoint.size, self.state.position
        reader = self.log.hash_reader(signed)
        for bundle in range(start // TILE_WIDTH, -(-size // TILE_WIDTH)):
            for offset, data in enumerate(reader.read_entry_bundle(bundle)):
                index = bundle * TILE_WIDTH + offset
                if start <= index < size:
                    yield index, data

    def _advance(self, position: int, signed: SignedCheckpoint, *, save: bool = True) -> None:
        self.state = WatchState(position, signed.checkpoint)
        self.summary.position = position
        if save and self.state_path is not None:
            self.state.save(self.state_path)

    def _process(self, index: int, data: bytes) -> CheckedInference | None:
        try:
            obj = parse_json_object(data, what="log entry")
        except FormatError:
            obj = {}
        if obj.get("type") != "inference" or not self.sampled():
            return None
        self.summary.sampled += 1
        try:
            entry = parse_entry(data)
            if not isinstance(entry, InferenceEntry):
                raise FormatError("the entry is not an inference entry")
        except FormatError as exc:
            # Logged, so part of the record: reported (a coordinator logged it), not fatal,
            # or a restarted watcher would stop at the same entry forever.
            request = obj.get("request")
            rid = request.get("id") if isinstance(request, dict) else None
            return CheckedInference(
                id=str(rid)[:200],
                model="",
                result="error",
                index=index,
                detail="malformed inference entry: " + exc.diagnostics()[:300],
            )
        return self.check(entry, index=index)

    # -- checking one inference --------------------------------------------------------------

    def check(
        self, entry: InferenceEntry, *, index: int | None = None, node: str | None = None
    ) -> CheckedInference:
        """Re-execute ``entry`` locally and compare with ``node``'s answer (default: the
        first agreeing node); dispute a mismatch when the client signs."""
        verdict = entry.verdict
        base = CheckedInference(
            id=entry.request_id,
            model=entry.model.to_text(),
            result="skipped",
            index=index,
            node=node,
            mode=verdict.mode,
        )
        if node is None:
            if verdict.outcome != "accepted" or not verdict.agreeing:
                return _with(base, detail=f"verdict {verdict.outcome}: nothing to check")
            node = verdict.agreeing[0]
            base = _with(base, node=node)
        own = self.client.key is not None and entry.extra.get("client") == self.client.key.key_id
        if entry.extra.get("visibility") != "public" and not own:
            # docs/privacy.md: a private request's inputs are its requester's to show.
            return _with(base, detail="private request: its requester did not make it public")
        kind = entry.extra.get("kind")
        if kind in ("chat.completion", "text_completion"):
            return self._check_completion(entry, base, node)
        if kind == "embedding":
            return _with(base, detail="embeddings have no prefill check")
        try:
            predicate, claimed = _defendant_receipt(entry, node)
            inputs = {
                name: self.client.tensor(d, inference=entry.request_id)
                for name, d in sorted(predicate.inputs.items())
            }
            runner = self.runner(entry.model)
            outputs, trace = runner.traced(inputs, keep_tensors=True)
            mine = {name: tensor_digest(a) for name, a in outputs.items()}
            agree = (
                self._within_bounds(entry, runner, outputs, claimed)
                if verdict.mode == "tolerance"
                else mine == claimed
            )
        except Error as exc:
            return _with(base, result="error", detail=exc.diagnostics()[:300])
        if agree:
            return _with(base, result="match")
        mismatch = _with(base, result="mismatch")
        if self.client.key is None:
            return _with(mismatch, detail="not disputed: no signing key")
        challenger = Challenger(self.client, max_moves=self.max_moves, timeout=self.dispute_timeout)
        try:
            result = challenger.challenge(entry.request_id, node, trace, mine, mode=verdict.mode)
        except Error as exc:
            return _with(mismatch, detail="dispute failed: " + exc.diagnostics()[:300])
        return _with(
            mismatch,
            dispute=str(result.get("dispute")),
            winner=str(result.get("winner")),
            detail=f"reason {result.get('reason')}",
        )

    def _check_completion(
        self, entry: InferenceEntry, base: CheckedInference, node: str
    ) -> CheckedInference:
        """An LLM completion: the prefill check (docs/llm.md) run here, on the completion's
        token ids (from the coordinator, checked against what ``node`` signed), with the model
        pulled from the hub. A rejected completion is reported as a mismatch and challenged."""
        from veriml.core.canonical import canonical_digest
        from veriml.core.completion import CompletionPredicate, token_digest
        from veriml.protocol.openai_requests import check_canonical
        from veriml.verify.prefill import prefill_check

        try:
            predicate, output = _completion_receipt(entry, node)
            if predicate.trust != "reexecutable":
                return _with(base, detail=f"{predicate.trust}: nothing to re-execute")
            response = self.client._http.get(f"/v1/inferences/{entry.request_id}")
            raise_for_problem(response)
            stored = parse_json_object(response.content, what="stored answer")
            canonical = check_canonical(stored.get("canonical_request") or {})
            prompt = [int(t) for t in stored.get("prompt_tokens") or []]
            tokens = [int(t) for t in stored.get("completion_tokens") or []]
            if canonical_digest(canonical) != predicate.request_digest:
                raise FormatError("the stored request is not the one the node signed")
            if token_digest(prompt) != predicate.prompt_digest:
                raise FormatError("the stored prompt tokens are not the ones the node signed")
            report = prefill_check(
                self.llm_engine(entry.model, predicate), canonical, prompt, tokens, output=output
            )
        except Error as exc:
            return _with(base, result="error", detail=exc.diagnostics()[:300])
        assert isinstance(predicate, CompletionPredicate)
        if report.accepted:
            return _with(base, result="match", detail=f"prefill check of {report.checked} tokens")
        why = f"prefill check: token {report.first_failure}: {report.reason}"
        mismatch = _with(base, result="mismatch", detail=why[:300])
        if self.client.key is None:
            return _with(mismatch, detail=why[:200] + "; not disputed: no signing key")
        body: dict[str, Any] = {"inference": entry.request_id, "node": node, "kind": "prefill"}
        try:
            # The rules' challenge bond, signed by the watcher's key (how it signs in).
            body["authorization"] = challenge_authorization(
                self.client._http, self.client.key, entry.request_id, node
            )
            signed = self.client._signed_json("/v1/disputes", body, self.client.key, "dispute")
            result = self.client._post("/v1/disputes", *signed).get("result") or {}
        except Error as exc:
            return _with(mismatch, detail="dispute failed: " + exc.diagnostics()[:300])
        return _with(
            mismatch,
            dispute=str(result.get("dispute")),
            winner=str(result.get("winner")),
            detail=why[:200],
        )

    def llm_engine(self, digest: Digest, predicate: Any) -> Any:
        """The LLM engine of model ``digest``, pulled and verified like an ONNX model, with
        the context size the node's fingerprint records (the check must fit the completion)."""
        engine = self._engines.get(digest)
        if engine is not None:
            return engine
        from veriml.runtime.llm import LLMEngine, LLMSettings

        package = self._package(digest)
        if package.kind != "gguf":
            raise InvalidModelError("the logged model is not a GGUF language model", model=digest)
        n_ctx = predicate.runtime.get("n_ctx")
        settings = LLMSettings(n_ctx=n_ctx) if isinstance(n_ctx, int) else LLMSettings()
        engine = self._engines[digest] = LLMEngine(package, settings)
        return engine

    def check_answer(self, result: InferenceResult, *, node: str | None = None) -> CheckedInference:
        """:meth:`check` for an answer fetched from the coordinator (``client.inference``)."""
        predicate, _ = _open_receipt(result.receipts[0])
        entry = InferenceEntry(
            request_id=result.id,
            request_digest=predicate.request_digest,
            model=result.model,
            policy=result.policy,
            receipts=result.receipts,
            verdict=result.verdict,
            extra=dict(result.request),
        )
        return self.check(entry, index=result.log.index, node=node)

    def _within_bounds(
        self,
        entry: InferenceEntry,
        runner: Runner,
        outputs: Mapping[str, Array],
        claimed: Mapping[str, Digest],
    ) -> bool:
        """Tolerance mode: the answer's output tensors (from the coordinator, checked against
        the digests the node signed) within the model's first-order output bounds."""
        from veriml.verify.tensors import check_tensor_digests
        from veriml.verify.tolerance import output_bounds, outputs_agree

        answer = self.client.inference(entry.request_id, verify=False)
        check_tensor_digests(
            answer.outputs,
            claimed,
            check=Check.OUTPUT_DIGEST,
            kind="output",
            claimant="the receipt",
        )
        bounds = self._bounds.get(entry.model)
        if bounds is None:  # a static analysis of the graph: once per model
            bounds = self._bounds[entry.model] = output_bounds(runner.model)
        return outputs_agree(outputs, answer.outputs, bounds)

    def runner(self, digest: Digest) -> Runner:
        """The runner of model ``digest`` under the pinned profile: from the cache
        (re-validated) or pulled from the hub and verified, as a node does."""
        runner = self._runners.get(digest)
        if runner is not None:
            return runner
        from veriml.runtime import Profile, runner_for

        package = self._package(digest)
        if package.kind != "onnx":  # completion entries carry no tensors to re-run
            raise InvalidModelError("the logged model is not an ONNX graph", model=digest)
        runner = runner_for(package, Profile())
        self._runners[digest] = runner
        return runner

    def _package(self, digest: Digest) -> Any:
        """Model ``digest`` from the cache (re-validated) or pulled from the hub and verified,
        as a node does (ONNX or GGUF)."""
        return cached_model(
            self.client.url,
            digest,
            self.cache_dir,
            max_bytes=self.max_model_bytes,
            progress=self.pull_progress,
        )


def _with(base: CheckedInference, **changes: Any) -> CheckedInference:
    return replace(base, **changes)
