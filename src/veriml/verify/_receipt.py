"""Verifying an inference receipt against its result file, a node key and optionally the model.

The checks run in a fixed order and the first failure raises a
:class:`~veriml.errors.VerificationError` subclass whose ``check`` names it:

1. ``signature``: the DSSE signature verifies under the trusted node key (DSSE v1 PAE,
   https://github.com/secure-systems-lab/dsse/blob/master/protocol.md); without a trusted key
   nothing is trusted and verification fails;
2. ``statement-type``: the payload is an in-toto Statement v1; ``predicate-type``: its
   predicate type is ``https://veriml.dev/inference/v1`` and the predicate parses; the node id
   in the predicate is the signing key's id (``signature`` again if not);
3. ``output-digest``: the output names in the file are exactly the subjects, and each output
   tensor's digest is the subject's digest; ``input-digest``: inputs in the file, if any,
   match the predicate's input digests and the request digest is recomputed from them;
4. ``model-digest``: with a model, its OMS digest is the predicate's model digest and its
   file-layout digest (paths + file digests) is the predicate's ``model.files``;
5. ``reexecution``: with ``reexecute``, running the model again under the profile recorded in
   the receipt gives bitwise the same outputs (and, if the receipt commits to a trace, the
   same trace root).

Success returns a :class:`VerifiedReceipt`; nothing here ever returns ``False``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy.typing as npt

from veriml.core.digest import Digest
from veriml.core.dsse import Statement
from veriml.core.errors import (
    Check,
    DigestMismatchError,
    ExecutionError,
    FormatError,
    InvalidInputError,
    InvalidModelError,
    ReexecutionMismatchError,
    SignatureError,
    VerificationError,
)
from veriml.core.keys import VerifyingKey
from veriml.core.receipt import (
    PREDICATE_TYPE,
    InferencePredicate,
    TraceCommitment,
    request_digest,
)
from veriml.core.tensors import tensor_digest
from veriml.models import ModelPackage
from veriml.runtime import (
    Profile,
    RawResult,
    RunResult,
    canonical_request,
    platform_fingerprint,
    read_result_file,
    runner_for,
)
from veriml.verify.tensors import check_tensor_digests

__all__ = ["VerifiedReceipt", "verify_receipt"]

Array = npt.NDArray[Any]


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """What a successful verification established, and by which checks."""

    predicate: InferencePredicate
    outputs: Mapping[str, Array]
    output_digests: Mapping[str, Digest]
    node_key: VerifyingKey
    checks: tuple[str, ...]

    @property
    def model_checked(self) -> bool:
        return "model-digest" in self.checks

    @property
    def reexecuted(self) -> bool:
        return "reexecution" in self.checks

    def summary(self) -> str:
        """One line for humans: what was verified."""
        names = ",".join(sorted(self.outputs))
        return (
            f"receipt OK: outputs {names} of model "
            f"{self.predicate.model_digest} signed by node {self.node_key.key_id}; "
            f"checks: {', '.join(self.checks)}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "checks": list(self.checks),
            "node": self.node_key.key_id,
            "outputs": {n: d.to_text() for n, d in sorted(self.output_digests.items())},
            "predicate": self.predicate.to_json(),
        }


def _raw(result: RunResult | RawResult | Mapping[str, Any] | Path) -> RawResult:
    if isinstance(result, RawResult):
        return result
    if isinstance(result, RunResult):
        # Only what the node signed counts: the predicate is re-read from the payload below.
        return RawResult(result.outputs, result.receipt, result.inputs, result.trace)
    if isinstance(result, Path):
        return read_result_file(result)
    return RawResult.from_json(result)


def _check_signature(raw: RawResult, node_key: VerifyingKey | None) -> VerifyingKey:
    if node_key is None:
        # The receipt names its signer's key id, but an id is not a key: trusting it would let
        # anyone sign a receipt for anything. The caller must say which node key it trusts.
        raise SignatureError(
            "no trusted node key given; pass the node's public key", check=Check.SIGNATURE
        )
    raw.receipt.verify([node_key])
    return node_key


def _parse_statement(
    raw: RawResult, node_key: VerifyingKey
) -> tuple[Statement, InferencePredicate]:
    try:
        statement = Statement.from_bytes(raw.receipt.payload)
    except FormatError as exc:
        raise VerificationError(
            "receipt payload is not an in-toto statement",
            check=Check.STATEMENT_TYPE,
            reason=exc.message,
        ) from exc
    if statement.predicate_type != PREDICATE_TYPE:
        raise VerificationError(
            "receipt is not an inference receipt",
            check=Check.PREDICATE_TYPE,
            expected=PREDICATE_TYPE,
            got=statement.predicate_type,
        )
    try:
        predicate = InferencePredicate.from_json(statement.predicate)
    except VerificationError as exc:
        raise VerificationError(
            "inference predicate is malformed", check=Check.PREDICATE_TYPE, reason=str(exc)
        ) from exc
    if predicate.node_id != node_key.key_id:
        raise SignatureError(
            "receipt names a different node than the key that signed it",
            check=Check.SIGNATURE,
            expected=node_key.key_id,
            got=predicate.node_id,
        )
    return statement, predicate


def _check_outputs(raw: RawResult, statement: Statement) -> dict[str, Digest]:
    claimed: dict[str, Digest] = {}
    for subject in statement.subjects:
        if subject.name in claimed:
            raise VerificationError(
                "receipt names an output twice", check=Check.OUTPUT_DIGEST, output=subject.name
            )
        claimed[subject.name] = subject.digest
    check_tensor_digests(
        raw.outputs, claimed, check=Check.OUTPUT_DIGEST, kind="output", claimant="the receipt"
    )
    return claimed


def _check_inputs(inputs: Mapping[str, Array], predicate: InferencePredicate) -> None:
    check_tensor_digests(
        inputs, predicate.inputs, check=Check.INPUT_DIGEST, kind="input", claimant="the receipt"
    )
    request = canonical_request(predicate.model_digest, predicate.inputs, predicate.policy)
    calculated = request_digest(request)
    if calculated != predicate.request_digest:
        raise DigestMismatchError(
            "request digest does not match the model, inputs and policy",
            check=Check.INPUT_DIGEST,
            expected=predicate.request_digest,
            calculated=calculated,
        )


def _reexecute(
    package: ModelPackage,
    inputs: Mapping[str, Array],
    predicate: InferencePredicate,
    claimed: Mapping[str, Digest],
) -> None:
    try:
        profile = Profile.from_json(predicate.runtime)
    except FormatError as exc:
        raise VerificationError(
            "receipt does not record a reproducible profile",
            check=Check.REEXECUTION,
            reason=exc.message,
        ) from exc
    recomputed: TraceCommitment | None = None
    try:
        runner = runner_for(package, profile)
        if predicate.trace is not None:
            outputs, trace = runner.traced(inputs, keep_tensors=False)
            recomputed = trace.commitment
        else:
            outputs = runner.outputs(inputs)
    except (InvalidInputError, InvalidModelError, ExecutionError) as exc:
        # The node signed a run that cannot be repeated here: fail closed, say why.
        raise VerificationError(
            "the signed run cannot be re-executed",
            check=Check.REEXECUTION,
            reason=exc.diagnostics(),
        ) from exc
    if predicate.trace is not None and recomputed != predicate.trace:
        raise ReexecutionMismatchError(
            "re-executed trace differs from the committed one",
            check=Check.REEXECUTION,
            expected=predicate.trace.root,
            calculated=None if recomputed is None else recomputed.root,
            size=None if recomputed is None else recomputed.size,
        )
    recorded_platform = predicate.runtime.get("platform")
    for name, expected in sorted(claimed.items()):
        calculated = tensor_digest(outputs[name]) if name in outputs else None
        if calculated != expected:
            same = recorded_platform == platform_fingerprint() and predicate.runtime.get(
                "version"
            ) == runner.fingerprint.get("version")
            raise ReexecutionMismatchError(
                f"re-executed output {name!r} differs from the signed one",
                check=Check.REEXECUTION,
                expected=expected,
                calculated=calculated or "missing",
                # Different CPU features can legitimately round differently; say so.
                platform="same as the node's" if same else "engine or CPU differs from the node's",
            )


def verify_receipt(
    result: RunResult | RawResult | Mapping[str, Any] | Path,
    *,
    node_key: VerifyingKey | None = None,
    model: Path | ModelPackage | None = None,
    reexecute: bool = False,
    inputs: Mapping[str, Array] | None = None,
) -> VerifiedReceipt:
    """Verify a run result (object, parsed JSON, or result file path); raise on any failure.

    ``node_key`` is the node public key you trust; it is required. ``inputs`` default to the
    inputs stored in the result file; re-execution needs them and the ``model``.

    >>> verified = verify_receipt(Path("result.json"), node_key=key)  # doctest: +SKIP
    >>> verified.summary()  # doctest: +SKIP
    """
    raw = _raw(result)
    checks: list[str] = []
    # 1. DSSE signature under the trusted node key.
    signer = _check_signature(raw, node_key)
    checks.append("signature")
    # 2. Statement and predicate types; the predicate names the signing node.
    statement, predicate = _parse_statement(raw, signer)
    checks += ["statement-type", "predicate-type"]
    # 3. Outputs (and inputs, when present) against the signed digests.
    claimed = _check_outputs(raw, statement)
    checks.append("output-digest")
    given_inputs = inputs if inputs is not None else raw.inputs
    if given_inputs is not None:
        _check_inputs(given_inputs, predicate)
        checks.append("input-digest")
    # 4. The model folder is the model the receipt names.
    package: ModelPackage | None = None
    if model is not None:
        package = model if isinstance(model, ModelPackage) else ModelPackage.load(Path(model))
        if package.digest != predicate.model_digest:
            raise DigestMismatchError(
                "model folder is not the model the receipt names",
                check=Check.MODEL_DIGEST,
                expected=predicate.model_digest,
                calculated=package.digest,
            )
        # The OMS root digest does not cover file names: the layout digest must match too,
        # and a receipt that does not bind it cannot be checked against a folder (fail closed).
        if predicate.model_files != package.files_digest:
            raise DigestMismatchError(
                "model folder's file layout is not the one the receipt names",
                check=Check.MODEL_DIGEST,
                expected=predicate.model_files or "absent from the receipt",
                calculated=package.files_digest,
            )
        checks.append("model-digest")
    # 5. Re-execution under the recorded profile, bitwise.
    if reexecute:
        if package is None or given_inputs is None:
            raise VerificationError(
                "re-execution needs the model and the inputs",
                check=Check.REEXECUTION,
                model="given" if package is not None else "missing",
                inputs="given" if given_inputs is not None else "missing",
            )
        _reexecute(package, given_inputs, predicate, claimed)
        checks.append("reexecution")
    return VerifiedReceipt(predicate, raw.outputs, claimed, signer, tuple(checks))
