"""GGUF packages: header checks before allocation, the OMS digest, and folder dispatch."""

from __future__ import annotations

import ctypes
import shutil
import struct
from pathlib import Path

import pytest
from model_builders import write_model_folder

from _llm import gguf_bytes, smollm2_folder, smollm2_package  # noqa: F401
from veriml.core.errors import InvalidModelError
from veriml.models import LLMPackage, ModelPackage, load_package, model_digest
from veriml.models.examples import smollm2_gguf
from veriml.models.gguf import GGML_TYPE_SIZES, MAX_TENSORS, read_gguf_info


def _folder(tmp_path: Path, data: bytes, name: str = "model.gguf") -> Path:
    folder = tmp_path / "m"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(data)
    return folder


def test_smollm2_header_is_read(smollm2_package: LLMPackage) -> None:  # noqa: F811
    info = smollm2_package.metadata
    assert (info.architecture, info.context_length, info.vocab_size) == ("llama", 8192, 49152)
    assert (info.bos_token_id, info.eos_token_id) == (1, 2)
    assert info.chat_template is not None
    assert "<|im_start|>" in info.chat_template
    assert smollm2_package.io == {
        "kind": "gguf",
        "architecture": "llama",
        "context_length": 8192,
        "vocab_size": 49152,
        "chat_template": True,
    }
    assert smollm2_package.kind == "gguf"
    assert smollm2_package.card is not None
    assert smollm2_package.card.task == "text-generation"


def test_package_digest_is_model_signings(
    smollm2_folder: Path,  # noqa: F811
    smollm2_package: LLMPackage,  # noqa: F811
) -> None:
    assert smollm2_package.digest == model_digest(smollm2_folder)
    assert [e.path for e in smollm2_package.manifest] == ["README.md", "model.gguf"]


def test_synthetic_gguf_round_trips(tmp_path: Path) -> None:
    package = LLMPackage.load(_folder(tmp_path, gguf_bytes()))
    info = package.metadata
    assert (info.architecture, info.context_length, info.vocab_size) == ("llama", 64, 3)
    assert info.tensor_count == 1
    assert info.metadata_count == 6


def test_vocab_size_key_wins_over_token_count(tmp_path: Path) -> None:
    info = LLMPackage.load(_folder(tmp_path, gguf_bytes({"llama.vocab_size": 7}))).metadata
    assert info.vocab_size == 7


@pytest.mark.parametrize("cut", [0, 3, 10, 23, 40, 120, -1])
def test_truncated_gguf_is_invalid(tmp_path: Path, cut: int) -> None:
    data = gguf_bytes()
    with pytest.raises(InvalidModelError, match="truncated"):
        LLMPackage.load(_folder(tmp_path, data[:cut]))


def test_truncated_smollm2_is_invalid(tmp_path: Path) -> None:
    source = smollm2_gguf()
    folder = tmp_path / "cut"
    folder.mkdir()
    with source.open("rb") as f:
        (folder / "model.gguf").write_bytes(f.read(source.stat().st_size - 4096))
    with pytest.raises(InvalidModelError, match="tensor data runs past the end") as info:
        LLMPackage.load(folder)
    assert info.value.evidence["path"].endswith("model.gguf")


def test_garbage_is_not_gguf(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="magic"):
        LLMPackage.load(_folder(tmp_path, b"PK\x03\x04" + bytes(range(256)) * 4))


def test_unsupported_version(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="version") as info:
        LLMPackage.load(_folder(tmp_path, gguf_bytes(version=1)))
    assert info.value.evidence["version"] == 1


def test_huge_counts_are_refused_before_any_allocation(tmp_path: Path) -> None:
    header = b"GGUF" + struct.pack("<IQQ", 3, 2**60, 2**61) + b"\0" * 64
    with pytest.raises(InvalidModelError, match="header counts") as info:
        read_gguf_info(_folder(tmp_path, header) / "model.gguf")
    assert info.value.evidence["tensor_count"] == 2**60


