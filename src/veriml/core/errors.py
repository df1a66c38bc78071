"""The veriml exception hierarchy, public as :mod:`veriml.errors` (import it from there).

Every error veriml raises on purpose derives from :class:`Error`, so callers can catch one
type; each carries the evidence of what went wrong and renders it with :meth:`Error.diagnostics`.
Security outcomes are always exceptions, never a ``False`` return::

    Error
    ├── FormatError                 bytes or text that do not parse as the format they claim
    │   ├── InvalidTensorError      a tensor file or JSON tensor that is malformed or too large
    │   └── LimitExceededError      a body, upload or archive is bigger than a configured limit
    ├── KeyFileError                a key file that cannot be read (format, passphrase, type)
    ├── InvalidModelError           a model folder or ONNX file that fails validation
    ├── InvalidInputError           inputs that do not match a model's IO signature
    ├── ExecutionError              the engine failed to run a valid model on valid inputs
    ├── StorageError                a store or database could not do what was asked
    ├── NotFoundError               the asked-for entry, tile, proof or checkpoint does not exist
    ├── ConflictError               the request contradicts recorded state (name taken, replay)
    ├── PaymentRequiredError        the coordinator charges for this and no valid payment came
    ├── NodeUnavailableError        a remote service did not answer
    └── VerificationError           a check of evidence failed (fails closed)
        ├── SignatureError          a signature does not verify, or no trusted key signed
        ├── DigestMismatchError     a recomputed digest differs from the claimed one
        ├── RootMismatchError       a Merkle root recomputed from a proof differs from the expected
        ├── LogInconsistencyError   two views of a log cannot both be true
        └── ReexecutionMismatchError re-running the computation gave different outputs

The CLI prints ``diagnostics()`` as one line and exits with :attr:`Error.exit_code`:
1 for failed verification and service failures, 2 for bad input (a usage error).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "Check",
    "ConflictError",
    "DigestMismatchError",
    "Error",
    "ExecutionError",
    "FormatError",
    "InvalidInputError",
    "InvalidModelError",
    "InvalidTensorError",
    "KeyFileError",
    "LimitExceededError",
    "LogInconsistencyError",
    "NodeUnavailableError",
    "NotFoundError",
    "PaymentRequiredError",
    "ReexecutionMismatchError",
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


class InvalidTensorError(FormatError):
    """A tensor (npy file, JSON object, raw bytes) is malformed, unsupported or too large."""


class LimitExceededError(FormatError):
    """A body, upload or archive exceeds a configured size limit (HTTP 413); ``limit`` is it."""


class KeyFileError(Error):
    """A key could not be loaded: bad PEM, wrong passphrase, or the wrong kind of key."""

    exit_code = 2


class InvalidModelError(Error):
    """A model folder or ONNX file fails validation. ``path`` names the file at fault."""

    exit_code = 2


class InvalidInputError(Error):
    """Inputs do not match the model's IO signature: names, dtypes, ranks or static dims."""

    exit_code = 2


class ExecutionError(Error):
    """The engine failed while running a model that passed validation."""


class StorageError(Error):
    """A blob store, database or log storage operation failed."""


class NotFoundError(Error):
    """The asked-for thing (log entry, tile, proof size, checkpoint) does not exist (yet)."""

    exit_code = 2


class ConflictError(Error):
    """The request contradicts recorded state: a name@version bound to another digest, a
    replayed message. Retrying the same request gives the same answer (HTTP 409)."""

    exit_code = 2


class PaymentRequiredError(Error):
    """The coordinator charges fees (its rules' ``fee_per_job``) and the request carried no
    signed payment that covers them, or the payer's balance does not (HTTP 402)."""

    exit_code = 2


class NodeUnavailableError(Error):
    """A remote service (node, coordinator, witness) could not be reached in time."""


