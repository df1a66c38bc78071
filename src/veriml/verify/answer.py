"""The answer to a network inference, as the SDK returns it and as ``--out`` saves it.

A pure format (parse and serialise) but for one convenience pair on :class:`InferenceResult`:
:meth:`~InferenceResult.save` writes a result file atomically and
:meth:`~InferenceResult.load` reads one, bounded in size.

The saved JSON keeps the members of a ``veriml run`` result file (``outputs``, and ``receipt``:
the first agreeing node's) and adds what makes it checkable offline (docs/network.md,
"Inference request and answer"; docs/sdk.md, "Result files")::

    {
      "id": "<request id>", "model": "sha256:…", "policy": "quorum:3/2",
      "outputs": {name: tensor JSON}, "receipt": <DSSE>, "receipts": [<DSSE>, …],
      "verdict": {…},
      "log": {"index": 42, "inclusion_proof": ["<base64>", …], "checkpoint": "<signed note>"},
      "nodes": [{"id", "log_index", "entry": "<base64 NodeEntry bytes>",
                 "inclusion_proof": ["<base64>", …]}, …],
      "request": {…},           # optional: members the log entry's request carries beyond
                                # id, digest, model and policy
      "answers": [{"node": "<node id>", "outputs": {name: tensor JSON}}, …]
    }                           # optional: every node's outputs (tolerance mode compares them)

The verdict's optional members (``spot``, ``final_after``, ``disputes``; docs/verification.md,
"Verdicts") are read through :attr:`InferenceResult.mode`, :attr:`~InferenceResult.spot_checked`,
:attr:`~InferenceResult.final_after` and :attr:`~InferenceResult.disputes`.

Parsing proves nothing; :func:`veriml.verify.inference.verify_inference` does (also exported as
:func:`veriml.client.verify_inference`).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy.typing as npt

from veriml.core.canonical import parse_json_object
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.errors import FormatError
from veriml.core.tensors import tensor_from_json, tensor_to_json
from veriml.core.timestamps import parse_time
from veriml.protocol.policy import DisputeRef, Verdict
from veriml.verify.evidence import receipt_node_id
from veriml.verify.network import NetworkEvidence

__all__ = [
    "MAX_RESULT_BYTES",
    "AnswerOutputs",
    "InferenceResult",
    "LogEvidence",
    "NodeEvidence",
    "Verification",
]

MAX_RESULT_BYTES = 1 << 30
MAX_PROOF_HASHES = 64
_DATA_ELEMENTS = 4096

Array = npt.NDArray[Any]


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise FormatError(f"{what} is not valid base64") from exc


def _hashes(value: object, what: str) -> tuple[bytes, ...]:
    if not isinstance(value, list) or len(value) > MAX_PROOF_HASHES:
        raise FormatError(f"{what} must be a list of at most {MAX_PROOF_HASHES} hashes")
    hashes = tuple(_b64(h, what) for h in value)
    if any(len(h) != 32 for h in hashes):
        raise FormatError(f"{what} hashes must be 32 bytes")
    return hashes


def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 63:
        raise FormatError(f"{what} must be a non-negative integer", got=str(value)[:40])
    return value


def _encode_hashes(hashes: Sequence[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in hashes]


@dataclass(frozen=True, slots=True)
class LogEvidence:
    """Where the inference entry is in the log: its index, its inclusion proof (RFC 9162
    §2.1.3) and the signed checkpoint (C2SP tlog-checkpoint) that proof leads to; and, when
    the client said which checkpoint it saw last (``X-Veriml-Log-Size``), a consistency proof
    from that size to this one (RFC 9162 §2.1.4): ``{"from": size, "proof": [...]}``."""

    index: int
    inclusion_proof: tuple[bytes, ...]
    checkpoint: bytes
    consistency: tuple[int, tuple[bytes, ...]] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "inclusion_proof": _encode_hashes(self.inclusion_proof),
            "checkpoint": self.checkpoint.decode(),
        }
        if self.consistency is not None:
            out["consistency"] = {
                "from": self.consistency[0],
                "proof": _encode_hashes(self.consistency[1]),
            }
        return out

    @classmethod
    def from_json(cls, obj: object) -> LogEvidence:
        if not isinstance(obj, Mapping):
            raise FormatError("log must be an object with index, inclusion_proof, checkpoint")
        checkpoint = obj.get("checkpoint")
        if not isinstance(checkpoint, str) or not checkpoint:
            raise FormatError("log.checkpoint must be the signed checkpoint note text")
        consistency = obj.get("consistency")
        if consistency is not None:
            if not isinstance(consistency, Mapping):
                raise FormatError('log.consistency must be {"from": size, "proof": [...]}')
            consistency = (
                _int(consistency.get("from"), "log.consistency.from"),
                _hashes(consistency.get("proof"), "log.consistency.proof"),
            )
        return cls(
            index=_int(obj.get("index"), "log.index"),
            inclusion_proof=_hashes(obj.get("inclusion_proof"), "log.inclusion_proof"),
            checkpoint=checkpoint.encode(),
            consistency=consistency,
        )


@dataclass(frozen=True, slots=True)
class NodeEvidence:
    """A node that answered and its registration entry in the log. ``entry`` and
    ``inclusion_proof`` (at the inference's checkpoint) are filled in once fetched."""

    id: str
    log_index: int
    entry: bytes | None = None
    inclusion_proof: tuple[bytes, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "log_index": self.log_index}
        if self.entry is not None:
            out["entry"] = base64.b64encode(self.entry).decode()
        if self.inclusion_proof is not None:
            out["inclusion_proof"] = _encode_hashes(self.inclusion_proof)
        return out

    @classmethod
    def from_json(cls, obj: object) -> NodeEvidence:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("id"), str):
            raise FormatError("each node is an object with an id and a log_index")
        proof = obj.get("inclusion_proof")
        return cls(
            id=str(obj["id"]),
            log_index=_int(obj.get("log_index"), "nodes[].log_index"),
            entry=_b64(obj["entry"], "nodes[].entry") if "entry" in obj else None,
            inclusion_proof=None if proof is None else _hashes(proof, "nodes[].inclusion_proof"),
        )


