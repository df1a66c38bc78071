"""ONNX validation on load: sizes from ``stat`` first, then the protobuf, external-data
locations, the opset range, and finally ``onnx.checker`` with ``full_check``.

The order matters. Nothing is read before its size is known to be within :class:`Limits`, and
no external data is opened before every ``location`` in the graph is known to stay inside the
model folder (``..``, absolute paths and symlinks pointing out are refused), so a hostile
package cannot make veriml read ``/etc/passwd`` or allocate 100 GB.

External data follows https://onnx.ai/onnx/repo-docs/ExternalData.html: a tensor whose
``data_location`` is ``EXTERNAL`` names a ``location`` relative to the ONNX file's folder and
optional ``offset`` and ``length``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import onnx
from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]

from veriml.core.errors import InvalidModelError
from veriml.models.digest import GIT_PATHS

__all__ = ["Limits", "external_data_files", "onnx_opsets", "scan_folder", "validate_onnx"]

DEFAULT_DOMAIN = "ai.onnx"


def _max_opset() -> int:
    return int(onnx.defs.onnx_opset_version())


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Bounds a model package must respect; all are checked from ``stat`` before reading.

    ``min_opset``..``max_opset`` bound the default (``ai.onnx``) domain: below 7 the operator
    semantics predate what ONNX Runtime implements; above the installed ``onnx`` maximum the
    checker cannot know the operators.
    """

    max_files: int = 10_000
    max_total_bytes: int = 64 << 30
    # A protobuf message cannot exceed 2 GiB; bigger weights belong in external data.
    max_onnx_bytes: int = (2 << 30) - 1
    max_card_bytes: int = 1 << 20
    min_opset: int = 7
    max_opset: int = field(default_factory=_max_opset)

    def __post_init__(self) -> None:
        if (
            self.min_opset > self.max_opset
            or min(self.max_files, self.max_total_bytes, self.max_onnx_bytes, self.max_card_bytes)
            < 0
        ):
            raise InvalidModelError("inconsistent model limits", limits=repr(self))


@dataclass(frozen=True, slots=True)
class FolderScan:
    """What a bounded walk of a model folder found: regular files and their total size."""

    files: tuple[Path, ...]
    size: int


# Git metadata at the top of the folder is outside the digest; its size is not the model's.
_SKIPPED_DIRS = frozenset(GIT_PATHS)


def find_main_file(root: Path, files: tuple[Path, ...], main: str) -> Path:
    """A package's main file: ``main`` (``model.onnx``, ``model.gguf``) if present, else the
    single file with its suffix; none, or several without ``main``, is
    :class:`InvalidModelError`."""
    if root / main in files:
        return root / main
    suffix = Path(main).suffix
    candidates = sorted(p for p in files if p.suffix == suffix)
    if not candidates:
        raise InvalidModelError(f"model folder has no {suffix} file", path=str(root))
    if len(candidates) > 1:
        raise InvalidModelError(
            f"model folder has several {suffix} files; name the main one {main}",
            path=str(root),
            found=", ".join(str(p.relative_to(root)) for p in candidates[:5]),
        )
    return candidates[0]


def scan_folder(root: Path, limits: Limits) -> FolderScan:
    """Walk ``root`` with ``lstat`` only, refusing symlinks, special files and excess.

    Stops at the first file past ``max_files`` or the first byte past ``max_total_bytes``,
    so a huge folder costs no more than the limit to reject.
    """
    if root.is_symlink() or not root.is_dir():
        raise InvalidModelError("a model is a folder (not a symlink)", path=str(root))
    files: list[Path] = []
    total = 0
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in _SKIPPED_DIRS]
        for name in sorted(dirnames):
            if (here / name).is_symlink():
                raise InvalidModelError("model folder holds a symlink", path=str(here / name))
        for name in sorted(filenames):
            p = here / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                raise InvalidModelError("model folder holds a symlink", path=str(p))
            if not stat.S_ISREG(st.st_mode):
                raise InvalidModelError("model folder holds a special file", path=str(p))
            files.append(p)
            total += st.st_size
            if len(files) > limits.max_files:
                raise InvalidModelError(
                    "model folder has too many files", path=str(root), limit=limits.max_files
                )
            if total > limits.max_total_bytes:
                raise InvalidModelError(
                    "model folder is too large",
                    path=str(root),
                    size_at_least=total,
                    limit=limits.max_total_bytes,
                )
    return FolderScan(tuple(files), total)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _attribute_tensors(node.attribute)


def _attribute_tensors(
    attributes: Iterator[onnx.AttributeProto] | list[onnx.AttributeProto],
) -> Iterator[onnx.TensorProto]:
    for attr in attributes:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for g in attr.graphs:
            yield from _graph_tensors(g)


def _all_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _attribute_tensors(node.attribute)


def _external_location(tensor: onnx.TensorProto, onnx_path: Path) -> tuple[str, int, int | None]:
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise InvalidModelError(
            "external data offset/length is not an integer", path=str(onnx_path), tensor=tensor.name
        ) from exc
    if offset < 0 or (length is not None and length < 0):
        raise InvalidModelError("negative external data offset/length", path=str(onnx_path))
    return location, offset, length


