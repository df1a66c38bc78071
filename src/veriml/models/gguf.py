"""GGUF language-model packages: a folder with one ``*.gguf`` file, checked and digested.

Layout (docs/llm.md, "Model packages")::

    smollm2-135m/
      model.gguf             the weights (or the only *.gguf file)
      chat_template.jinja    optional: overrides the template in the GGUF metadata
      README.md              optional model card (task: text-generation)
      model.sig              OMS signature (excluded from the digest)

The GGUF header is parsed here, not by llama.cpp, so the hub can validate an upload without
loading the weights, and so a hostile file is refused before any allocation sized by it.
Format: https://github.com/ggml-org/ggml/blob/master/docs/gguf.md (little-endian)::

    u32 magic "GGUF" | u32 version (2, 3) | u64 tensor_count | u64 metadata_kv_count
    metadata_kv_count x (string key, u32 value_type, value)
    tensor_count x (string name, u32 n_dims, n_dims x u64 dims, u32 ggml_type, u64 offset)
    padding to general.alignment (default 32), then the tensor data

Every count and length is checked against the bytes left in the file before it is used, so a
header claiming 2^60 tensors costs one comparison; the file is memory-mapped, read lazily, and
only the few values veriml needs are decoded. Every tensor must lie inside the file.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Final, Literal

from veriml.core.digest import Digest
from veriml.core.errors import InvalidModelError
from veriml.models.card import CARD_FILE, ModelCard
from veriml.models.digest import (
    DEFAULT_SIGNATURE_NAME,
    ManifestEntry,
    files_digest,
    hash_manifest,
    manifest_entries,
    root_digest,
)
from veriml.models.validate import Limits, find_main_file, scan_folder

__all__ = [
    "CHAT_TEMPLATE_FILE",
    "GGML_TYPE_SIZES",
    "MAIN_GGUF",
    "GGUFInfo",
    "LLMPackage",
    "find_gguf",
    "read_gguf_info",
]

MAIN_GGUF = "model.gguf"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
MAX_CHAT_TEMPLATE_BYTES: Final = 1 << 20
_MAGIC: Final = b"GGUF"
_VERSIONS: Final = frozenset({2, 3})
_DEFAULT_ALIGNMENT: Final = 32
# Keys are identifiers such as "llama.context_length"; a 64 KiB key is an attack, not a model.
_MAX_KEY_BYTES: Final = 1 << 16
_MAX_DIMS: Final = 4  # GGML_MAX_DIMS
# Counts bounded before any list is built: the largest published GGUF models hold about 2,000
# tensors and 60 metadata entries, while a forged count up to the file's size / 29 bytes would
# make a list of hundreds of millions of tuples out of an 8 GB upload.
MAX_TENSORS: Final = 1 << 16
MAX_METADATA: Final = 1 << 16

# GGUF metadata value types and the byte size of the fixed-size ones.
_UINT8, _INT8, _UINT16, _INT16, _UINT32, _INT32, _FLOAT32, _BOOL = range(8)
_STRING, _ARRAY, _UINT64, _INT64, _FLOAT64 = range(8, 13)
_SCALARS: Final[dict[int, str]] = {
    _UINT8: "<B",
    _INT8: "<b",
    _UINT16: "<H",
    _INT16: "<h",
    _UINT32: "<I",
    _INT32: "<i",
    _FLOAT32: "<f",
    _BOOL: "<?",
    _UINT64: "<Q",
    _INT64: "<q",
    _FLOAT64: "<d",
}

# ggml tensor types: id -> (elements per block, bytes per block), from ggml's type traits
# (ggml_blck_size / ggml_type_size; tests compare this table with the installed libggml).
GGML_TYPE_SIZES: Final[dict[int, tuple[int, int]]] = {
    0: (1, 4),  # F32
    1: (1, 2),  # F16
    2: (32, 18),  # Q4_0
    3: (32, 20),  # Q4_1
    6: (32, 22),  # Q5_0
    7: (32, 24),  # Q5_1
    8: (32, 34),  # Q8_0
    9: (32, 36),  # Q8_1
    10: (256, 84),  # Q2_K
    11: (256, 110),  # Q3_K
    12: (256, 144),  # Q4_K
    13: (256, 176),  # Q5_K
    14: (256, 210),  # Q6_K
    15: (256, 292),  # Q8_K
    16: (256, 66),  # IQ2_XXS
    17: (256, 74),  # IQ2_XS
    18: (256, 98),  # IQ3_XXS
    19: (256, 50),  # IQ1_S
    20: (32, 18),  # IQ4_NL
    21: (256, 110),  # IQ3_S
    22: (256, 82),  # IQ2_S
    23: (256, 136),  # IQ4_XS
    24: (1, 1),  # I8
    25: (1, 2),  # I16
    26: (1, 4),  # I32
    27: (1, 8),  # I64
    28: (1, 8),  # F64
    29: (256, 56),  # IQ1_M
    30: (1, 2),  # BF16
    34: (256, 54),  # TQ1_0
    35: (256, 66),  # TQ2_0
    39: (32, 17),  # MXFP4
    40: (64, 36),  # NVFP4
    41: (128, 18),  # Q1_0
    42: (64, 18),  # Q2_0
}


@dataclass(frozen=True, slots=True, kw_only=True)
class GGUFInfo:
    """What veriml reads from a GGUF header: enough to route, bound and template requests."""

    version: int
    architecture: str
    context_length: int
    vocab_size: int
    chat_template: str | None
    bos_token_id: int | None
    eos_token_id: int | None
    tensor_count: int
    metadata_count: int

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "architecture": self.architecture,
            "context_length": self.context_length,
            "vocab_size": self.vocab_size,
            "chat_template": self.chat_template is not None,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "tensor_count": self.tensor_count,
            "metadata_count": self.metadata_count,
        }


class _Reader:
    """A bounds-checked cursor over the mapped file; every overrun is an InvalidModelError."""

    def __init__(self, data: mmap.mmap, path: Path) -> None:
        self.data = data
        self.pos = 0
        self.path = path

    def fail(self, message: str, **evidence: Any) -> InvalidModelError:
        return InvalidModelError(
            f"GGUF {message}", path=str(self.path), offset=self.pos, **evidence
        )

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > len(self.data) - self.pos:
            raise self.fail(
                f"is truncated or corrupt: {what} runs past the end of the file",
                needed=n,
                available=len(self.data) - self.pos,
            )

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def u32(self, what: str) -> int:
        return int(self.scalar("<I", what))

    def u64(self, what: str) -> int:
        return int(self.scalar("<Q", what))

    def string_bytes(self, what: str, *, limit: int | None = None) -> bytes:
        n = self.u64(f"{what} length")
        if limit is not None and n > limit:
            raise self.fail(f"{what} is too long", length=n, limit=limit)
        self.need(n, what)
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def skip_string(self, what: str) -> None:
        n = self.u64(f"{what} length")
        self.need(n, what)
        self.pos += n

    def text(self, what: str, *, limit: int) -> str:
        raw = self.string_bytes(what, limit=limit)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not UTF-8", reason=str(exc)) from exc


def _read_value(r: _Reader, vtype: int, key: str, *, keep: bool) -> Any:
    """Read (``keep``) or skip one metadata value; arrays are never materialised, their
    length is returned instead so ``tokenizer.ggml.tokens`` gives the vocabulary size."""
    if vtype in _SCALARS:
        return r.scalar(_SCALARS[vtype], key)
    if vtype == _STRING:
        if keep:
            return r.text(key, limit=MAX_CHAT_TEMPLATE_BYTES)
        r.skip_string(key)
        return None
    if vtype == _ARRAY:
        item_type = r.u32(f"{key} item type")
        count = r.u64(f"{key} count")
        if item_type in _SCALARS:
            r.need(count * struct.calcsize(_SCALARS[item_type]), f"{key} items")
            r.pos += count * struct.calcsize(_SCALARS[item_type])
        elif item_type == _STRING:
            # Each string takes at least its 8-byte length: bound the loop by the file first.
            r.need(count * 8, f"{key} items")
            for _ in range(count):
                r.skip_string(f"{key} item")
        else:
            raise r.fail("array of arrays or unknown item type", key=key, item_type=item_type)
        return count
    raise r.fail("unknown metadata value type", key=key, value_type=vtype)


def _wanted(key: str) -> bool:
    return key in (
        "general.architecture",
        "general.alignment",
        "tokenizer.chat_template",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.tokens",
    ) or key.endswith((".context_length", ".vocab_size"))


def _as_int(value: Any, key: str, r: _Reader) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise r.fail("metadata value must be a non-negative integer", key=key, value=value)
    return value


def _parse(r: _Reader) -> GGUFInfo:
    r.need(4, "magic")
    if r.data[0:4] != _MAGIC:
        raise r.fail("magic is wrong (not a GGUF file)", found=bytes(r.data[0:4]).hex())
    r.pos = 4
    version = r.u32("version")
    if version not in _VERSIONS:
        raise r.fail("version is not supported", version=version, supported="2, 3")
    tensor_count = r.u64("tensor count")
    kv_count = r.u64("metadata count")
    if tensor_count > MAX_TENSORS or kv_count > MAX_METADATA:
        raise r.fail(
            "header counts are out of range",
            tensor_count=tensor_count,
            metadata_count=kv_count,
            limit=MAX_TENSORS,
        )
    # A metadata entry takes >= 13 bytes (8 key length + 1 key + 4 type); a tensor info >= 29.
    r.need(kv_count * 13 + tensor_count * 29, "header tables")
    meta: dict[str, Any] = {}
    for _ in range(kv_count):
        key = r.text("metadata key", limit=_MAX_KEY_BYTES)
        vtype = r.u32(f"{key} type")
        value = _read_value(r, vtype, key, keep=_wanted(key) and vtype == _STRING)
        if _wanted(key):
            meta[key] = value
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise r.fail("has no general.architecture")
    alignment = _as_int(meta.get("general.alignment", _DEFAULT_ALIGNMENT), "alignment", r)
    if alignment == 0 or alignment & (alignment - 1):
        raise r.fail("general.alignment must be a power of two", alignment=alignment)
    tensors: list[tuple[str, int, int]] = []
    for _ in range(tensor_count):
        name = r.text("tensor name", limit=_MAX_KEY_BYTES)
        n_dims = r.u32(f"{name} n_dims")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise r.fail("tensor rank out of range", tensor=name, n_dims=n_dims)
        elements = 1
        for _ in range(n_dims):
            elements *= r.u64(f"{name} dim")
        ggml_type = r.u32(f"{name} type")
        offset = r.u64(f"{name} offset")
        if ggml_type not in GGML_TYPE_SIZES:
            raise r.fail("tensor type is unknown", tensor=name, ggml_type=ggml_type)
        block, block_bytes = GGML_TYPE_SIZES[ggml_type]
        if elements % block:
            raise r.fail("tensor size is not a whole number of blocks", tensor=name)
        tensors.append((name, offset, elements // block * block_bytes))
    data_start = -(-r.pos // alignment) * alignment
    for name, offset, nbytes in tensors:
        if offset % alignment:
            raise r.fail("tensor data is misaligned", tensor=name, data_offset=offset)
        if data_start + offset + nbytes > len(r.data):
            raise r.fail(
                "is truncated: tensor data runs past the end of the file",
                tensor=name,
                end=data_start + offset + nbytes,
                size=len(r.data),
            )
    context = meta.get(f"{arch}.context_length")
    vocab = meta.get(f"{arch}.vocab_size", meta.get("tokenizer.ggml.tokens"))
    template = meta.get("tokenizer.chat_template")
    bos, eos = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    return GGUFInfo(
        version=version,
        architecture=arch,
        context_length=_as_int(context, f"{arch}.context_length", r),
        vocab_size=_as_int(vocab, f"{arch}.vocab_size", r),
        chat_template=template if isinstance(template, str) else None,
        bos_token_id=None if bos is None else _as_int(bos, "bos_token_id", r),
        eos_token_id=None if eos is None else _as_int(eos, "eos_token_id", r),
        tensor_count=tensor_count,
        metadata_count=kv_count,
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """Parse and check the header of the GGUF file ``path``; raise :class:`InvalidModelError`.

    >>> read_gguf_info(Path("model.gguf")).context_length  # doctest: +SKIP
    8192
    """
    try:
        with path.open("rb") as f:
            size = f.seek(0, 2)
            if size < 24:  # magic, version and both counts
                raise InvalidModelError(
                    "GGUF file is truncated (no header)", path=str(path), size=size
                )
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _parse(_Reader(data, path))
    except OSError as exc:
        raise InvalidModelError("cannot read GGUF file", path=str(path), reason=str(exc)) from exc


def find_gguf(root: Path, files: tuple[Path, ...]) -> Path:
    """The main GGUF file: ``model.gguf`` if present, else the single ``*.gguf`` file."""
    return find_main_file(root, files, MAIN_GGUF)


def _template_override(path: Path) -> str | None:
    file = path / CHAT_TEMPLATE_FILE
    if not file.is_file():
        return None
    if file.stat().st_size > MAX_CHAT_TEMPLATE_BYTES:
        raise InvalidModelError(
            "chat template is too large", path=str(file), limit=MAX_CHAT_TEMPLATE_BYTES
        )
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidModelError(
            "cannot read chat template", path=str(file), reason=str(exc)
        ) from exc


@dataclass(frozen=True, slots=True, kw_only=True)
class LLMPackage:
    """A GGUF model folder that passed validation (``kind == "gguf"``).

    >>> pkg = LLMPackage.load(Path("smollm2"))  # doctest: +SKIP
    >>> pkg.digest, pkg.metadata.context_length, pkg.io["kind"]  # doctest: +SKIP
    """

    kind: ClassVar[Literal["gguf"]] = "gguf"

    path: Path
    gguf_path: Path
    digest: Digest
    size: int
    card: ModelCard | None
    metadata: GGUFInfo
    limits: Limits
    # chat_template.jinja when the folder has one, else the GGUF's tokenizer.chat_template.
    chat_template: str | None
    manifest: tuple[ManifestEntry, ...] = ()

    @classmethod
    def load(cls, path: Path, *, limits: Limits | None = None) -> LLMPackage:
        """Validate the folder ``path`` (bounded walk, GGUF header, card) and digest it."""
        limits = limits if limits is not None else Limits()
        scan = scan_folder(path, limits)
        gguf_path = find_gguf(path, scan.files)
        info = read_gguf_info(gguf_path)
        card = ModelCard.from_file(path / CARD_FILE, max_bytes=limits.max_card_bytes)
        override = _template_override(path)
        manifest = hash_manifest(path)
        return cls(
            path=path,
            gguf_path=gguf_path,
            digest=root_digest(manifest),
            manifest=manifest_entries(manifest),
            size=scan.size,
            card=card,
            metadata=info,
            limits=limits,
            chat_template=override if override is not None else info.chat_template,
        )

    @property
    def files_digest(self) -> Digest:
        """Digest of the file layout (paths and file digests); see :func:`files_digest`."""
        return files_digest(self.manifest)

    @property
    def signature_path(self) -> Path:
        """Where the OMS signature of this package is by default (``model.sig``)."""
        return self.path / DEFAULT_SIGNATURE_NAME

    @property
    def io(self) -> dict[str, Any]:
        """What the hub records about the model's interface (docs/llm.md)."""
        return {
            "kind": "gguf",
            "architecture": self.metadata.architecture,
            "context_length": self.metadata.context_length,
            "vocab_size": self.metadata.vocab_size,
            "chat_template": self.chat_template is not None,
        }

    def to_json(self) -> dict[str, Any]:
        """What ``veriml model inspect --json`` prints."""
        return {
            "path": str(self.path),
            "kind": self.kind,
            "gguf": str(self.gguf_path.relative_to(self.path)),
            "digest": str(self.digest),
            "files_digest": str(self.files_digest),
            "size": self.size,
            "io": self.io,
            "gguf_header": self.metadata.to_json(),
            "card": None if self.card is None else self.card.to_json(),
            "files": [{"path": e.path, "digest": str(e.digest)} for e in self.manifest],
        }
