"""The node's LLM job path: completion, embedding and prefill-check jobs on GGUF models.

A completion or embedding job names a GGUF model by digest and carries its canonical request
(docs/llm.md, "Canonical request"); :meth:`LLMJobs.complete` runs it on the model's
:class:`LocalLLM` (one :class:`~veriml.runtime.llm.LLMEngine` per model, used by one job at a
time: a llama.cpp context decodes one sequence) and answers ``CompletionResult.to_json()``:
the content, the token ids and the completion receipt signed with the node key.

A prefill job asks this node to check another node's completion (docs/llm.md, "Prefill
check"): in order,

1. the completion's receipt must be about the job's request and model (its predicate, read
   without its signature: the coordinator checks that against the other node's key);
2. the token lists must be the ones the receipt counts and digests;
3. the prompt tokens must be the ones this node's own tokenisation of the request gives (a
   node that answered another prompt, e.g. through another chat template, fails here);
4. a batched pass over prompt + completion (the prompt batched as the generator batched it)
   gives every position's logits, and :func:`~veriml.verify.prefill.check_completion`
   replays the sampler on them;

and the node signs a :class:`~veriml.protocol.messages.PrefillCheck` over the receipt.
Steps 1 and 2 failing mean the coordinator sent an inconsistent job (422); step 3 or 4 failing
is a signed rejection.

Byzantine modes (tests and demos only, like :mod:`veriml.node._byzantine`'s for ONNX jobs):

=============== ==============================================================================
mode            what the node answers for a completion job
=============== ==============================================================================
wrong-output    the honest completion with its middle token swapped for another token of the
                same completion, the content rebuilt from the pieces and the receipt signed
                over the lie (a streaming client is streamed the lie)
substitute      the completion of another computation (the seed with its lowest bit flipped
                and, for a greedy request, temperature 1), signed as the answer to the
                request it was given
false-check     honest completions, but every prefill check it runs is a signed rejection
                (a Sybil checker trying to get honest nodes convicted)
=============== ==============================================================================

Every other mode answers LLM jobs honestly; the lies are built from the engine's own pieces,
so only the checks that exist to catch them can.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from veriml.core.canonical import canonical_digest
from veriml.core.completion import (
    COMPLETION_PREDICATE_TYPE,
    CompletionPredicate,
    sampling_of,
    sign_completion,
    token_digest,
)
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import Check, Error, FormatError, InvalidInputError, VerificationError
from veriml.core.keys import SigningKey
from veriml.core.timestamps import utc_now
from veriml.models.gguf import LLMPackage
from veriml.protocol.jobs import Job
from veriml.protocol.openai_requests import check_canonical
from veriml.protocol.prefill_check import PrefillCheck, sign_prefill_check
from veriml.runtime.llm import Completion, CompletionResult, LLMEngine, LLMSettings, TokenEvent
from veriml.verify.prefill import PrefillReport, check_completion

__all__ = [
    "LLM_BYZANTINE_MODES",
    "CompletionEngine",
    "LLMJobs",
    "LocalLLM",
    "parse_completion",
]

log = logging.getLogger("veriml.node")

LLM_BYZANTINE_MODES: Final = ("wrong-output", "substitute", "false-check")
"""The byzantine modes that change LLM answers; other modes answer LLM jobs honestly."""
MAX_TOKENS_LISTED: Final = 1 << 20

OnToken = Callable[[TokenEvent], None]


class CompletionEngine(Protocol):
    """What runs a completion job: a local model (:class:`LocalLLM`) or the relay engine."""

    def run(
        self,
        canonical: Mapping[str, Any],
        *,
        key: SigningKey,
        request_id: str,
        policy: str,
        on_token: OnToken | None = None,
        spot: Digest | None = None,
    ) -> CompletionResult: ...

    def close(self) -> None:
        """Free what the engine holds (connections, contexts); idempotent."""


class LocalLLM:
    """One loaded GGUF model: its engine, closed when the last job holding it lets go.

    The model cache drops an evicted model while jobs may still be generating with it, so
    nothing closes the engine explicitly: CPython frees this object when its last reference
    goes, and :meth:`__del__` then frees llama.cpp's context and model (not only the memory
    Python knows about).
    """

    def __init__(self, package: LLMPackage, settings: LLMSettings) -> None:
        self.package = package
        self.engine: LLMEngine = LLMEngine(package, settings)

    def __del__(self) -> None:
        if hasattr(self, "engine"):  # absent when loading failed
            self.close()

    def close(self) -> None:
        self.engine.close()

    @property
    def digest(self) -> Digest:
        return self.package.digest

    def run(
        self,
        canonical: Mapping[str, Any],
        *,
        key: SigningKey,
        request_id: str,
        policy: str,
        on_token: OnToken | None = None,
        spot: Digest | None = None,
    ) -> CompletionResult:
        """Generate (or embed) and sign (:meth:`LLMEngine.run`; one call at a time)."""
        return self.engine.run(
            canonical, key=key, request_id=request_id, policy=policy, on_token=on_token, spot=spot
        )


def _token_list(value: Any, what: str) -> list[int]:
    if (
        not isinstance(value, list)
        or len(value) > MAX_TOKENS_LISTED
        or not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in value)
    ):
        raise FormatError(f"{what} must be a list of token ids", member=what)
    return list(value)


def parse_completion(value: Any) -> tuple[Envelope, list[int], list[int]]:
    """A prefill job's ``completion`` member: the receipt and the two token lists."""
    if not isinstance(value, Mapping) or set(value) != {
        "receipt",
        "prompt_tokens",
        "completion_tokens",
    }:
        raise FormatError(
            'a prefill job\'s completion is {"receipt", "prompt_tokens", "completion_tokens"}',
            member="completion",
        )
    return (
        Envelope.from_json(value["receipt"]),
        _token_list(value["prompt_tokens"], "prompt_tokens"),
        _token_list(value["completion_tokens"], "completion_tokens"),
    )