def external_data_files(model: onnx.ModelProto, onnx_path: Path, root: Path) -> tuple[Path, ...]:
    """The external-data files ``model`` refers to, each proven to lie inside ``root``.

    Refuses an empty location, an absolute path (POSIX or Windows), any ``..`` component, a
    location that resolves (through symlinks) outside ``root``, a missing or non-regular file,
    and an ``offset``/``length`` past the end of the file.
    """
    base = onnx_path.parent
    resolved_root = root.resolve()
    found: dict[Path, int] = {}
    for tensor in _all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location, offset, length = _external_location(tensor, onnx_path)
        evidence = {"path": str(onnx_path), "tensor": tensor.name, "location": location}
        posix, windows = PurePosixPath(location), PureWindowsPath(location)
        if not location or posix.is_absolute() or windows.is_absolute() or windows.drive:
            raise InvalidModelError("external data location must be a relative path", **evidence)
        if ".." in posix.parts or ".." in windows.parts:
            raise InvalidModelError("external data location escapes the model folder", **evidence)
        if "\x00" in location:  # no file system path holds one; resolve() raises ValueError
            raise InvalidModelError("external data location holds a NUL character", **evidence)
        target = (base / posix).resolve()
        if not target.is_relative_to(resolved_root):
            raise InvalidModelError(
                "external data location resolves outside the model folder (symlink)",
                resolved=str(target),
                **evidence,
            )
        try:
            st = target.stat()
        except OSError as exc:
            raise InvalidModelError("external data file is missing", **evidence) from exc
        if not stat.S_ISREG(st.st_mode):
            raise InvalidModelError("external data location is not a regular file", **evidence)
        end = offset + (length if length is not None else 0)
        if offset > st.st_size or end > st.st_size:
            raise InvalidModelError(
                "external data offset/length runs past the end of the file",
                file_size=st.st_size,
                end=end,
                **evidence,
            )
        found[target] = st.st_size
    return tuple(sorted(found))


def onnx_opsets(model: onnx.ModelProto) -> dict[str, int]:
    """Operator set imports, domain -> version; the default domain is named ``ai.onnx``."""
    return {(op.domain or DEFAULT_DOMAIN): int(op.version) for op in model.opset_import}


def _parse(path: Path, limits: Limits) -> onnx.ModelProto:
    try:
        st = path.stat()
    except OSError as exc:
        raise InvalidModelError(
            "cannot read ONNX file", path=str(path), reason=exc.strerror
        ) from exc
    if not stat.S_ISREG(st.st_mode):
        raise InvalidModelError("ONNX model is not a regular file", path=str(path))
    if st.st_size > limits.max_onnx_bytes:
        raise InvalidModelError(
            "ONNX file is too large", path=str(path), size=st.st_size, limit=limits.max_onnx_bytes
        )
    if st.st_size == 0:
        raise InvalidModelError("ONNX file is empty", path=str(path))
    try:
        return onnx.load_model(str(path), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(
            "ONNX file is malformed or truncated (protobuf does not parse)",
            path=str(path),
            reason=str(exc) or type(exc).__name__,
        ) from exc


def validate_onnx(
    path: Path,
    limits: Limits | None = None,
    *,
    root: Path | None = None,
    full_check: bool = True,
) -> onnx.ModelProto:
    """Validate the ONNX file ``path``; return its graph (external data not loaded).

    ``root`` is the folder external data must stay in (default: the file's folder). With
    ``full_check`` the ``onnx.checker`` runs with shape inference, on the path so external
    data and files over 2 GB work. Every failure is an :class:`InvalidModelError` naming the file.
    """
    limits = limits if limits is not None else Limits()
    root = root if root is not None else path.parent
    model = _parse(path, limits)
    if not model.HasField("graph"):
        raise InvalidModelError("ONNX file has no graph (truncated or not a model)", path=str(path))
    external_data_files(model, path, root)
    opsets = onnx_opsets(model)
    version = opsets.get(DEFAULT_DOMAIN)
    if version is None:
        raise InvalidModelError("ONNX model imports no ai.onnx opset", path=str(path))
    if not limits.min_opset <= version <= limits.max_opset:
        raise InvalidModelError(
            "unsupported opset",
            path=str(path),
            opset=version,
            allowed=f"{limits.min_opset}..{limits.max_opset}",
        )
    if full_check:
        try:
            onnx.checker.check_model(str(path), full_check=True)
        except (
            onnx.checker.ValidationError,
            onnx.shape_inference.InferenceError,
            # The checker's Python layer raises ValueError (incl. UnicodeDecodeError) for
            # corrupt strings and unknown tensor types (found by mutating valid models).
            ValueError,
        ) as exc:
            reason = str(exc).strip().splitlines()
            raise InvalidModelError(
                "ONNX checker rejects the model",
                path=str(path),
                reason=reason[0] if reason else type(exc).__name__,
            ) from exc
    return model