class Check(StrEnum):
    """The published names of the checks a :class:`VerificationError` reports (its ``check``).

    The values are stable: they appear in JSON outputs, problem documents and CLI lines, and
    docs/verification.md ("Check names") lists them. A new check adds a member here, so a
    misspelt name fails where the error is built, not in a user's parser.
    """

    # Signatures, envelopes and in-toto statements (core, models)
    SIGNATURE = "signature"
    PAYLOAD_TYPE = "payload-type"
    STATEMENT = "statement"
    STATEMENT_TYPE = "statement-type"
    PREDICATE = "predicate"
    PREDICATE_TYPE = "predicate-type"
    SUBJECT = "subject"
    # Model folders: digests, signatures, certificates (models)
    MODEL_DIGEST = "model-digest"
    ROOT_DIGEST = "root-digest"
    FILE_DIGEST = "file-digest"
    FILES = "files"
    BLOB_DIGEST = "blob-digest"
    BLOB_SIZE = "blob-size"
    CACHE = "cache"
    CERTIFICATE = "certificate"
    PUBLIC_KEY = "public-key"
    SERIALIZATION = "serialization"
    SIGNATURE_FILE = "signature-file"
    # Merkle trees, checkpoints, tiles and witnesses (tlog)
    ROOT = "root"
    SIZE = "size"
    SIZE2 = "size2"
    SIZES = "sizes"
    NODE = "node"
    NODE_COUNT = "node count"
    NODE_ID = "node id"
    NODE_HASH_SIZE = "node hash size"
    LEAF_HASH_SIZE = "leaf hash size"
    PROOF_HASH_SIZE = "proof hash size"
    RANGE_HASH_SIZE = "range hash size"
    ROOT_SIZE = "root size"
    ROOT1_SIZE = "root1 size"
    PROOF_LENGTH = "proof length"
    RANGE_LENGTH = "range length"
    INCLUSION = "inclusion"
    CONSISTENCY = "consistency"
    CONSISTENCY_ROOT1 = "consistency root1"
    CONSISTENCY_ROOT2 = "consistency root2"
    ROLLBACK = "rollback"
    SPLIT_VIEW = "split view"
    TREE = "tree"
    TILE = "tile"
    TILE_ROOT = "tile root"
    TILE_WIDTH = "tile width"
    ENTRY = "entry"
    BUNDLE = "bundle"
    INDEX = "index"
    ORIGIN = "origin"
    POLICY = "policy"
    LOG_SIGNATURE = "log signature"
    LOG_KEY = "log-key"
    NOTE_SIGNATURE = "note signature"
    NOTE_SIGNERS = "note signers"
    COSIGNATURE = "cosignature"
    COSIGNATURE_LENGTH = "cosignature length"
    WITNESS = "witness"
    WITNESS_QUORUM = "witness quorum"
    WITNESS_SIZE = "witness size"
    CHECKPOINT = "checkpoint"
    EVIDENCE = "evidence"
    # Signed protocol messages: descriptors, jobs, heartbeats, requests (protocol, node)
    DESCRIPTOR = "descriptor"
    MESSAGE_TYPE = "message-type"
    HEARTBEAT = "heartbeat"
    FRESHNESS = "freshness"
    COORDINATOR_KEY = "coordinator-key"
    ACCESS = "access"
    JOB_EXPIRED = "job-expired"
    JOB_INPUTS = "job-inputs"
    JOB_NODE = "job-node"
    JOB_REQUEST = "job-request"
    JOB_RETENTION = "job-retention"
    JOB_SIGNATURE = "job-signature"
    JOB_TIME = "job-time"
    JOB_VALIDITY = "job-validity"
    OPERATOR_BINDING = "operator-binding"
    LEDGER_REQUEST = "ledger-request"
    REQUEST_SIGNATURE = "request-signature"
    REQUEST_BINDING = "request-binding"
    REQUEST_REPLAY = "request-replay"
    PREFILL_CHECK = "prefill-check"
    # Answers and their receipts: inference, completions, streams (verify, client, coordinator)
    REQUEST = "request"
    REQUEST_DIGEST = "request-digest"
    INPUT_DIGEST = "input-digest"
    OUTPUT = "output"
    OUTPUT_DIGEST = "output-digest"
    RESULT = "result"
    PROMPT = "prompt"
    PROMPT_TOKENS = "prompt-tokens"
    TENSOR = "tensor"
    STREAM = "stream"
    NODE_KEY = "node-key"
    TRACE_ROOT = "trace-root"
    REEXECUTION = "reexecution"
    TOLERANCE = "tolerance"
    PROVENANCE = "provenance"
    VERDICT = "verdict"
    EPOCH = "epoch"
    WINDOW = "window"
    SPOT = "spot"
    OPTIMISTIC = "optimistic"
    DRAW = "draw"
    REVEAL = "reveal"
    # Disputes, bonds, payments and the ledger (verify, ledger, coordinator, cli)
    DISPUTES = "disputes"
    DISPUTE = "dispute"
    DISPUTE_PARTY = "dispute-party"
    REFEREE_INPUT = "referee-input"
    BONDS = "bonds"
    BOND_AUTHORIZATION = "bond-authorization"
    PAYMENT = "payment"
    PUBLISHER_KEY = "publisher-key"
    NAMESPACE = "namespace"
    LEDGER = "ledger"


class VerificationError(Error):
    """A check of evidence failed. ``check`` names the check (a :class:`Check`; a string is
    taken if it is the value of one, and any other string is refused with ``ValueError``)."""

    def __init__(self, message: str, *, check: Check | str | None = None, **evidence: Any) -> None:
        super().__init__(message, **evidence)
        self.check: Check | None = None if check is None else _check(check)

    def diagnostics(self) -> str:
        text = super().diagnostics()
        return f"{self.check}: {text}" if self.check else text


def _check(name: Check | str) -> Check:
    """``name`` as a :class:`Check`: a programming error (``ValueError``) if it is none."""
    try:
        return Check(name)
    except ValueError:
        raise ValueError(
            f"unknown check name {name!r}: a VerificationError's check is a veriml.errors.Check"
        ) from None


class SignatureError(VerificationError):
    """A signature does not verify, or none was made by a trusted key."""


class DigestMismatchError(VerificationError):
    """A digest recomputed from the data differs from the one claimed."""

    def __init__(
        self,
        message: str,
        *,
        expected: object,
        calculated: object,
        check: Check | str | None = None,
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
        check: Check | str | None = None,
        **evidence: Any,
    ) -> None:
        super().__init__(message, check=check, expected=expected, calculated=calculated, **evidence)
        self.expected = expected
        self.calculated = calculated


class LogInconsistencyError(VerificationError):
    """Two views of a log (checkpoints, tiles, entries) cannot both be true."""


class ReexecutionMismatchError(VerificationError):
    """Re-executing the computation produced outputs that differ from the recorded ones."""
