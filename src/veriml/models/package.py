"""A validated model package: a folder with one main ONNX file, its digest, IO and card.

Layout (any other files, such as a tokenizer or config, are covered by the digest too)::

    my-model/
      model.onnx          the main graph (or the only *.onnx file)
      weights.bin         optional external data, referenced by relative location
      README.md           optional model card (YAML front matter)
      model.sig           optional OMS signature bundle (excluded from the digest)

:meth:`ModelPackage.load` checks, in order: the folder walk against :class:`Limits` (from
``stat``, symlinks and special files refused), which ONNX file is the main one, the ONNX file
(size, protobuf, external-data locations, opset range, ``onnx.checker`` full check), the model
card, and finally computes the OMS root digest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import onnx

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
from veriml.models.gguf import LLMPackage
from veriml.models.signature import IOSignature, io_signature
from veriml.models.validate import (
    Limits,
    external_data_files,
    find_main_file,
    onnx_opsets,
    scan_folder,
    validate_onnx,
)

__all__ = ["MAIN_ONNX", "ModelPackage", "find_onnx", "load_package"]

MAIN_ONNX = "model.onnx"


def find_onnx(root: Path, files: tuple[Path, ...]) -> Path:
    """The main ONNX file: ``model.onnx`` if present, else the single ``*.onnx`` file."""
    return find_main_file(root, files, MAIN_ONNX)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelPackage:
    """A model folder that passed validation.

    >>> pkg = ModelPackage.load(Path("my-model"))  # doctest: +SKIP
    >>> pkg.digest, pkg.io.inputs[0].name  # doctest: +SKIP
    """

    # Code that handles both kinds branches on this (LLMPackage.kind is "gguf").
    kind: ClassVar[Literal["onnx"]] = "onnx"

    path: Path
    onnx_path: Path
    digest: Digest
    io: IOSignature
    opsets: dict[str, int]
    size: int
    card: ModelCard | None
    limits: Limits
    # Every file under the digest, by relative POSIX path. The root digest hashes the file
    # digests in path order but not the names; this (what OMS signatures list) binds both.
    manifest: tuple[ManifestEntry, ...] = ()

    @classmethod
    def load(cls, path: Path, *, limits: Limits | None = None) -> ModelPackage:
        """Validate the folder ``path`` and compute its digest; raise :class:`InvalidModelError`."""
        limits = limits if limits is not None else Limits()
        scan = scan_folder(path, limits)
        onnx_path = find_onnx(path, scan.files)
        graph = validate_onnx(onnx_path, limits, root=path)
        card = ModelCard.from_file(path / CARD_FILE, max_bytes=limits.max_card_bytes)
        manifest = hash_manifest(path)
        return cls(
            path=path,
            onnx_path=onnx_path,
            digest=root_digest(manifest),
            manifest=manifest_entries(manifest),
            io=io_signature(graph),
            opsets=onnx_opsets(graph),
            size=scan.size,
            card=card,
            limits=limits,
        )

    def load_proto(self) -> onnx.ModelProto:
        """The ONNX model with its external data, re-checking locations before reading any.

        The full ``onnx.checker`` pass ran in :meth:`load`; this re-parses the graph and
        re-proves every external-data location is inside the folder, since the folder may
        have changed in between.
        """
        model = validate_onnx(self.onnx_path, self.limits, root=self.path, full_check=False)
        if external_data_files(model, self.onnx_path, self.path):
            try:
                onnx.load_external_data_for_model(model, str(self.onnx_path.parent))
            except (OSError, ValueError, onnx.checker.ValidationError) as exc:
                raise InvalidModelError(
                    "cannot load external data", path=str(self.onnx_path), reason=str(exc)
                ) from exc
        return model

    @property
    def files_digest(self) -> Digest:
        """Digest of the file layout (paths and file digests); see :func:`files_digest`."""
        return files_digest(self.manifest)

    @property
    def signature_path(self) -> Path:
        """Where the OMS signature of this package is by default (``model.sig``)."""
        return self.path / DEFAULT_SIGNATURE_NAME

    def to_json(self) -> dict[str, Any]:
        """What ``veriml model inspect --json`` prints."""
        return {
            "path": str(self.path),
            "onnx": str(self.onnx_path.relative_to(self.path)),
            "digest": str(self.digest),
            "files_digest": str(self.files_digest),
            "size": self.size,
            "opsets": dict(self.opsets),
            "io": self.io.to_json(),
            "card": None if self.card is None else self.card.to_json(),
            "files": [{"path": e.path, "digest": str(e.digest)} for e in self.manifest],
        }


def load_package(path: Path, *, limits: Limits | None = None) -> ModelPackage | LLMPackage:
    """Load a model folder by what it holds: ``*.gguf`` -> :class:`LLMPackage`, ``*.onnx`` ->
    :class:`ModelPackage`. A folder with both is refused: which one runs must not be a guess.

    >>> load_package(Path("smollm2")).kind  # doctest: +SKIP
    'gguf'
    """
    scan = scan_folder(path, limits if limits is not None else Limits())
    suffixes = {p.suffix for p in scan.files}
    if ".gguf" in suffixes and ".onnx" in suffixes:
        raise InvalidModelError("model folder holds both .gguf and .onnx files", path=str(path))
    if ".gguf" in suffixes:
        return LLMPackage.load(path, limits=limits)
    return ModelPackage.load(path, limits=limits)
