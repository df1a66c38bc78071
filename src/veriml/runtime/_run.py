"""Running a model with a signed receipt.

A :class:`Runner` holds the sessions of one model under one profile and reuses them, as a
node does; :func:`run` finds (or builds) the runner for a model's digest and profile in a small
process-wide cache, so calling it in a loop does not rebuild sessions. Receipts are signed by
:func:`veriml.core.receipt.sign_receipt`: one RFC 8785 serialiser (``rfc8785``) for everything
veriml signs.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy.typing as npt
import onnx
import onnxruntime as ort

from veriml.core.digest import Digest
from veriml.core.errors import ExecutionError, FormatError, InvalidModelError, KeyFileError
from veriml.core.keys import SigningKey
from veriml.core.receipt import InferencePredicate, request_digest, sign_receipt, utc_now
from veriml.core.tensors import tensor_digest
from veriml.models import IOSignature, ModelPackage, io_signature
from veriml.runtime._fingerprint import runtime_fingerprint
from veriml.runtime._inputs import validate_inputs
from veriml.runtime._profile import ORT_ERRORS, Profile, create_session
from veriml.runtime._result import RunResult
from veriml.runtime._trace import Trace, build_trace, traced_model

__all__ = [
    "Runner",
    "canonical_request",
    "run",
    "runner_for",
]

Array = npt.NDArray[Any]
MAX_POLICY_LEN = 256
_CACHE_SIZE = 8


def canonical_request(
    model_digest: Digest, input_digests: Mapping[str, Digest], policy: str
) -> dict[str, Any]:
    """The request object whose RFC 8785 digest is the receipt's ``request.digest``."""
    return {
        "model": model_digest.to_text(),
        "inputs": [
            {"name": name, "digest": digest.to_text()}
            for name, digest in sorted(input_digests.items())
        ],
        "policy": policy,
    }


def _tensor_outputs(session: ort.InferenceSession, what: str) -> list[str]:
    names: list[str] = []
    for out in session.get_outputs():
        if not str(out.type).startswith("tensor("):
            raise InvalidModelError(
                f"{what} output is not a tensor; only tensor outputs are supported "
                "(for scikit-learn classifiers convert with options={'zipmap': False})",
                output=out.name,
                type=out.type,
            )
        names.append(out.name)
    return names


