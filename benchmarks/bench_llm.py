"""LLM inference: veriml's engine against llama-cpp-python itself, and the prefill check.

- ``engine_tokens_per_s_ratio``: :class:`veriml.runtime.llm.LLMEngine` ``generate`` tokens/s
  ÷ ``llama_cpp.Llama.create_completion`` tokens/s, same SmolLM2-135M GGUF, greedy, same
  prompt and thread count, interleaved rounds (best of each). The engine samples in Python on
  the logits of every step and checks its request; llama-cpp-python samples in C. Both load
  weights without extra buffer types (weight repacking): on hosts that report AMX without
  granting it, llama.cpp's AMX matmul crashes on any batch of more than one token.
  ``baseline_defaults`` says which other settings the baseline keeps at its library defaults.
- ``prefill_check_ratio``: :func:`veriml.verify.prefill.prefill_check` (the prompt batched
  as the generator did, the completion in batches of 32, every token judged) ÷ the generation
  it checks, 128 greedy tokens; ``prefill_check_sampled_ratio`` the same at temperature 0.7
  (the sampler replayed per token).
- ``llm_network_tokens_per_s_ratio`` and ``llm_ttft_ratio``: the same chat streamed through a
  local network against llama-cpp-python directly (:func:`network_figures`).
- ``engine_rss_ratio``: resident memory of a process holding a warmed-up ``LLMEngine`` ÷ one
  holding a warmed-up bare ``Llama`` (``VmRSS``; peaks ``VmHWM`` reported beside it).

    python -m benchmarks --only llm
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from veriml.client import Client, LocalNetwork
from veriml.core.keys import generate_key
from veriml.models import LLMPackage
from veriml.models.examples import smollm2_gguf, write_llm_example_folder
from veriml.protocol.openai_requests import canonical_request
from veriml.runtime.llm import LLMEngine, LLMSettings
from veriml.verify.prefill import prefill_check

PROMPT = "Once upon a time, in a village by the sea, there lived an old fisherman who"
THREADS = 1
N_CTX = 2048


@contextlib.contextmanager
def _no_extra_buffers() -> Iterator[None]:
    """Build a ``Llama`` without extra buffer types (what LLMEngine pins), by handing its
    constructor model parameters with ``use_extra_bufts`` off; restored afterwards."""
    import llama_cpp.llama_cpp as low

    original = low.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        yield
    finally:
        low.llama_model_default_params = original


def bare_llama(path: Path) -> Any:
    import llama_cpp

    with _no_extra_buffers():
        return llama_cpp.Llama(
            model_path=str(path),
            n_ctx=N_CTX,
            n_batch=512,
            n_threads=THREADS,
            n_threads_batch=THREADS,
            verbose=False,
        )


def _throughput(engine: LLMEngine, llama: Any, tokens: int, rounds: int) -> dict[str, float]:
    request = canonical_request(
        "text_completion",
        engine.package.digest,
        {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0},
        seed=1,
    )
    best_engine = best_llama = 0.0
    counts = {"engine": 0, "llama": 0}
    for _ in range(rounds):
        t0 = time.perf_counter()
        completion = llama.create_completion(PROMPT, max_tokens=tokens, temperature=0.0)
        elapsed = time.perf_counter() - t0
        counts["llama"] = completion["usage"]["completion_tokens"]
        best_llama = max(best_llama, counts["llama"] / elapsed)
        t0 = time.perf_counter()
        generated = engine.generate(request)
        elapsed = time.perf_counter() - t0
        counts["engine"] = len(generated.tokens)
        best_engine = max(best_engine, counts["engine"] / elapsed)
    return {
        "engine_tokens_per_s": best_engine,
        "llama_cpp_tokens_per_s": best_llama,
        "engine_tokens_per_s_ratio": best_engine / best_llama,
        "engine_tokens": counts["engine"],
        "llama_cpp_tokens": counts["llama"],
    }


def _prefill(engine: LLMEngine, tokens: int, rounds: int, *, sampled: bool) -> dict[str, float]:
    """Generation of ``tokens`` tokens against the prefill check of that completion (greedy,
    or sampled at temperature 0.7 with the first seed whose completion runs to the length)."""
    for seed in range(1, 50):
        body = {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.7 if sampled else 0}
        request = canonical_request(
            "text_completion", engine.package.digest, {**body, "seed": seed}
        )
        completion = engine.generate(request)
        if completion.finish_reason == "length":
            break
    best_generate = best_check = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        completion = engine.generate(request)
        best_generate = min(best_generate, time.perf_counter() - t0)
        t0 = time.perf_counter()
        report = prefill_check(
            engine,
            request,
            completion.prompt_tokens,
            completion.tokens,
            output=completion.output_digest(),
        )
        best_check = min(best_check, time.perf_counter() - t0)
        if not report.accepted:
            raise AssertionError(f"the prefill check rejected an honest completion: {report}")
    name = "prefill_check_sampled" if sampled else "prefill_check"
    return {
        f"{name}_tokens": len(completion.tokens),
        f"{name}_generate_s": best_generate,
        f"{name}_s": best_check,
        f"{name}_ratio": best_check / best_generate,
    }


_RSS_PROBE = """
import json, sys
from pathlib import Path
mode, folder = sys.argv[1], Path(sys.argv[2])
from benchmarks.bench_llm import PROMPT, bare_llama, engine_for
if mode == "engine":
    from veriml.protocol.openai_requests import canonical_request
    engine = engine_for(folder)
    engine.generate(canonical_request("text_completion", engine.package.digest,
        {"prompt": PROMPT, "max_tokens": 16, "temperature": 0}, seed=1))
