"""The prefill check accepts honest completions and rejects swapped tokens and other models.

Honest completions come from the real engine (SmolLM2-135M); the checker sees only the
batched logits of prompt plus completion, as a verifying node would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from _llm import smollm2_engine, smollm2_folder, smollm2_package  # noqa: F401
from veriml.core.completion import Sampling, sampling_of
from veriml.core.errors import FormatError
from veriml.protocol.openai_requests import canonical_request
from veriml.runtime.llm import Completion, LLMEngine
from veriml.verify.prefill import check_completion, prefill_check

QUESTION = [{"role": "user", "content": "Name three colours of the rainbow."}]


def chat(engine: LLMEngine, **body: Any) -> dict[str, Any]:
    return canonical_request(
        "chat.completion",
        engine.package.digest,
        {"messages": QUESTION, "max_tokens": 24, **body},
        seed=1,
    )


def judge(
    engine: LLMEngine, request: dict[str, Any], tokens: tuple[int, ...], prompt: tuple[int, ...]
) -> Any:
    """check_completion on the engine's batched logits, claiming finish from the tokens."""
    logits = engine.all_logits([*prompt, *tokens], prompt_count=len(prompt))
    finish = "stop" if tokens[-1] in engine.eos_ids else "length"
    return check_completion(
        logits,
        len(prompt),
        tokens,
        sampling_of(request),
        finish_reason=finish,
        eos_ids=engine.eos_ids,
        max_tokens=len(tokens) if finish == "length" else request["max_tokens"],
    )


def swap(engine: LLMEngine, completion: Completion, index: int) -> tuple[int, ...]:
    """The completion with token ``index`` replaced by a plausible but unchosen token: the
    fifth most likely one at that position."""
    tokens = [*completion.prompt_tokens, *completion.tokens]
    p = len(completion.prompt_tokens)
    row = engine.all_logits(tokens, prompt_count=p)[p - 1 + index]
    fifth = int(np.argsort(-row, kind="stable")[4])
    out = list(completion.tokens)
    out[index] = fifth
    return tuple(out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "body",
    [
        {"temperature": 0},
        {"temperature": 0.8, "seed": 21},
        {"temperature": 1.2, "top_k": 40, "top_p": 0.9, "seed": 4},
    ],
)
def test_honest_completions_are_accepted(smollm2_engine: LLMEngine, body: dict[str, Any]) -> None:  # noqa: F811
    request = chat(smollm2_engine, **body)
    completion = smollm2_engine.generate(request)
    report = prefill_check(
        smollm2_engine,
        request,
        completion.prompt_tokens,
        completion.tokens,
        output=completion.output_digest(),
    )
    assert report.accepted, report
    assert report.checked == len(completion.tokens)


@pytest.mark.slow
@pytest.mark.parametrize("body", [{"temperature": 0}, {"temperature": 0.8, "seed": 21}])
def test_one_swapped_token_mid_completion_is_rejected_there(
    smollm2_engine: LLMEngine,  # noqa: F811
    body: dict[str, Any],
) -> None:
    request = chat(smollm2_engine, **body)
    completion = smollm2_engine.generate(request)
    middle = len(completion.tokens) // 2
    forged = swap(smollm2_engine, completion, middle)
    report = judge(smollm2_engine, request, forged, completion.prompt_tokens)
    assert not report.accepted
    assert report.first_failure == middle
    assert report.checked == middle + 1


@pytest.mark.slow
def test_a_completion_from_another_model_is_rejected_within_a_few_tokens(
    smollm2_engine: LLMEngine,  # noqa: F811
) -> None:
    """A cheaper model stands in as a different distribution over the next token. With one
    real GGUF at hand, the "smaller model" is SmolLM2 itself run at temperature 1.3 with
    another seed: every token it emits is plausible text, as a small model's would be, yet it
    does not follow the greedy rule of the request. The node claims a greedy answer for it.
    """
    request = chat(smollm2_engine, temperature=0)
    cheap = smollm2_engine.generate(chat(smollm2_engine, temperature=1.3, seed=99))
    honest = smollm2_engine.generate(request)
    assert cheap.tokens != honest.tokens
    report = judge(smollm2_engine, request, cheap.tokens, cheap.prompt_tokens)
    assert not report.accepted
    assert report.first_failure is not None
    assert report.first_failure <= 4