def test_a_tensor_count_the_file_could_hold_is_still_bounded(tmp_path: Path) -> None:
    # 70,000 tensors fit in 2 MB of zeros (29 bytes each at least): without a bound of its
    # own the parser would build a list per tensor; the count is refused before the tables.
    count = MAX_TENSORS + 1
    header = b"GGUF" + struct.pack("<IQQ", 3, count, 0) + b"\0" * (count * 29)
    with pytest.raises(InvalidModelError, match="header counts") as info:
        read_gguf_info(_folder(tmp_path, header) / "model.gguf")
    assert info.value.evidence["limit"] == MAX_TENSORS


def test_huge_string_array_is_refused(tmp_path: Path) -> None:
    data = bytearray(gguf_bytes())
    # tokenizer.ggml.tokens: patch its count (after the key, type 9, item type 8) to 2^40.
    at = data.index(b"tokenizer.ggml.tokens") + len("tokenizer.ggml.tokens") + 8
    data[at : at + 8] = struct.pack("<Q", 2**40)
    with pytest.raises(InvalidModelError, match=r"tokenizer\.ggml\.tokens items"):
        read_gguf_info(_folder(tmp_path, bytes(data)) / "model.gguf")


def test_unknown_tensor_type_is_refused(tmp_path: Path) -> None:
    data = bytearray(gguf_bytes(tensors=(("w", (8, 4), 0),)))
    at = data.index(b"\x01\x00\x00\x00\x00\x00\x00\x00w") + 9 + 4 + 16  # name, n_dims, dims
    data[at : at + 4] = struct.pack("<I", 4)  # Q4_2: removed from ggml
    with pytest.raises(InvalidModelError, match="tensor type is unknown"):
        read_gguf_info(_folder(tmp_path, bytes(data)) / "model.gguf")


def test_missing_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match=r"general\.architecture"):
        LLMPackage.load(_folder(tmp_path, gguf_bytes({"general.architecture": ""})))


def test_type_table_matches_installed_ggml() -> None:
    """The block sizes come from ggml's type traits; check them against the library itself."""
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    lib = ctypes.CDLL(str(next(lib_dir.glob("libggml-base.so*"))))
    lib.ggml_type_size.restype, lib.ggml_type_size.argtypes = ctypes.c_size_t, [ctypes.c_int]
    lib.ggml_blck_size.restype, lib.ggml_blck_size.argtypes = ctypes.c_int64, [ctypes.c_int]
    for ggml_type, (block, size) in GGML_TYPE_SIZES.items():
        assert (lib.ggml_blck_size(ggml_type), lib.ggml_type_size(ggml_type)) == (block, size)


def test_chat_template_file_overrides_metadata(tmp_path: Path) -> None:
    folder = _folder(tmp_path, gguf_bytes())
    (folder / "chat_template.jinja").write_text("{{ 'x' }}")
    package = LLMPackage.load(folder)
    assert package.chat_template == "{{ 'x' }}"
    assert package.metadata.chat_template == "{{ messages[0]['content'] }}"


def test_several_gguf_files_need_a_main_one(tmp_path: Path) -> None:
    folder = _folder(tmp_path, gguf_bytes(), "a.gguf")
    (folder / "b.gguf").write_bytes(gguf_bytes())
    with pytest.raises(InvalidModelError, match="several"):
        LLMPackage.load(folder)
    (folder / "model.gguf").write_bytes(gguf_bytes())
    assert LLMPackage.load(folder).gguf_path.name == "model.gguf"


def test_load_package_dispatches_on_contents(tmp_path: Path) -> None:
    gguf = load_package(_folder(tmp_path, gguf_bytes()))
    onnx_folder = write_model_folder(tmp_path / "onnx")
    onnx = load_package(onnx_folder)
    assert isinstance(gguf, LLMPackage)
    assert gguf.kind == "gguf"
    assert isinstance(onnx, ModelPackage)
    assert onnx.kind == "onnx"
    shutil.copy(gguf.gguf_path, onnx_folder / "model.gguf")
    with pytest.raises(InvalidModelError, match="both"):
        load_package(onnx_folder)