else:
    from veriml.models import LLMPackage
    llama = bare_llama(LLMPackage.load(folder).gguf_path)
    llama.create_completion(PROMPT, max_tokens=16, temperature=0.0)
status = Path("/proc/self/status").read_text().splitlines()
fields = {l.split(":")[0]: int(l.split()[1]) for l in status if l.startswith(("VmRSS", "VmHWM"))}
print(json.dumps(fields))
"""


def engine_for(folder: Path) -> LLMEngine:
    return LLMEngine(LLMPackage.load(folder), LLMSettings(n_ctx=N_CTX, n_threads=THREADS))


def _rss(folder: Path) -> dict[str, float]:
    root = Path(__file__).resolve().parent.parent
    out: dict[str, dict[str, int]] = {}
    for mode in ("engine", "llama"):
        done = subprocess.run(
            [sys.executable, "-c", _RSS_PROBE, mode, str(folder)],
            capture_output=True,
            text=True,
            check=True,
            cwd=root,
        )
        out[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        "engine_rss_mb": out["engine"]["VmRSS"] / 1024,
        "llama_rss_mb": out["llama"]["VmRSS"] / 1024,
        "engine_hwm_mb": out["engine"]["VmHWM"] / 1024,
        "llama_hwm_mb": out["llama"]["VmHWM"] / 1024,
        "engine_rss_ratio": out["engine"]["VmRSS"] / out["llama"]["VmRSS"],
    }


# -- through the network (network ÷ direct tokens/s, time to first token) ----------------------
#
# ``network_figures``: a local network (a coordinator and one node, as ``veriml up`` starts
# them) serves the same GGUF; the same greedy chat request is streamed through
# ``POST /v1/chat/completions`` (node: veriml's sampler on llama.cpp's logits, the receipt
# signed; coordinator: the receipt verified and the entry logged before the final ``veriml``
# event) and through ``bare_llama(...).create_chat_completion(stream=True)`` in this process.
# Both are timed from sending to the first content piece (time to first token) and to the end
# of the stream; tokens/s is the completion's token count (the receipt's token ids; the usage
# of the same greedy request directly) over the whole request, prompt evaluation included, as
# a caller sees it. Rounds alternate; the best of each is kept.
#
# - ``llm_network_tokens_per_s_ratio`` = network ÷ direct tokens/s (goal ≥ 0.9);
# - ``llm_network_decode_tokens_per_s_ratio``: the same after the first token;
# - ``llm_network_ttft_s``, ``llm_direct_ttft_s``, ``llm_ttft_ratio`` (reported).

CHAT = [{"role": "user", "content": "Write a short story about a lighthouse keeper."}]


def _lines(response: httpx.Response) -> Iterator[tuple[str, str]]:
    event = ""
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.partition(":")[2].strip()
        elif line.startswith("data:"):
            yield event, line.partition(":")[2].strip()
            event = ""


def _network_round(http: httpx.Client, max_tokens: int) -> tuple[float, float, int]:
    """(seconds to the first content piece, seconds in all, completion tokens)."""
    body = {
        "model": "smollm2",
        "messages": CHAT,
        "temperature": 0,
        "seed": 1,
        "max_tokens": max_tokens,
        "stream": True,
    }
    t0 = time.perf_counter()
    first = None
    tokens = 0
    with http.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for event, data in _lines(response):
            if data == "[DONE]":
                break
            obj = json.loads(data)
            if event == "veriml":  # a chunk without choices carrying the veriml object
                tokens = len(obj["veriml"]["completion_tokens"])
                continue
            for choice in obj.get("choices") or []:
                if first is None and (choice.get("delta") or {}).get("content"):
                    first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first if first is not None else total, total, tokens


def _direct_round(llm: Any, max_tokens: int) -> tuple[float, float]:
    """(seconds to the first content piece, seconds in all) of one streamed direct request."""
    llm.reset()  # no prompt prefix reused from the last round: the node evaluates it afresh too
    t0 = time.perf_counter()
    first = None
    stream = llm.create_chat_completion(
        messages=CHAT, temperature=0.0, max_tokens=max_tokens, seed=1, stream=True
    )
    for chunk in stream:
        delta = chunk["choices"][0].get("delta") or {}
        if first is None and delta.get("content"):
            first = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return first if first is not None else total, total


def _direct_tokens(llm: Any, max_tokens: int) -> int:
    """How many tokens the direct request generates: greedy, so every round generates the
    same ones, and the non-streaming answer's usage counts them exactly."""
    llm.reset()
    answer = llm.create_chat_completion(
        messages=CHAT, temperature=0.0, max_tokens=max_tokens, seed=1
    )
    return int(answer["usage"]["completion_tokens"])


