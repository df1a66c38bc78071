"""The inference receipt: an in-toto Statement with predicate type
``https://veriml.dev/inference/v1``, signed by the node in a DSSE envelope (DESIGN.md,
"Receipts"). This module is the pure format; running and verifying live in ``runtime`` and
``verify``.

Statement ``subject``: one entry per output tensor, ``{"name", "digest": {"sha256"}}``.
Predicate (all digests as ``sha256:<hex>``)::

    {
      "request":   {"id": str, "digest": Digest},
      "model":     {"digest": Digest, "files": Digest},     # OMS root; file layout
      "inputs":    [{"name": str, "digest": Digest}, ...]      # sorted by name
      "runtime":   {engine, version, execution_provider, graph_optimization_level,
                    intra_op_threads, inter_op_threads, platform: {...}},
      "trace":     {"root": Digest, "size": int}              # optional
      "spot":      {"commitment": Digest}                     # optional, spot:P jobs
      "node":      {"id": key id of the signing key},
      "policy":    str,
      "timestamps": {"started": RFC 3339 UTC, "finished": RFC 3339 UTC}
    }
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from veriml.core.canonical import canonical_digest
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement, Subject
from veriml.core.errors import Check, FormatError, VerificationError
from veriml.core.keys import SigningKey
from veriml.core.timestamps import utc_now

__all__ = [
    "PREDICATE_TYPE",
    "InferencePredicate",
    "TraceCommitment",
    "request_digest",
    "sign_receipt",
    "utc_now",
]

PREDICATE_TYPE = "https://veriml.dev/inference/v1"


def request_digest(request: Mapping[str, Any]) -> Digest:
    """Digest of a request object: SHA-256 of its RFC 8785 form."""
    return canonical_digest(dict(request))


@dataclass(frozen=True, slots=True)
class TraceCommitment:
    """Merkle root (RFC 9162) over the digests of every recorded tensor, and their count."""

    root: Digest
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"root": self.root.to_text(), "size": self.size}


def _digest_member(obj: Mapping[str, Any], key: str, where: str) -> Digest:
    value = obj.get(key)
    if not isinstance(value, str):
        raise FormatError(f"receipt predicate {where}.{key} must be a digest string")
    return Digest.from_text(value)


def _object(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise FormatError(f"receipt predicate needs an object {key!r}")
    return value


@dataclass(frozen=True, slots=True)
class InferencePredicate:
    """The ``predicate`` of an inference receipt."""

    request_id: str
    request_digest: Digest
    model_digest: Digest
    inputs: Mapping[str, Digest]
    runtime: Mapping[str, Any]
    node_id: str
    policy: str
    started: str
    finished: str
    trace: TraceCommitment | None = None
    # Digest of the model's file layout (paths + file digests). The OMS root digest does not
    # cover file names, so a receipt binds both; see veriml.models.digest.files_digest.
    model_files: Digest | None = None
    spot: Digest | None = None
    """The coordinator's commitment to its spot-check secret (``spot:P`` jobs): signed here
    before the secret is revealed, so the check cannot be predicted or chosen afterwards."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "request": {"id": self.request_id, "digest": self.request_digest.to_text()},
            "model": {"digest": self.model_digest.to_text()}
            | ({} if self.model_files is None else {"files": self.model_files.to_text()}),
            "inputs": [
                {"name": name, "digest": digest.to_text()}
                for name, digest in sorted(self.inputs.items())
            ],
            "runtime": dict(self.runtime),
            "node": {"id": self.node_id},
            "policy": self.policy,
            "timestamps": {"started": self.started, "finished": self.finished},
        }
        if self.trace is not None:
            out["trace"] = self.trace.to_json()
        if self.spot is not None:
            out["spot"] = {"commitment": self.spot.to_text()}
        out.update(self.extra)
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> InferencePredicate:
        try:
            request = _object(obj, "request")
            model = _object(obj, "model")
            node = _object(obj, "node")
            times = _object(obj, "timestamps")
            runtime = _object(obj, "runtime")
            inputs_raw = obj.get("inputs")
            if not isinstance(inputs_raw, list):
                raise FormatError("receipt predicate needs an inputs list")
            inputs: dict[str, Digest] = {}
            for item in inputs_raw:
                if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                    raise FormatError("each receipt input needs a name and a digest")
                inputs[item["name"]] = _digest_member(item, "digest", "inputs[]")
            trace = None
            if "trace" in obj:
                t = _object(obj, "trace")
                size = t.get("size")
                if not isinstance(size, int) or size < 0:
                    raise FormatError("receipt trace.size must be a non-negative integer")
                trace = TraceCommitment(_digest_member(t, "root", "trace"), size)
            spot = None
            if "spot" in obj:
                spot = _digest_member(_object(obj, "spot"), "commitment", "spot")
            for key, value in (
                ("request.id", request.get("id")),
                ("node.id", node.get("id")),
                ("policy", obj.get("policy")),
                ("timestamps.started", times.get("started")),
                ("timestamps.finished", times.get("finished")),
            ):
                if not isinstance(value, str):
                    raise FormatError(f"receipt predicate {key} must be a string")
            known = {
                "request",
                "model",
                "inputs",
                "runtime",
                "node",
                "policy",
                "timestamps",
                "trace",
                "spot",
            }
            return cls(
                request_id=request["id"],
                request_digest=_digest_member(request, "digest", "request"),
                model_digest=_digest_member(model, "digest", "model"),
                model_files=_digest_member(model, "files", "model") if "files" in model else None,
                inputs=inputs,
                runtime=runtime,
                node_id=node["id"],
                policy=obj["policy"],
                started=times["started"],
                finished=times["finished"],
                trace=trace,
                spot=spot,
                extra={k: v for k, v in obj.items() if k not in known},
            )
        except FormatError as exc:
            raise VerificationError(
                "receipt predicate is malformed", check=Check.PREDICATE, reason=exc.message
            ) from exc


def sign_receipt(
    outputs: Mapping[str, Digest], predicate: InferencePredicate, key: SigningKey
) -> Envelope:
    """Sign an inference statement over ``outputs`` with the node's key."""
    statement = Statement(
        subjects=tuple(Subject(name, digest) for name, digest in sorted(outputs.items())),
        predicate_type=PREDICATE_TYPE,
        predicate=predicate.to_json(),
    )
    return Envelope.sign(statement.to_bytes(), [key])