def _unverified_predicate(receipt: Envelope) -> CompletionPredicate:
    """The predicate of another node's completion receipt, read without its signature (the
    coordinator checks that against the node's registered key)."""
    try:
        statement = Statement.from_bytes(receipt.payload)
        if statement.predicate_type != COMPLETION_PREDICATE_TYPE:
            raise FormatError("not a completion receipt", got=statement.predicate_type)
        return CompletionPredicate.from_json(statement.predicate)
    except (FormatError, VerificationError) as exc:
        raise InvalidInputError(
            "the completion to check has no completion receipt", reason=exc.message
        ) from exc


class LLMJobs:
    """Completion, embedding and prefill jobs for one node key (honest, or one byzantine
    mode of :data:`LLM_BYZANTINE_MODES`)."""

    def __init__(self, key: SigningKey, *, mode: str | None = None) -> None:
        self.key = key
        self.mode = mode if mode in LLM_BYZANTINE_MODES else None

    # -- completion and embedding ---------------------------------------------------------

    def complete(
        self, engine: CompletionEngine, job: Job, *, on_token: OnToken | None = None
    ) -> bytes:
        """Run a completion or embedding job; the answer document (JSON bytes)."""
        request = self._request(job)
        lies = self.mode in ("wrong-output", "substitute")
        if job.kind == "completion" and lies and isinstance(engine, LocalLLM):
            result = self._lie(engine, job, request, on_token)
        else:
            result = engine.run(
                request,
                key=self.key,
                request_id=job.request_id,
                policy=job.policy,
                on_token=on_token,
                spot=job.spot,
            )
        return json.dumps(result.to_json()).encode()

    @staticmethod
    def _request(job: Job) -> dict[str, Any]:
        if job.request is None:  # Job.open guarantees it for LLM kinds
            raise FormatError(f"a {job.kind} job needs its request", member="request")
        try:
            return check_canonical(job.request)
        except Error as exc:
            raise InvalidInputError(
                "the job's request is not a canonical request", **exc.evidence
            ) from exc

    def _lie(
        self, llm: LocalLLM, job: Job, request: dict[str, Any], on_token: OnToken | None
    ) -> CompletionResult:
        """The byzantine answer; a streaming client sees the lie's tokens, not the truth's."""
        events: list[TokenEvent] = []
        if self.mode == "substitute":
            sampling = sampling_of(request)
            other = {
                **request,
                "seed": sampling.seed ^ 1,  # another seed, as small as the honest one
                "temperature": sampling.temperature or 1.0,
            }
            result = self._resign(
                llm.run(
                    other,
                    key=self.key,
                    request_id=job.request_id,
                    policy=job.policy,
                    on_token=events.append,
                    spot=job.spot,
                ),
                request,
            )
        else:  # wrong-output
            honest = llm.run(
                request,
                key=self.key,
                request_id=job.request_id,
                policy=job.policy,
                on_token=events.append,
                spot=job.spot,
            )
            result, events = self._swap(honest, events, request)
        if on_token is not None:
            for event in events:
                on_token(event)
        return result

    def _resign(
        self,
        result: CompletionResult,
        request: Mapping[str, Any],
        completion: Completion | None = None,
    ) -> CompletionResult:
        """``result`` (with ``completion`` instead of its own, if given) signed again as the
        answer to ``request``: every digest and count in the receipt agrees with the lie."""
        completion = result.completion if completion is None else completion
        if completion is None:
            raise FormatError("only a completion can be re-signed")
        output = completion.output_digest()
        predicate = dataclasses.replace(
            result.predicate,
            request_digest=canonical_digest(dict(request)),
            sampling=sampling_of(request),
            prompt_count=len(completion.prompt_tokens),
            prompt_digest=token_digest(completion.prompt_tokens),
            completion_count=len(completion.tokens),
            finish_reason=completion.finish_reason,
        )
        return dataclasses.replace(
            result,
            receipt=sign_completion(output, predicate, self.key),
            predicate=predicate,
            output_digest=output,
            completion=completion,
        )

    def _swap(
        self, result: CompletionResult, events: list[TokenEvent], request: Mapping[str, Any]
    ) -> tuple[CompletionResult, list[TokenEvent]]:
        """The token in the middle replaced by another token of the same completion (so its
        text is known from the stream), the content rebuilt from the pieces."""
        completion = result.completion
        if completion is None or len(events) != len(completion.tokens) or len(events) < 2:
            return result, events  # nothing to swap: this answer stays honest
        at = len(events) // 2
        donor = next(
            (e for e in events if e.token != events[at].token and e.text),
            None,
        )
        if donor is None:
            return result, events
        lie = [*events[:at], TokenEvent(donor.token, donor.text), *events[at + 1 :]]
        swapped = dataclasses.replace(
            completion,
            tokens=tuple(e.token for e in lie),
            content="".join(e.text for e in lie),
        )
        return self._resign(result, request, swapped), lie

    # -- prefill check --------------------------------------------------------------------

    def check(self, llm: LocalLLM, job: Job, completion: Any) -> bytes:
        """Run a prefill job (steps 1-4 of the module docstring); the signed check as JSON."""
        started = utc_now()
        request = self._request(job)
        receipt, prompt, tokens = parse_completion(completion)
        predicate = _unverified_predicate(receipt)
        # 1. The receipt answers this job's request on this job's model.
        if predicate.request_digest != job.request_digest or predicate.model_digest != job.model:
            raise VerificationError(
                "the completion to check answers another request or model",
                check=Check.JOB_REQUEST,
                expected=job.request_digest,
                got=predicate.request_digest,
            )
        # 2. The token lists are the ones the receipt signed.
        if (
            predicate.prompt_count != len(prompt)
            or predicate.prompt_digest != token_digest(prompt)
            or predicate.completion_count != len(tokens)
        ):
            raise VerificationError(
                "the completion's token lists are not the ones its receipt signs",
                check=Check.JOB_REQUEST,
                prompt_count=len(prompt),
                completion_count=len(tokens),
            )
        # 3. This node's own tokenisation of the request.
        own = llm.engine.prompt_tokens(request)
        if self.mode == "false-check":
            report = PrefillReport(
                accepted=False,
                checked=1,
                first_failure=0,
                reason="the first generated token is not the one the sampler picks",
            )
        elif own != prompt:
            first = next(
                (i for i, (a, b) in enumerate(zip(own, prompt, strict=False)) if a != b),
                min(len(own), len(prompt)),
            )
            report = PrefillReport(
                accepted=False,
                checked=0,
                first_failure=None,
                reason=f"prompt tokens differ from this node's tokenisation at position {first}",
            )
        else:
            # 4. One batched pass, the sampler replayed at every generated position.
            report = check_completion(
                # The prompt batched as the generator batched it: bitwise its logits.
                llm.engine.all_logits([*prompt, *tokens], prompt_count=len(prompt)),
                len(prompt),
                tokens,
                sampling_of(request),
                finish_reason=predicate.finish_reason,
                eos_ids=llm.engine.eos_ids,
                max_tokens=int(request["max_tokens"]),
                stop=request["stop"],
                pieces=llm.engine.pieces(tokens),
            )
        check = PrefillCheck(
            receipt=Digest.of(receipt.payload),
            report=report.to_json(),
            model=job.model,
            runtime=llm.engine.fingerprint(),
            node_id=self.key.key_id,
            request_id=job.request_id,
            started=started,
            finished=utc_now(),
        )
        if not check.accepted:
            log.info("prefill check of request %s rejects: %s", job.request_id, report.reason)
        return json.dumps({"receipt": sign_prefill_check(check, self.key).to_json()}).encode()