def network_figures(quick: bool) -> dict[str, Any]:
    """The network-vs-direct figures (docs/llm.md; see the module doc)."""
    max_tokens = 32 if quick else 128
    rounds = 2 if quick else 4
    with tempfile.TemporaryDirectory(prefix="veriml-bench-llm-") as tmp:
        root = Path(tmp)
        folder = write_llm_example_folder(root / "smollm2")
        generate_key("ec").save(root / "publisher.key")
        with LocalNetwork(root / "net", nodes=1, port=0) as net:
            with Client(net.url, log_vkey=net.log_vkey) as client:
                client.publish(folder, root / "publisher.key")
            llm = bare_llama(smollm2_gguf())
            with httpx.Client(base_url=net.url, timeout=600) as http:
                _network_round(http, 4)  # the node pulls and loads the model once
                _direct_round(llm, 4)
                network, direct = [], []
                for _ in range(rounds):
                    network.append(_network_round(http, max_tokens))
                    direct.append(_direct_round(llm, max_tokens))
                direct_tokens = _direct_tokens(llm, max_tokens)
            llm.close()
    net_rate = max(tokens / total for _, total, tokens in network)
    direct_rate = max(direct_tokens / total for _, total in direct)
    # Decoding alone (after the first token): where a difference in rate comes from.
    net_decode = max((tokens - 1) / (total - first) for first, total, tokens in network)
    direct_decode = max((direct_tokens - 1) / (total - first) for first, total in direct)
    net_ttft = min(first for first, _, _ in network)
    direct_ttft = min(first for first, _ in direct)
    return {
        "llm_max_tokens": max_tokens,
        "llm_network_tokens": network[0][2],
        "llm_direct_tokens": direct_tokens,
        "llm_network_tokens_per_s": net_rate,
        "llm_direct_tokens_per_s": direct_rate,
        "llm_network_tokens_per_s_ratio": net_rate / direct_rate,
        "llm_network_decode_tokens_per_s_ratio": net_decode / direct_decode,
        "llm_network_ttft_s": net_ttft,
        "llm_direct_ttft_s": direct_ttft,
        "llm_ttft_ratio": net_ttft / direct_ttft,
        "goals": {"llm_network_tokens_per_s_ratio": 0.9},
    }


def run(quick: bool) -> dict[str, object]:
    tokens, rounds = (32, 2) if quick else (128, 3)
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_llm_example_folder(Path(tmp) / "smollm2")
        with engine_for(folder) as engine:
            llama = bare_llama(engine.package.gguf_path)
            try:
                speed = _throughput(engine, llama, tokens, rounds)
            finally:
                llama.close()
            prefill = _prefill(engine, tokens, rounds, sampled=False)
            prefill |= _prefill(engine, tokens, rounds, sampled=True)
        memory = _rss(folder)
    network = network_figures(quick)
    network_goals = network.pop("goals")
    return {
        "description": (
            f"SmolLM2-135M Q4_1, {THREADS} thread(s), n_ctx {N_CTX}; generation of {tokens} "
            "tokens. Baseline: llama-cpp-python's Llama with its defaults (flash attention "
            "off) except threads, context and extra buffer types."
        ),
        "baseline_defaults": "flash_attn=False, logits_all=False, n_batch=512",
        **speed,
        **prefill,
        **memory,
        **network,
        "goals": {"engine_tokens_per_s_ratio": 0.9, **network_goals},
        "goals_max": {
            "prefill_check_ratio": 0.2,
            "prefill_check_sampled_ratio": 0.2,
            "engine_rss_ratio": 1.3,
        },
    }