@pytest.mark.slow
def test_a_different_chat_template_is_another_prompt(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    """An answer to the request rendered without its system prompt is not an answer to it."""
    request = chat(smollm2_engine, temperature=0)
    honest = smollm2_engine.generate(request)
    other = smollm2_engine._tokenize(
        "<|im_start|>user\nName three colours of the rainbow.<|im_end|>\n<|im_start|>assistant\n",
        special=True,
    )
    report = prefill_check(smollm2_engine, request, other, honest.tokens)
    assert not report.accepted
    assert report.reason == "prompt tokens are not the rendering of the request"


@pytest.mark.slow
def test_a_forged_output_digest_or_finish_is_rejected(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    request = chat(smollm2_engine, temperature=0, max_tokens=8)
    honest = smollm2_engine.generate(request)
    lying = Completion("something else", honest.tokens, honest.prompt_tokens, "length")
    report = prefill_check(
        smollm2_engine,
        request,
        honest.prompt_tokens,
        honest.tokens,
        output=lying.output_digest(),
    )
    assert report.reason == "the output digest does not match the tokens"
    truncated = prefill_check(smollm2_engine, request, honest.prompt_tokens, honest.tokens[:5])
    assert not truncated.accepted
    assert "before any stop condition" in str(truncated.reason)


def test_finish_reasons_must_follow_from_tokens() -> None:
    logits = np.zeros((6, 4), dtype=np.float32)
    logits[:, 3] = 5.0  # greedy picks 3 everywhere; 3 is also the end token below
    greedy = Sampling(0.0, 1.0, 0, 0)

    def check(tokens: list[int], finish: str, max_tokens: int) -> str | None:
        return check_completion(
            logits, 2, tokens, greedy, finish_reason=finish, eos_ids={3}, max_tokens=max_tokens
        ).reason

    assert check([3], "stop", 4) is None
    assert "finish_reason length" in str(check([3], "length", 1))
    logits[:, 0] = 5.0  # now 0 and 3 tie: both are greedy choices
    assert check([0, 0, 0], "length", 3) is None
    assert "after 3 < 4" in str(check([0, 0, 0], "length", 4))
    assert "stop without an end token" in str(check([0, 0], "stop", 4))
    assert "before the last token" in str(check([3, 0], "length", 2))
    assert "exceed max_tokens" in str(check([0, 0, 0, 0], "length", 3))


def test_stop_strings_are_checked_with_token_pieces() -> None:
    logits = np.zeros((5, 3), dtype=np.float32)
    greedy = Sampling(0.0, 1.0, 0, 0)
    pieces = [b"a", b"b\n", b"\nc"]

    def check(n: int, stop: list[str]) -> str | None:
        return check_completion(
            logits,
            2,
            [0] * n,
            greedy,
            finish_reason="stop",
            eos_ids={2},
            max_tokens=8,
            stop=stop,
            pieces=pieces[:n],
        ).reason

    assert check(3, ["\n\n"]) is None
    assert "stop without an end token" in str(check(2, ["\n\n"]))
    assert "stop string completed before" in str(check(3, ["b"]))


def test_malformed_calls_are_format_errors() -> None:
    greedy = Sampling(0.0, 1.0, 0, 0)
    with pytest.raises(FormatError):
        check_completion(
            np.zeros((2, 3)), 2, [0, 1], greedy, finish_reason="length", eos_ids=(), max_tokens=2
        )
    with pytest.raises(FormatError):
        check_completion(
            np.zeros((3, 3)), 2, [], greedy, finish_reason="length", eos_ids=(), max_tokens=2
        )


def test_out_of_vocabulary_token_is_rejected() -> None:
    report = check_completion(
        np.zeros((3, 3)),
        2,
        [7],
        Sampling(0.0, 1.0, 0, 0),
        finish_reason="length",
        eos_ids=(),
        max_tokens=1,
    )
    assert not report.accepted
    assert report.first_failure == 0
    assert report.to_json()["accepted"] is False