def _tensors(obj: object) -> dict[str, Array]:
    if not isinstance(obj, Mapping):
        raise FormatError("outputs must be an object of name -> tensor")
    return {str(name): tensor_from_json(value) for name, value in obj.items()}


def _tensors_json(tensors: Mapping[str, Array]) -> dict[str, Any]:
    return {
        name: tensor_to_json(a, force_b64=a.size > _DATA_ELEMENTS)
        for name, a in sorted(tensors.items())
    }


@dataclass(frozen=True, slots=True)
class AnswerOutputs:
    """One node's output tensors, as the coordinator received them. The receipt of ``node``
    commits to their digests; in tolerance mode the verdict is recomputed from them."""

    node: str
    outputs: Mapping[str, Array]

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "outputs": _tensors_json(self.outputs)}

    @classmethod
    def from_json(cls, obj: object) -> AnswerOutputs:
        if not isinstance(obj, Mapping) or not isinstance(obj.get("node"), str):
            raise FormatError("each answer is an object with a node id and its outputs")
        return cls(node=str(obj["node"]), outputs=_tensors(obj.get("outputs")))


@dataclass(frozen=True, slots=True)
class Verification:
    """What verifying an answer established: the checks that passed, in order, and notes on
    what was taken as claimed rather than recomputed (for example a dispute's outcome, which
    only re-running the dispute could confirm)."""

    checks: tuple[str, ...]
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InferenceResult:
    """An answered inference: agreed outputs, every receipt, the verdict, and the log evidence.

    ``verified`` names the checks that passed (empty when verification was skipped with
    ``verify=False``) and ``verification`` adds the notes (``None`` when skipped); neither is
    saved: a saved file is verified again when read. ``answers`` holds every node's outputs
    when the coordinator sent them (tolerance mode needs them).
    """

    id: str
    model: Digest
    policy: str
    outputs: Mapping[str, Array]
    receipts: tuple[Envelope, ...]
    verdict: Verdict
    log: LogEvidence
    nodes: tuple[NodeEvidence, ...]
    request: Mapping[str, Any] = field(default_factory=dict)
    answers: tuple[AnswerOutputs, ...] = ()
    network: NetworkEvidence = field(default_factory=NetworkEvidence)
    """The entries the answer cites, its operators' stake proofs and its model's provenance
    (:mod:`veriml.verify.network`)."""
    verified: tuple[str, ...] = field(default=(), compare=False)
    verification: Verification | None = field(default=None, compare=False)

    @property
    def mode(self) -> str:
        """How answers were compared: ``bitwise`` or ``tolerance``."""
        return self.verdict.mode

    @property
    def spot_checked(self) -> bool | None:
        """``spot:P`` only: whether the revealed secret drew a second execution."""
        return None if self.verdict.spot is None else self.verdict.spot.checked

    @property
    def final_after(self) -> str | None:
        """When the answer becomes final: it can be challenged until then (RFC 3339)."""
        return self.verdict.final_after

    def pending(self, now: dt.datetime | None = None) -> bool:
        """Whether an ``optimistic:W`` answer is still pending: accepted, but not final until
        ``final_after`` passes unchallenged. Answers of other policies were checked when they
        were given, so they are never pending (they stay challengeable until ``final_after``)."""
        if not self.policy.startswith("optimistic:") or self.final_after is None:
            return False
        return (now or dt.datetime.now(dt.UTC)) < parse_time(self.final_after)

    @property
    def disputes(self) -> tuple[DisputeRef, ...]:
        """The disputes this request opened, with their logged outcomes."""
        return self.verdict.disputes

    @property
    def receipt(self) -> Envelope:
        """The receipt of the first agreeing node (the one ``veriml run``-style readers use)."""
        for receipt in self.receipts:
            if receipt_node_id(receipt) in self.verdict.agreeing:
                return receipt
        if not self.receipts:
            raise FormatError("an inference result carries at least one receipt")
        return self.receipts[0]

    def with_nodes(self, nodes: Sequence[NodeEvidence]) -> InferenceResult:
        return replace(self, nodes=tuple(nodes))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "model": self.model.to_text(),
            "policy": self.policy,
            "outputs": _tensors_json(self.outputs),
            "receipt": self.receipt.to_json(),
            "receipts": [r.to_json() for r in self.receipts],
            "verdict": self.verdict.to_json(),
            "log": self.log.to_json(),
            "nodes": [n.to_json() for n in self.nodes],
        }
        if self.request:
            out["request"] = dict(self.request)
        if self.answers:
            out["answers"] = [a.to_json() for a in self.answers]
        out |= self.network.to_json()
        return out

    def to_bytes(self) -> bytes:
        return (json.dumps(self.to_json(), indent=1) + "\n").encode()

    def save(self, path: Path) -> Path:
        """Write the result file atomically (a reader never sees half a file).

        The one file write of this otherwise pure format: a temporary file in the same folder,
        renamed over ``path``."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path())
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(self.to_bytes())
            Path(tmp).replace(path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InferenceResult:
        """Parse an answer of ``POST /v1/inferences`` or a saved result file (unverified)."""
        if not isinstance(obj, Mapping):
            raise FormatError("an inference result is a JSON object")
        try:
            receipts = obj["receipts"]
            if not isinstance(receipts, list) or not receipts:
                raise FormatError("receipts must be a non-empty list of DSSE envelopes")
            nodes = obj.get("nodes", [])
            if not isinstance(nodes, list):
                raise FormatError("nodes must be a list")
            request = obj.get("request", {})
            if not isinstance(request, Mapping):
                raise FormatError("request must be an object")
            answers = obj.get("answers", [])
            if not isinstance(answers, list):
                raise FormatError("answers must be a list")
            result = cls(
                id=str(obj["id"]),
                model=Digest.from_text(str(obj["model"])),
                policy=str(obj["policy"]),
                outputs=_tensors(obj["outputs"]),
                receipts=tuple(Envelope.from_json(r) for r in receipts),
                verdict=Verdict.from_json(obj["verdict"]),
                log=LogEvidence.from_json(obj["log"]),
                nodes=tuple(NodeEvidence.from_json(n) for n in nodes),
                request=dict(request),
                answers=tuple(AnswerOutputs.from_json(a) for a in answers),
                network=NetworkEvidence.from_answer(obj),
            )
        except KeyError as exc:
            raise FormatError("inference result is missing a member", member=str(exc)) from exc
        # A saved file's receipt member (what `veriml run` readers use) must be the derived one.
        if "receipt" in obj and Envelope.from_json(obj["receipt"]) != result.receipt:
            raise FormatError("the receipt member is not the first agreeing node's receipt")
        return result

    @classmethod
    def from_bytes(cls, data: bytes) -> InferenceResult:
        if len(data) > MAX_RESULT_BYTES:
            raise FormatError("result file is too large", size=len(data))
        return cls.from_json(parse_json_object(data, what="inference result"))

    @classmethod
    def load(cls, path: Path) -> InferenceResult:
        """Read a saved result file, bounding its size before reading it."""
        try:
            size = path.stat().st_size
            if size > MAX_RESULT_BYTES:
                raise FormatError("result file is too large", path=str(path), size=size)
            data = path.read_bytes()
        except OSError as exc:
            raise FormatError(
                "cannot read result file", path=str(path), reason=exc.strerror
            ) from exc
        return cls.from_bytes(data)


def is_network_result(obj: Mapping[str, Any]) -> bool:
    """Whether a parsed result file is a network answer (it carries a verdict and a log)."""
    return "log" in obj or "verdict" in obj