def _without_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's graph structure without initializer data (all that tracing needs), built
    without copying the weights even briefly."""
    skeleton = onnx.ModelProto(ir_version=model.ir_version)
    skeleton.opset_import.extend(model.opset_import)
    skeleton.graph.name = model.graph.name
    skeleton.graph.node.extend(model.graph.node)
    skeleton.graph.input.extend(model.graph.input)
    skeleton.graph.output.extend(model.graph.output)
    return skeleton


def _serialize(model: onnx.ModelProto) -> bytes:
    try:
        data: bytes = model.SerializeToString()
    except ValueError as exc:  # protobuf refuses messages over 2 GiB
        raise InvalidModelError(
            "model is too large to hand to onnxruntime", reason=str(exc)
        ) from exc
    return data


def _digests(tensors: Mapping[str, Array]) -> dict[str, Digest]:
    return {name: tensor_digest(array) for name, array in tensors.items()}


class Runner:
    """Sessions for one model under one :class:`Profile`, built once and reused.

    >>> runner = Runner.for_package(ModelPackage.load(Path("m")))  # doctest: +SKIP
    >>> result = runner.run({"x": x}, key=node_key)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: onnx.ModelProto | ModelPackage,
        *,
        digest: Digest | None = None,
        io: IOSignature | None = None,
        profile: Profile | None = None,
        files_digest: Digest | None = None,
    ) -> None:
        self.profile = profile if profile is not None else Profile()
        self.fingerprint = runtime_fingerprint(self.profile)
        self._model: onnx.ModelProto | None
        self._package: ModelPackage | None
        if isinstance(model, ModelPackage):
            # ONNX Runtime reads the validated file itself: a session built from bytes keeps a
            # second copy of the weights (measured: 2x the RSS), and no Python copy is kept.
            self.digest, self.files_digest, self.io = model.digest, model.files_digest, model.io
            self._session = create_session(model.onnx_path, self.profile)
            self._model, self._package = None, model
        else:
            if digest is None:
                raise InvalidModelError("a runner for an in-memory model needs its digest")
            self.digest, self.files_digest = digest, files_digest
            self.io = io if io is not None else io_signature(model)
            self._session = create_session(_serialize(model), self.profile)
            self._model, self._package = model, None
        self._outputs = _tensor_outputs(self._session, "model")
        self._graph: onnx.ModelProto | None = None
        self._traced: tuple[ort.InferenceSession, list[str]] | None = None
        self._lock = threading.Lock()

    @property
    def model(self) -> onnx.ModelProto:
        """The full model, weights included; for a package, loaded again from its folder after
        checking the folder is still the one the session was built from."""
        if self._model is not None:
            return self._model
        assert self._package is not None
        again = ModelPackage.load(self._package.path, limits=self._package.limits)
        if (again.digest, again.files_digest) != (self.digest, self.files_digest):
            raise InvalidModelError(
                "model folder changed since its session was built",
                path=str(self._package.path),
                expected=self.digest,
                calculated=again.digest,
            )
        return again.load_proto()

    @classmethod
    def for_package(cls, package: ModelPackage, *, profile: Profile | None = None) -> Runner:
        return cls(package, profile=profile)

    def _traced_session(self) -> tuple[ort.InferenceSession, list[str]]:
        with self._lock:
            if self._traced is None:
                model = self.model
                self._graph = _without_weights(model)
                traced = traced_model(model).SerializeToString()
                del model
                session = create_session(traced, self.profile, what="traced model")
                self._traced = (session, [o.name for o in session.get_outputs()])
            return self._traced

    def _run(self, session: ort.InferenceSession, feeds: Mapping[str, Array]) -> list[Any]:
        try:
            return list(session.run(None, dict(feeds)))
        except ORT_ERRORS as exc:
            raise ExecutionError(
                "onnxruntime failed to run the model",
                model=self.digest,
                reason=str(exc).splitlines()[0][:300],
            ) from exc

    def outputs(self, inputs: Mapping[str, object]) -> dict[str, Array]:
        """Validated, untraced outputs by name; no receipt."""
        feeds = validate_inputs(self.io, inputs)
        return dict(zip(self._outputs, self._run(self._session, feeds), strict=True))

    def traced(
        self, inputs: Mapping[str, object], *, keep_tensors: bool = True
    ) -> tuple[dict[str, Array], Trace]:
        """Outputs and the trace of a run that records every intermediate tensor."""
        feeds = validate_inputs(self.io, inputs)
        session, names = self._traced_session()
        values: dict[str, Any] = dict(feeds)
        values.update(zip(names, self._run(session, feeds), strict=True))
        assert self._graph is not None  # set with the traced session
        trace = build_trace(self._graph, values, keep_tensors=keep_tensors)
        return {name: values[name] for name in self._outputs}, trace

    def run(
        self,
        inputs: Mapping[str, object],
        *,
        key: SigningKey,
        trace: bool = False,
        policy: str = "none",
        request_id: str | None = None,
        keep_tensors: bool = False,
        spot: Digest | None = None,
    ) -> RunResult:
        """Run once and sign a receipt over the outputs with the node's Ed25519 ``key``.

        ``spot`` is the coordinator's spot-check commitment from the job (``spot:P``), copied
        into the receipt so the check is decided only after the receipt is signed."""
        if key.kind != "ed25519":
            raise KeyFileError("node receipts are signed with Ed25519 keys", got=key.kind)
        if not isinstance(policy, str) or not 0 < len(policy) <= MAX_POLICY_LEN:
            raise FormatError("policy must be a non-empty string", got=str(policy)[:80])
        if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 256):
            raise FormatError("request id must be a string of at most 256 characters")
        feeds = validate_inputs(self.io, inputs)
        started = utc_now()
        recorded: Trace | None = None
        if trace:
            outputs, recorded = self.traced(feeds, keep_tensors=keep_tensors)
        else:
            outputs = dict(zip(self._outputs, self._run(self._session, feeds), strict=True))
        finished = utc_now()
        input_digests = _digests(feeds)
        output_digests = _digests(outputs)
        request = canonical_request(self.digest, input_digests, policy)
        predicate = InferencePredicate(
            request_id=request_id if request_id is not None else str(uuid.uuid4()),
            request_digest=request_digest(request),
            model_digest=self.digest,
            model_files=self.files_digest,
            inputs=input_digests,
            runtime=self.fingerprint,
            node_id=key.key_id,
            policy=policy,
            started=started,
            finished=finished,
            trace=None if recorded is None else recorded.commitment,
            spot=spot,
        )
        envelope = sign_receipt(output_digests, predicate, key)
        return RunResult(outputs, envelope, predicate, recorded, feeds)


_runners: OrderedDict[tuple[Digest, Profile], Runner] = OrderedDict()
_runners_lock = threading.Lock()


def runner_for(model: Path | ModelPackage, profile: Profile | None = None) -> Runner:
    """The cached :class:`Runner` for ``model`` (a folder or a loaded package) and ``profile``.

    Runners are keyed by the model's digest, so a folder whose contents change gets a new one.
    """
    package = model if isinstance(model, ModelPackage) else ModelPackage.load(Path(model))
    profile = profile if profile is not None else Profile()
    key = (package.digest, profile)
    with _runners_lock:
        runner = _runners.get(key)
        if runner is not None:
            _runners.move_to_end(key)
            return runner
    runner = Runner.for_package(package, profile=profile)
    with _runners_lock:
        _runners[key] = runner
        while len(_runners) > _CACHE_SIZE:
            _runners.popitem(last=False)
    return runner


def run(
    model: Path | ModelPackage,
    inputs: Mapping[str, object],
    *,
    key: SigningKey,
    trace: bool = False,
    profile: Profile | None = None,
    policy: str = "none",
    request_id: str | None = None,
    keep_tensors: bool = False,
) -> RunResult:
    """Run ``model`` on ``inputs`` under a verifiable profile and sign a receipt.

    With ``trace=True`` the receipt commits to the trace root; ``keep_tensors=True`` also keeps
    every recorded tensor in ``result.trace.tensors`` for single-operator re-execution.

    >>> result = run(Path("my-model"), {"x": x}, key=node_key)  # doctest: +SKIP
    >>> result.receipt.to_json()["payloadType"]  # doctest: +SKIP
    'application/vnd.in-toto+json'
    """
    return runner_for(model, profile).run(
        inputs,
        key=key,
        trace=trace,
        policy=policy,
        request_id=request_id,
        keep_tensors=keep_tensors,
    )
