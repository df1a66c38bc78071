"""LLMEngine on the real SmolLM2-135M: reproducible bits, streaming, limits, signed answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from _llm import smollm2_engine, smollm2_folder, smollm2_package  # noqa: F401
from veriml.core import Envelope, generate_key
from veriml.core.canonical import canonical_digest
from veriml.core.completion import completion_output_digest, open_completion, token_digest
from veriml.core.errors import FormatError, InvalidInputError, LimitExceededError
from veriml.core.tensors import tensor_from_json
from veriml.models import LLMPackage
from veriml.protocol.openai_requests import canonical_request
from veriml.runtime.llm import LLMEngine, LLMSettings, TokenEvent

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "Write a haiku about the sea."}]


def chat(package: LLMPackage, **body: Any) -> dict[str, Any]:
    return canonical_request(
        "chat.completion", package.digest, {"messages": QUESTION, "max_tokens": 16, **body}, seed=1
    )


def test_greedy_generation_is_bitwise_reproducible(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    request = chat(smollm2_engine.package, temperature=0)
    first = smollm2_engine.generate(request)
    assert smollm2_engine.generate(request) == first
    assert 1 <= len(first.tokens) <= 16
    ended = first.tokens[-1] in smollm2_engine.eos_ids
    assert first.finish_reason == ("stop" if ended else "length")
    assert first.content.strip()


def test_seeded_sampling_is_reproducible_and_seed_dependent(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    package = smollm2_engine.package
    a = smollm2_engine.generate(chat(package, temperature=1.0, seed=11))
    assert smollm2_engine.generate(chat(package, temperature=1.0, seed=11)) == a
    others = {
        smollm2_engine.generate(chat(package, temperature=1.0, seed=s)).tokens for s in (12, 13)
    }
    assert a.tokens not in others


def test_thread_count_does_not_change_the_bits(
    smollm2_package: LLMPackage,  # noqa: F811
    smollm2_engine: LLMEngine,  # noqa: F811
) -> None:
    """Measured on this llama.cpp build: 1 and 2 threads give the same logits, bit for bit
    (each thread owns whole output rows). n_threads stays in the fingerprint regardless."""
    with LLMEngine(smollm2_package, LLMSettings(n_threads=2)) as two:
        for body in ({"temperature": 0}, {"temperature": 0.9, "seed": 3}):
            request = chat(smollm2_package, **body)
            one = smollm2_engine.generate(request)
            assert two.generate(request) == one
            tokens = [*one.prompt_tokens, *one.tokens]
            assert np.array_equal(smollm2_engine.all_logits(tokens), two.all_logits(tokens))
        assert two.fingerprint()["n_threads"] == 2


def test_streamed_text_concatenates_to_the_content(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    events: list[TokenEvent] = []
    completion = smollm2_engine.generate(
        chat(smollm2_engine.package, temperature=0), on_token=events.append
    )
    assert [e.token for e in events] == list(completion.tokens)
    assert "".join(e.text for e in events) == completion.content


def test_stop_string_cuts_the_text_and_is_never_streamed(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    package = smollm2_engine.package
    full = smollm2_engine.generate(chat(package, temperature=0, max_tokens=24))
    words = full.content.split()
    stop = words[3]
    events: list[TokenEvent] = []
    cut = smollm2_engine.generate(
        chat(package, temperature=0, max_tokens=24, stop=[stop]), on_token=events.append
    )
    assert cut.finish_reason == "stop"
    assert cut.content == full.content[: full.content.index(stop)]
    assert "".join(e.text for e in events) == cut.content
    assert cut.tokens == full.tokens[: len(cut.tokens)]


def test_end_of_generation_token_is_kept_in_tokens_not_in_content(
    smollm2_engine: LLMEngine,  # noqa: F811
) -> None:
    request = canonical_request(
        "chat.completion",
        smollm2_engine.package.digest,
        {"messages": [{"role": "user", "content": "Say only: yes"}], "max_tokens": 32},
        seed=1,
    )
    completion = smollm2_engine.generate({**request, "temperature": 0.0})
    assert completion.finish_reason == "stop"
    assert completion.tokens[-1] in smollm2_engine.eos_ids
    assert "<|im_end|>" not in completion.content


def test_text_completion_uses_the_plain_prompt(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    request = canonical_request(
        "text_completion",
        smollm2_engine.package.digest,
        {"prompt": "<|im_start|>The capital of France is", "max_tokens": 8, "temperature": 0},
        seed=1,
    )
    tokens = smollm2_engine.prompt_tokens(request)
    # Control-token text in a plain prompt stays text: no <|im_start|> token (id 1).
    assert 1 not in tokens
    assert len(smollm2_engine.generate(request).tokens) <= 8


def test_chat_prompt_is_the_rendered_template(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    tokens = smollm2_engine.prompt_tokens(chat(smollm2_engine.package))
    assert tokens[0] == 1  # <|im_start|>, parsed as a control token from the template
    assert tokens[-3:] == smollm2_engine._tokenize("<|im_start|>assistant\n", special=True)[-3:]


def test_context_overflow_is_refused_before_generating(smollm2_package: LLMPackage) -> None:  # noqa: F811
    with LLMEngine(smollm2_package, LLMSettings(n_ctx=64)) as small:
        too_long = chat(smollm2_package, max_tokens=40)
        decodes: list[int] = []
        small._decode = lambda *a, **k: decodes.append(1)  # type: ignore[method-assign]
        with pytest.raises(LimitExceededError) as info:
            small.generate(too_long)
        assert info.value.evidence["param"] == "max_tokens"
        assert info.value.evidence["limit"] == 64
        long_prompt = [{"role": "user", "content": "word " * 200}]
        with pytest.raises(LimitExceededError) as info:
            small.generate(chat(smollm2_package, messages=long_prompt, max_tokens=1))
        assert info.value.evidence["param"] == "messages"
        assert decodes == []


def test_requests_for_another_model_or_not_canonical_are_refused(
    smollm2_engine: LLMEngine,  # noqa: F811
) -> None:
    request = chat(smollm2_engine.package)
    with pytest.raises(InvalidInputError):
        smollm2_engine.generate({**request, "model": "sha256:" + "00" * 32})
    with pytest.raises(FormatError):
        smollm2_engine.generate({**request, "stream": True})


def test_verification_logits_are_bitwise_the_generators(
    smollm2_engine: LLMEngine,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rows all_logits(prompt_count=P) gives for the completion are the very logits the
    sampler saw during generation, bit for bit; one pass over everything is not."""
    seen: list[np.ndarray] = []
    last_logits = smollm2_engine._last_logits

    def spy() -> np.ndarray:
        row = last_logits()
        seen.append(row.copy())
        return row

    monkeypatch.setattr(smollm2_engine, "_last_logits", spy)
    story = canonical_request(
        "text_completion",
        smollm2_engine.package.digest,
        {"prompt": "Once upon a time", "max_tokens": 80, "temperature": 0.7, "seed": 2},
    )
    requests = [
        chat(smollm2_engine.package, max_tokens=24, temperature=0),
        chat(smollm2_engine.package, max_tokens=24, temperature=0.9, seed=4),
        story,  # longer than the 64 rows where llama.cpp's matmul kernels change
    ]
    for request in requests:
        seen.clear()
        completion = smollm2_engine.generate(request)
        tokens = [*completion.prompt_tokens, *completion.tokens]
        p = len(completion.prompt_tokens)
        logits = smollm2_engine.all_logits(tokens, prompt_count=p)
        assert logits.shape == (len(tokens), smollm2_engine.n_vocab)
        assert np.array_equal(np.stack(seen), logits[p - 1 : p - 1 + len(seen)])
    assert len(completion.tokens) > 64
    one_pass = smollm2_engine.all_logits(tokens)
    assert not np.array_equal(one_pass[p - 1 : p - 1 + len(seen)], np.stack(seen))


