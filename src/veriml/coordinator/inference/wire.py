"""What crosses the inference service's wire (docs/network.md, "Inference request and
answer"): a request's input tensors decoded, a node's answer checked (its receipt under the
node's registered key, bound to this very request), and the answer returned to the client."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from veriml.coordinator.nodes.dispatch import JobSpec
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.core.digest import Digest
from veriml.core.errors import Check, InvalidInputError, InvalidTensorError, VerificationError
from veriml.core.keys import VerifyingKey
from veriml.core.tensors import tensor_from_json, tensor_to_json
from veriml.models import IOSignature
from veriml.runtime import RunResult, validate_inputs
from veriml.verify import verify_receipt
from veriml.verify.policy import Verdict

__all__ = ["NodeAnswer", "answer_json", "check_answer", "decode_inputs"]

Array = npt.NDArray[Any]


def decode_inputs(
    io: IOSignature, raw: object, *, max_tensor_bytes: int
) -> tuple[dict[str, Array], dict[str, Any]]:
    """Decode and validate the request's input tensors; return arrays and their JSON by name."""
    if not isinstance(raw, Mapping):
        raise InvalidTensorError("inputs must be an object of input name -> tensor JSON")
    expected = {spec.name for spec in io.inputs}
    unknown = sorted(set(raw) - expected)
    if unknown:
        raise InvalidInputError(
            "unknown input name", got=",".join(unknown)[:200], expected=",".join(sorted(expected))
        )
    arrays: dict[str, Array] = {}
    for name, value in raw.items():
        try:
            arrays[name] = tensor_from_json(value, max_bytes=max_tensor_bytes)
        except InvalidTensorError as exc:
            raise InvalidTensorError(f"input {name!r}: {exc.message}", **exc.evidence) from exc
    return validate_inputs(io, arrays), {str(name): value for name, value in raw.items()}


def check_answer(
    result: RunResult, node: Candidate, key: VerifyingKey, spec: JobSpec, digest: Digest
) -> dict[str, Digest]:
    """Verify a node's result under its registered key and that it answers this request;
    return the signed output digests."""
    verified = verify_receipt(result, node_key=key)
    p = verified.predicate
    bindings = {
        "node": (p.node_id, node.node_id),
        "request id": (p.request_id, spec.request_id),
        "request digest": (p.request_digest, digest),
        "model": (p.model_digest, spec.model),
        "policy": (p.policy, spec.policy),
        "inputs": (dict(p.inputs), dict(spec.input_digests)),
        "spot commitment": (p.spot, spec.spot),
    }
    for what, (signed, expected) in bindings.items():
        if signed != expected:
            raise VerificationError(
                f"receipt does not answer this request: its {what} differs",
                check=Check.REQUEST_BINDING,
                node=node.node_id,
                signed=str(signed)[:200],
                expected=str(expected)[:200],
            )
    if spec.trace and p.trace is None:
        raise VerificationError(
            "receipt of a traced job commits to no trace",
            check=Check.REQUEST_BINDING,
            node=node.node_id,
        )
    return dict(verified.output_digests)


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """A node's verified answer: its result and the output digests its receipt signs."""

    result: RunResult
    outputs: Mapping[str, Digest]


def answer_json(
    spec: JobSpec,
    verdict: Verdict,
    answers: Sequence[tuple[Candidate, NodeAnswer]],
    chosen: NodeAnswer,
    extra: Mapping[str, str],
    *,
    tolerance: bool = False,
) -> dict[str, Any]:
    """The answer without its ``log`` member (added once the entry is proved).

    In tolerance mode the answers differ within bounds, so every answer's outputs are
    returned (``answers``): a client recomputes the verdict from them."""
    response = {
        "id": spec.request_id,
        "model": spec.model.to_text(),
        "policy": spec.policy,
        "outputs": chosen.result.to_json(include_inputs=False)["outputs"],
        "receipts": [a.result.receipt.to_json() for _, a in answers],
        "nodes": [{"id": n.node_id, "log_index": n.log_index} for n, _ in answers],
        "verdict": verdict.to_json(),
    }
    if tolerance:
        response["answers"] = [
            {
                "node": n.node_id,
                "outputs": {k: tensor_to_json(v) for k, v in a.result.outputs.items()},
            }
            for n, a in answers
        ]
    if extra:
        # Members the log entry's request carries beyond id, digest, model and policy.
        response["request"] = dict(extra)
    return response
