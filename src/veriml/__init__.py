"""veriml: an open, self-hostable trust layer for AI.

The public API. Heavy parts (ONNX Runtime, model-signing) load on first use, so that
``import veriml`` and the CLI start quickly::

    import veriml

    node = veriml.generate_key("ed25519")
    result = veriml.run(Path("my-model"), {"x": x}, key=node)
    veriml.verify_receipt(result, node_key=node.public, model=Path("my-model"))

Sub-packages with their own public surface: :mod:`veriml.models`, :mod:`veriml.runtime`,
:mod:`veriml.verify`, :mod:`veriml.tlog`, :mod:`veriml.client` (the network SDK); errors in
:mod:`veriml.errors`.

``pip install veriml`` is the SDK, the CLI and offline verification; nodes, servers and LLMs
come in extras (docs/models.md, "Installing"). Importing a part whose extra is missing raises
``MissingExtraError`` naming the ``pip install`` that fixes it (:mod:`veriml._extras`).
"""

from __future__ import annotations

import importlib.abc
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING

from veriml.core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "Digest": "veriml.core",
    "Envelope": "veriml.core",
    "Statement": "veriml.core",
    "SigningKey": "veriml.core",
    "VerifyingKey": "veriml.core",
    "generate_key": "veriml.core",
    "load_private_key": "veriml.core",
    "load_public_key": "veriml.core",
    "tensor_digest": "veriml.core",
    "Error": "veriml.core.errors",
    "VerificationError": "veriml.core.errors",
    "ModelPackage": "veriml.models",
    "model_digest": "veriml.models",
    "sign_model": "veriml.models",
    "verify_model": "veriml.models",
    "Profile": "veriml.runtime",
    "RunResult": "veriml.runtime",
    "run": "veriml.runtime",
    "VerifiedReceipt": "veriml.verify",
    "verify_receipt": "veriml.verify",
    "Client": "veriml.client",
    "AsyncClient": "veriml.client",
    "InferenceResult": "veriml.client",
    "verify_inference_file": "veriml.client",
}

__all__ = [
    "AsyncClient",
    "Client",
    "Digest",
    "Envelope",
    "Error",
    "InferenceResult",
    "ModelPackage",
    "Profile",
    "RunResult",
    "SigningKey",
    "Statement",
    "VerificationError",
    "VerifiedReceipt",
    "VerifyingKey",
    "__version__",
    "generate_key",
    "load_private_key",
    "load_public_key",
    "model_digest",
    "run",
    "sign_model",
    "tensor_digest",
    "verify_inference_file",
    "verify_model",
    "verify_receipt",
]

if TYPE_CHECKING:
    from veriml.client import AsyncClient, Client, InferenceResult, verify_inference_file
    from veriml.core import (
        Digest,
        Envelope,
        SigningKey,
        Statement,
        VerifyingKey,
        generate_key,
        load_private_key,
        load_public_key,
        tensor_digest,
    )
    from veriml.core.errors import Error, VerificationError
    from veriml.models import ModelPackage, model_digest, sign_model, verify_model
    from veriml.runtime import Profile, RunResult, run
    from veriml.verify import VerifiedReceipt, verify_receipt


class _ExtrasGuard(importlib.abc.MetaPathFinder):
    """Checks a veriml module's extra (:func:`veriml._extras.check`) before the import system
    looks for it, then defers to the other finders. ``veriml.core`` is never guarded: the check
    itself imports it (for the error class), and so does every other veriml package."""

    def __init__(self) -> None:
        self._busy = False

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> None:
        if self._busy or not fullname.startswith("veriml.") or fullname.startswith(_UNGUARDED):
            return
        self._busy = True  # the check's own imports pass straight through
        try:
            from veriml._extras import check

            check(fullname)
        finally:
            self._busy = False


_UNGUARDED = ("veriml.core", "veriml._extras")

if not any(isinstance(finder, _ExtrasGuard) for finder in sys.meta_path):
    sys.meta_path.insert(0, _ExtrasGuard())


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
