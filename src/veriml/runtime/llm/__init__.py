"""Verifiable LLM inference on GGUF models: llama.cpp evaluates, veriml samples and signs.

>>> from veriml.runtime.llm import LLMEngine, LLMSettings  # doctest: +SKIP
>>> engine = LLMEngine(LLMPackage.load(Path("smollm2")), LLMSettings(n_threads=1))  # doctest: +SKIP
>>> result = engine.run(canonical, key=node_key, request_id="r1", policy="none")  # doctest: +SKIP

``llama_cpp`` is imported when the first engine is built, never by importing this package:
:func:`sample` and :func:`draw` are pure and are what verifiers replay (docs/llm.md).
"""

from veriml.runtime.llm._engine import LLMEngine
from veriml.runtime.llm._results import Completion, CompletionResult, TokenEvent
from veriml.runtime.llm._settings import LLMSettings
from veriml.runtime.llm.sampler import TokenInterval, draw, sample, token_interval

__all__ = [
    "Completion",
    "CompletionResult",
    "LLMEngine",
    "LLMSettings",
    "TokenEvent",
    "TokenInterval",
    "draw",
    "sample",
    "token_interval",
]
