"""The veriml exception hierarchy.

Every error veriml raises on purpose derives from :class:`Error`, so callers can catch one
type; each carries the evidence of what went wrong and renders it with :meth:`Error.diagnostics`.
Security outcomes are always exceptions, never a ``False`` return::

    Error
    ├── FormatError             bytes or text that do not parse as the format they claim
    │   ├── InvalidTensor       a tensor file or JSON tensor that is malformed or too large
    │   └── LimitExceeded       a body, upload or archive is bigger than a configured limit
    ├── KeyFileError            a key file that cannot be read (format, passphrase, type)
    ├── InvalidModel            a model folder or ONNX file that fails validation
    ├── InvalidInput            inputs that do not match a model's IO signature
    ├── ExecutionError          the engine failed to run a valid model on valid inputs
    ├── StorageError            a store or database could not do what was asked
    ├── NotFound                the asked-for entry, tile, proof or checkpoint does not exist
    ├── Conflict                the request contradicts recorded state (name taken, replay)
    ├── PaymentRequired         the coordinator charges for this and no valid payment came
    ├── NodeUnavailable         a remote service did not answer
    └── VerificationError       a check of evidence failed (fails closed)
        ├── SignatureError      a signature does not verify, or no trusted key signed
        ├── DigestMismatch      a recomputed digest differs from the claimed one
        ├── RootMismatchError   a Merkle root recomputed from a proof differs from the expected
        ├── LogInconsistency    two views of a log cannot both be true
        └── ReexecutionMismatch re-running the computation gave different outputs

The CLI prints ``diagnostics()`` as one line and exits with :attr:`Error.exit_code`:
1 for failed verification and service failures, 2 for bad input (a usage error).
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "Conflict",
    "DigestMismatch",
    "Error",
    "ExecutionError",
    "FormatError",
    "InvalidInput",
    "InvalidModel",
    "InvalidTensor",
    "KeyFileError",
    "LimitExceeded",
    "LogInconsistency",
    "NodeUnavailable",
    "NotFound",
    "PaymentRequired",
    "ReexecutionMismatch",
    "RootMismatchError",
    "SignatureError",
    "StorageError",
    "VerificationError",
]


class Error(Exception):
    """Root of every error veriml raises on purpose."""

    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, **evidence: Any) -> None:
        super().__init__(message)
        self.message = _utf8(message)
        self.evidence: dict[str, Any] = {
            k: _printable(v) for k, v in evidence.items() if v is not None
        }

    def diagnostics(self) -> str:
        """A human-readable account of the failure and its evidence, on one line."""
        if not self.evidence:
            return self.message
        details = ", ".join(f"{k}={_show(v)}" for k, v in self.evidence.items())
        return f"{self.message} ({details})"

    def __str__(self) -> str:
        return self.diagnostics()


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can hold it: a hostile JSON string may carry a lone surrogate
    (``"\\ud800"``), which no UTF-8 text can; it is kept as a backslash escape, so every
    diagnostic prints and every problem document renders."""
    return text if text.isascii() else text.encode(errors="backslashreplace").decode()


def _printable(value: Any, depth: int = 0) -> Any:
    """Evidence with every string (in lists and objects too) made :func:`_utf8`."""
    if isinstance(value, str):
        return _utf8(value)
    if depth < 8 and isinstance(value, list):
        return [_printable(v, depth + 1) for v in value]
    if depth < 8 and isinstance(value, tuple):
        return tuple(_printable(v, depth + 1) for v in value)
    if depth < 8 and isinstance(value, dict):
        return {_printable(k, depth + 1): _printable(v, depth + 1) for k, v in value.items()}
    return value


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


class FormatError(Error):
    """Input bytes or text do not follow the format they claim to be."""

    exit_code = 2


class InvalidTensor(FormatError):
    """A tensor (npy file, JSON object, raw bytes) is malformed, unsupported or too large."""


class LimitExceeded(FormatError):
    """A body, upload or archive exceeds a configured size limit (HTTP 413); ``limit`` is it."""


class KeyFileError(Error):
    """A key could not be loaded: bad PEM, wrong passphrase, or the wrong kind of key."""

    exit_code = 2


class InvalidModel(Error):
    """A model folder or ONNX file fails validation. ``path`` names the file at fault."""

    exit_code = 2


class InvalidInput(Error):
    """Inputs do not match the model's IO signature: names, dtypes, ranks or static dims."""

    exit_code = 2


class ExecutionError(Error):
    """The engine failed while running a model that passed validation."""


class StorageError(Error):
    """A blob store, database or log storage operation failed."""


class NotFound(Error):
    """The asked-for thing (log entry, tile, proof size, checkpoint) does not exist (yet)."""

    exit_code = 2


class Conflict(Error):
    """The request contradicts recorded state: a name@version bound to another digest, a
    replayed message. Retrying the same request gives the same answer (HTTP 409)."""

    exit_code = 2


class PaymentRequired(Error):
    """The coordinator charges fees (its rules' ``fee_per_job``) and the request carried no
    signed payment that covers them, or the payer's balance does not (HTTP 402)."""

    exit_code = 2


class NodeUnavailable(Error):
    """A remote service (node, coordinator, witness) could not be reached in time."""


class VerificationError(Error):
    """A check of evidence failed. ``check`` names the check, as in the verification steps."""

    def __init__(self, message: str, *, check: str | None = None, **evidence: Any) -> None:
        super().__init__(message, **evidence)
        self.check = check

    def diagnostics(self) -> str:
        text = super().diagnostics()
        return f"{self.check}: {text}" if self.check else text


class SignatureError(VerificationError):
    """A signature does not verify, or none was made by a trusted key."""


class DigestMismatch(VerificationError):
    """A digest recomputed from the data differs from the one claimed."""

    def __init__(
        self, message: str, *, expected: object, calculated: object, check: str | None = None
    ) -> None:
        super().__init__(message, check=check, expected=expected, calculated=calculated)
        self.expected = expected
        self.calculated = calculated


class RootMismatchError(VerificationError):
    """The Merkle root recomputed from a proof differs from the expected root."""

    def __init__(
        self,
        message: str,
        *,
        expected: bytes,
        calculated: bytes,
        check: str | None = None,
    ) -> None:
        super().__init__(message, check=check, expected=expected, calculated=calculated)
        self.expected = expected
        self.calculated = calculated


class LogInconsistency(VerificationError):
    """Two views of a log (checkpoints, tiles, entries) cannot both be true."""


class ReexecutionMismatch(VerificationError):
    """Re-executing the computation produced outputs that differ from the recorded ones."""
