"""GGUF headers: any file parses (within its bounds) or is an InvalidModelError naming it, forged
counts and lengths cost a comparison, and a header read back gives the values written."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path
from typing import Any

from _fuzzing import attempt, fuzz_settings, mutated_bytes
from hypothesis import example, given
from hypothesis import strategies as st

from _llm import gguf_bytes
from veriml.core.errors import InvalidModelError
from veriml.models.gguf import GGML_TYPE_SIZES, MAX_METADATA, MAX_TENSORS, read_gguf_info

_FILE = Path(tempfile.mkdtemp(prefix="veriml-fuzz-gguf-")) / "model.gguf"

VALID = [
    gguf_bytes(),
    gguf_bytes({"llama.vocab_size": 32, "general.alignment": 64}, alignment=64),
    gguf_bytes(
        {"general.architecture": "qwen2", "qwen2.context_length": 8, "tokenizer.ggml.tokens": []},
        tensors=(("a", (256,), 12), ("b", (32, 2), 2), ("c", (3,), 0)),
        version=2,
    ),
]


def _string(raw: bytes) -> bytes:
    return struct.pack("<Q", len(raw)) + raw


def _value(draw: st.DrawFn, vtype: int) -> bytes:
    """A metadata value of ``vtype`` (any u32: the parser must refuse the unknown ones)."""
    scalars = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?"}
    scalars |= {10: "<Q", 11: "<q", 12: "<d"}
    if vtype in scalars:
        return draw(
            st.binary(
                min_size=struct.calcsize(scalars[vtype]), max_size=struct.calcsize(scalars[vtype])
            )
        )
    if vtype == 8:
        return _string(draw(st.binary(max_size=12) | st.sampled_from([b"llama", b"\xff\xfe"])))
    if vtype == 9:
        item = draw(st.integers(0, 13) | st.just(2**32 - 1))
        count = draw(st.integers(0, 4) | st.sampled_from([2**31, 2**63, 2**64 - 1]))
        body = b"".join(_value(draw, item) for _ in range(min(count, 4)) if item != 9)
        return struct.pack("<IQ", item, count) + body
    return b""


@st.composite
def headers(draw: st.DrawFn) -> bytes:
    """A GGUF header written field by field, counts true or forged, values of every type."""
    keys = ["general.architecture", "general.alignment", "llama.context_length", "llama.vocab_size"]
    keys += ["tokenizer.ggml.tokens", "tokenizer.chat_template", "tokenizer.ggml.bos_token_id", "x"]
    entries = []
    for _ in range(draw(st.integers(0, 6))):
        key = draw(st.sampled_from(keys)).encode()
        vtype = draw(st.integers(0, 13) | st.just(2**32 - 1))
        entries.append(_string(key) + struct.pack("<I", vtype) + _value(draw, vtype))
    tensors = []
    for _ in range(draw(st.integers(0, 3))):
        dims = draw(st.lists(st.sampled_from([0, 1, 32, 256, 2**32, 2**63]), max_size=5))
        ggml = draw(st.sampled_from(sorted(GGML_TYPE_SIZES)) | st.integers(0, 50))
        offset = draw(st.sampled_from([0, 32, 64, 2**63]))
        tensors.append(
            _string(b"t")
            + struct.pack("<I", len(dims))
            + b"".join(struct.pack("<Q", d) for d in dims)
            + struct.pack("<IQ", ggml, offset)
        )
    counts = (
        draw(st.sampled_from([len(tensors), MAX_TENSORS, MAX_TENSORS + 1, 2**64 - 1])),
        draw(st.sampled_from([len(entries), MAX_METADATA, MAX_METADATA + 1, 2**63])),
    )
    version = draw(st.sampled_from([2, 3, 1, 4]))
    head = b"GGUF" + struct.pack("<IQQ", version, *counts)
    return head + b"".join(entries) + b"".join(tensors) + bytes(draw(st.integers(0, 600)))


inputs = st.one_of(
    mutated_bytes(VALID),
    mutated_bytes(VALID),
    headers(),
    st.binary(max_size=64).map(lambda b: b"GGUF\x03\x00\x00\x00" + b),
)


def _info(data: bytes) -> Any:
    _FILE.write_bytes(data)
    return read_gguf_info(_FILE)


@fuzz_settings()
@given(inputs)
@example(VALID[0])
def test_a_gguf_header_parses_within_its_bounds_or_is_invalid_model(data: bytes) -> None:
    info, error = attempt(lambda: _info(data), allowed=(InvalidModelError,), size=len(data))
    if error is not None:
        assert error.evidence["path"] == str(_FILE)
        return
    assert info is not None
    assert info.tensor_count <= MAX_TENSORS
    assert info.metadata_count <= MAX_METADATA
    assert info.architecture
    if data == VALID[0]:
        assert (info.context_length, info.vocab_size, info.bos_token_id) == (64, 3, 1)
