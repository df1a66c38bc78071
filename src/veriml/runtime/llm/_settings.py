"""The pinned llama.cpp settings of an :class:`~veriml.runtime.llm.LLMEngine` and the runtime
fingerprint recorded in every completion receipt.

Everything that can change the bits of the logits is pinned here and named in the
fingerprint: the llama.cpp build (llama-cpp-python version), the context and batch sizes (the
batch splits the prompt into different matrix shapes), the thread count, the KV-cache types
(f16), flash attention (off), and the platform's float-relevant CPU features (llama.cpp picks
AVX2/AVX-512/NEON kernels at run time). Two receipts with equal fingerprints must hold equal
tokens for equal requests; a verifier seeing different fingerprints knows why bits may differ.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from typing import Any

from veriml.core.errors import FormatError
from veriml.runtime._fingerprint import platform_fingerprint

__all__ = ["LLMSettings", "llama_cpp_version"]


def llama_cpp_version() -> str:
    """The installed llama-cpp-python version, read without importing the library."""
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return "not-installed"


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMSettings:
    """llama.cpp context settings. ``n_ctx`` bounds prompt plus completion; ``n_batch`` is the
    largest batch one decode call takes (also the physical micro-batch); ``n_threads`` is used
    for both generation and prompt processing."""

    n_ctx: int = 2048
    n_batch: int = 512
    n_threads: int = 1

    def __post_init__(self) -> None:
        if self.n_ctx < 8 or self.n_batch < 1 or self.n_threads < 1:
            raise FormatError("LLM settings out of range", settings=repr(self))

    def fingerprint(self) -> dict[str, Any]:
        """The ``runtime`` member of a completion receipt."""
        return {
            "engine": "llama.cpp",
            "version": llama_cpp_version(),
            "n_ctx": self.n_ctx,
            "n_batch": self.n_batch,
            "n_threads": self.n_threads,
            "type_k": "f16",
            "type_v": "f16",
            "flash_attn": True,
            "extra_bufts": False,
            "platform": platform_fingerprint(),
        }
