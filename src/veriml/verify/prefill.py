"""The prefill check: judge a signed completion from one batched forward pass (docs/llm.md,
"Prefill check"). Pure: the engine supplies the logits, this module decides.

Generating ``n`` tokens takes ``n`` sequential decodes; checking them takes one batched pass
over prompt plus completion, whose logits at position ``prompt_count - 1 + i`` are what the
generator saw before choosing token ``i``. Batched and incremental evaluation group the same
sums differently, so logits agree only to the last bits; the check allows for that and no more:

1. greedy (``temperature == 0``): token ``i`` is accepted when
   ``logit[token] >= max(logit) - eps``, ``eps = 1e-3 * max(1, |max(logit)|)``;
2. sampled: the sampler is replayed on the recomputed logits; token ``i`` is accepted when
   ``u = draw(seed, i)`` falls in the token's cumulative-probability interval widened by
   ``delta = 1e-4`` on each side;
3. the finish reason must follow from the tokens: ``stop`` ends with an end-of-generation
   token (or the text completes a stop string at the last token, when ``pieces`` are given),
   ``length`` has exactly ``max_tokens`` tokens, and no earlier token ended the generation.

A swapped token or a different model fails step 1 or 2 within a few tokens; the report names
the first failing position.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from veriml.core.completion import Sampling, sampling_of
from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.runtime.llm.sampler import draw, token_interval

if TYPE_CHECKING:
    from veriml.runtime.llm import LLMEngine

__all__ = [
    "GREEDY_EPSILON",
    "SAMPLED_DELTA",
    "PrefillReport",
    "check_completion",
    "prefill_check",
]

GREEDY_EPSILON: Final = 1e-3
SAMPLED_DELTA: Final = 1e-4


@dataclass(frozen=True, slots=True)
class PrefillReport:
    """The outcome of a prefill check. ``checked`` counts the tokens examined (all of them
    when accepted); ``first_failure`` is the index of the first rejected token, if any."""

    accepted: bool
    checked: int
    first_failure: int | None
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "checked": self.checked,
            "first_failure": self.first_failure,
            "reason": self.reason,
        }


def _reject(checked: int, index: int | None, reason: str) -> PrefillReport:
    return PrefillReport(False, checked, index, reason)


def _stop_string_at(pieces: Sequence[bytes], stop: Sequence[str], end: int) -> bool:
    """Whether the text of ``pieces[:end]`` contains a stop string."""
    text = b"".join(pieces[:end])
    return any(s.encode("utf-8") in text for s in stop)


def _finish_follows(
    tokens: Sequence[int],
    finish_reason: str,
    eos_ids: Collection[int],
    max_tokens: int,
    stop: Sequence[str],
    pieces: Sequence[bytes] | None,
) -> str | None:
    """Why the finish reason does not follow from the tokens, or None when it does."""
    n = len(tokens)
    if n > max_tokens:
        return f"{n} tokens exceed max_tokens {max_tokens}"
    if any(t in eos_ids for t in tokens[:-1]):
        return "an end-of-generation token before the last token"
    if pieces is not None and stop and _stop_string_at(pieces, stop, n - 1):
        return "a stop string completed before the last token"
    ended = tokens[-1] in eos_ids
    stopped = pieces is not None and bool(stop) and _stop_string_at(pieces, stop, n)
    if finish_reason == "stop":
        if ended or stopped or (pieces is None and stop):
            # Without pieces a stop string cannot be seen here; prefill_check passes them.
            return None
        return "finish_reason stop without an end token or stop string"
    if finish_reason == "length":
        if ended or stopped:
            return "finish_reason length, but the last token ended the generation"
        return None if n == max_tokens else f"finish_reason length after {n} < {max_tokens}"
    return f"finish_reason {finish_reason!r} cannot follow from tokens"


def check_completion(
    logits: np.ndarray[Any, Any],
    prompt_count: int,
    tokens: Sequence[int],
    sampling: Sampling,
    *,
    finish_reason: str,
    eos_ids: Collection[int],
    max_tokens: int,
    stop: Sequence[str] = (),
    pieces: Sequence[bytes] | None = None,
) -> PrefillReport:
    """Judge ``tokens`` generated after ``prompt_count`` prompt tokens from the batched
    ``logits`` (``[>= prompt_count + len(tokens) - 1, vocab]``).

    ``stop`` and ``pieces`` (each token's text bytes) let a ``stop`` finish end on a stop
    string; without ``pieces`` such a finish is accepted only below ``max_tokens`` (its text
    cannot be checked here). A malformed call (shapes, counts) is a :class:`FormatError`; a
    rejected completion is a report with ``accepted == False``, which callers must act on.
    """
    if not tokens:
        raise FormatError("a completion has at least one token", param="completion_tokens")
    if prompt_count < 1:
        raise FormatError("a completion follows at least one prompt token", param="prompt")
    rows = prompt_count + len(tokens) - 1
    if logits.ndim != 2 or logits.shape[0] < rows:
        raise FormatError(
            "logits must cover prompt and completion", needed_rows=rows, shape=logits.shape
        )
    if pieces is not None and len(pieces) != len(tokens):
        raise FormatError("one text piece per token", pieces=len(pieces), tokens=len(tokens))
    vocab = logits.shape[1]
    # 1-2: every token, in order; the first failure decides.
    for i, token in enumerate(tokens):
        if not 0 <= token < vocab:
            return _reject(i + 1, i, f"token {token} is outside the vocabulary")
        raw = logits[prompt_count - 1 + i]  # float32 from llama.cpp: the sampler's fast order
        row = np.asarray(raw, dtype=np.float64)
        if not np.isfinite(row).all():
            return _reject(i + 1, i, "recomputed logits are not finite")
        if sampling.greedy:
            top = float(row.max())
            eps = GREEDY_EPSILON * max(1.0, abs(top))
            if float(row[token]) < top - eps:
                return _reject(
                    i + 1,
                    i,
                    f"greedy token {token} is {top - float(row[token]):.4g} below the maximum"
                    f" (token {int(row.argmax())}); allowed {eps:.4g}",
                )
            continue
        interval = token_interval(raw, sampling, token)
        u = draw(sampling.seed, i)
        if not interval.low - SAMPLED_DELTA <= u < interval.high + SAMPLED_DELTA:
            where = (
                "cut by top_k"
                if not interval.kept
                else f"[{interval.low:.6f}, {interval.high:.6f})"
            )
            return _reject(i + 1, i, f"sampled token {token}: u = {u:.6f} outside {where}")
    # 3: the finish reason.
    why = _finish_follows(tokens, finish_reason, eos_ids, max_tokens, stop, pieces)
    if why is not None:
        return _reject(len(tokens), None, why)
    return PrefillReport(True, len(tokens), None, None)


def prefill_check(
    engine: LLMEngine,
    canonical: Mapping[str, Any],
    prompt_tokens: Sequence[int],
    completion_tokens: Sequence[int],
    *,
    output: Digest | None = None,
) -> PrefillReport:
    """The checking node's whole prefill check of a completion of ``canonical``.

    Beyond :func:`check_completion` on the engine's batched logits, it checks that the prompt
    tokens are the engine's rendering of the request (a receipt over another prompt proves
    nothing about this request) and, given the receipt's ``output`` digest, that content,
    tokens and finish reason recomputed from the tokens hash to it.
    """
    expected = engine.prompt_tokens(canonical)
    if list(prompt_tokens) != expected:
        return _reject(0, None, "prompt tokens are not the rendering of the request")
    try:
        completion = engine.completion_of(canonical, expected, completion_tokens)
    except FormatError as exc:
        return _reject(0, None, exc.diagnostics())
    if output is not None and completion.output_digest() != output:
        return _reject(0, None, "the output digest does not match the tokens")
    logits = engine.all_logits([*expected, *completion_tokens], prompt_count=len(expected))
    return check_completion(
        logits,
        len(expected),
        completion_tokens,
        sampling_of(canonical),
        finish_reason=completion.finish_reason,
        eos_ids=engine.eos_ids,
        max_tokens=int(canonical["max_tokens"]),
        stop=canonical["stop"],
        pieces=engine.pieces(completion_tokens),
    )
