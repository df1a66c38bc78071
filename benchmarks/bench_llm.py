"""LLM inference: veriml's engine against llama-cpp-python itself, and the prefill check.

- ``engine_tokens_per_s_ratio``: :class:`veriml.runtime.llm.LLMEngine` ``generate`` tokens/s
  ÷ ``llama_cpp.Llama.create_completion`` tokens/s, same SmolLM2-135M GGUF, greedy, same
  prompt and thread count, interleaved rounds (best of each). The engine samples in Python on
  the logits of every step and checks its request; llama-cpp-python samples in C. Both load
  weights without extra buffer types (weight repacking): on hosts that report AMX without
  granting it, llama.cpp's AMX matmul crashes on any batch of more than one token.
  ``baseline_defaults`` says which other settings the baseline keeps at its library defaults.
- ``prefill_check_ratio``: :func:`veriml.verify.prefill.prefill_check` (two batched passes:
  prompt, then completion; the sampler replayed) ÷ the generation it checks, 128 tokens.
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

from veriml.core.completion import canonical_request
from veriml.models import LLMPackage
from veriml.models.examples import write_llm_example_folder
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


def _prefill(engine: LLMEngine, tokens: int, rounds: int) -> dict[str, float]:
    """Generation of ``tokens`` tokens (sampled, seeds tried until one runs to the length)
    against the prefill check of that completion."""
    for seed in range(1, 50):
        request = canonical_request(
            "text_completion",
            engine.package.digest,
            {"prompt": PROMPT, "max_tokens": tokens, "temperature": 0.7, "seed": seed},
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
    return {
        "prefill_tokens": len(completion.tokens),
        "generate_s": best_generate,
        "prefill_check_s": best_check,
        "prefill_check_ratio": best_check / best_generate,
    }


_RSS_PROBE = """
import json, sys
from pathlib import Path
mode, folder = sys.argv[1], Path(sys.argv[2])
from benchmarks.bench_llm import PROMPT, bare_llama, engine_for
if mode == "engine":
    from veriml.core.completion import canonical_request
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
            prefill = _prefill(engine, tokens, rounds)
        memory = _rss(folder)
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
        "goals": {"engine_tokens_per_s_ratio": 0.9},
        "goals_max": {"prefill_check_ratio": 0.2, "engine_rss_ratio": 1.3},
    }