def test_embeddings_are_reproducible_and_input_dependent(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    request = canonical_request(
        "embedding", smollm2_engine.package.digest, {"input": ["the sea", "a mountain"]}
    )
    a, b = smollm2_engine.embed(request)
    assert a.shape == (576,)
    assert a.dtype == np.float32
    assert not np.array_equal(a, b)
    again = smollm2_engine.embed({**request, "input": ["the sea"]})
    assert np.array_equal(again[0], a)  # one decode per input: batch mates change nothing


def test_run_signs_what_was_generated(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    key = generate_key()
    request = chat(smollm2_engine.package, temperature=0.7, seed=5)
    result = smollm2_engine.run(request, key=key, request_id="r-1", policy="none")
    predicate, output = open_completion(result.receipt, key.public)
    completion = result.completion
    assert completion is not None
    assert output == completion_output_digest(
        content=completion.content,
        tool_calls=[],
        tokens=completion.tokens,
        finish_reason=completion.finish_reason,
    )
    assert predicate.request_digest == canonical_digest(request)
    assert predicate.model_digest == smollm2_engine.package.digest
    assert predicate.model_files == smollm2_engine.package.files_digest
    assert predicate.prompt_digest == token_digest(completion.prompt_tokens)
    assert predicate.prompt_count == len(completion.prompt_tokens)
    assert predicate.completion_count == len(completion.tokens)
    assert predicate.sampling is not None
    assert predicate.sampling.seed == 5
    assert predicate.runtime["engine"] == "llama.cpp"
    assert predicate.trust == "reexecutable"
    body = result.to_json()
    assert body["completion_tokens"] == list(completion.tokens)
    assert body["content"] == completion.content


def test_run_signs_embeddings(smollm2_engine: LLMEngine) -> None:  # noqa: F811
    key = generate_key()
    request = canonical_request("embedding", smollm2_engine.package.digest, {"input": "hello"})
    body = smollm2_engine.run(request, key=key, request_id="e-1", policy="none").to_json()
    predicate, _ = open_completion(Envelope.from_json(body["receipt"]), key.public)
    vector = tensor_from_json(body["embeddings"][0])
    assert np.array_equal(vector, smollm2_engine.embed(request)[0])
    assert predicate.sampling is None
    assert predicate.prompt_count == len(body["prompt_tokens"][0])
