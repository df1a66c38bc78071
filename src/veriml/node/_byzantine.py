"""How a node turns a job into an answer: honestly, or (tests and demos only) as a cheat.

The job path (:mod:`veriml.node._jobs`) hands every admitted job to one :class:`Behaviour`:
``run`` produces the :class:`~veriml.runtime.RunResult` (outputs, signed receipt, trace) and
``answer`` serialises it. The base class is the honest node; each byzantine mode of
docs/verification.md ("Byzantine harness") is a subclass, so cheating lives in this module and
nowhere else in the node. Every lie is built from the runtime's own pieces (``Runner``,
``Trace``, ``sign_receipt``) so it is exactly as well-formed as an honest answer: only the
checks the harness exists to test can catch it.

=============== ==============================================================================
mode            what the node answers
=============== ==============================================================================
wrong-output    the true outputs with one ulp added (``nextafter`` towards +inf) to the first
                element of the first floating output; a traced job's trace is made to agree
collude         the same with 1.0 added: deterministic, so every colluder tells the same lie
lazy            random outputs of the right shape and dtype without running the model; a
                traced job commits to made-up digests (except the outputs, which match the lie)
                and keeps no tensor but the graph inputs
substitute      the model with its first floating initializer zeroed, under the real digest
fp16            the model with every float32 initializer rounded to float16, under the real
                digest
replay          each job is answered with the previous job's answer (the first one honestly)
impersonate     receipts signed by a throwaway key, though they name the registered node id
=============== ==============================================================================
"""

from __future__ import annotations

import abc
import dataclasses
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from veriml.core.digest import Digest
from veriml.core.errors import FormatError
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import InferencePredicate, request_digest, sign_receipt, utc_now
from veriml.core.tensors import tensor_digest
from veriml.protocol.byzantine import BYZANTINE_MODES
from veriml.protocol.jobs import Job
from veriml.runtime import (
    Runner,
    RunResult,
    Trace,
    TraceEntry,
    canonical_request,
    validate_inputs,
)

__all__ = ["BYZANTINE_MODES", "Behaviour", "behaviour_for"]

log = logging.getLogger("veriml.node")

Array = npt.NDArray[Any]

_MAX_SWAPPED = 8
_FLOAT_TYPES = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
    }
)


class Behaviour:
    """The honest node: run the job under the verifiable profile and sign what came out."""

    mode: str | None = None
    """The byzantine mode name; None for the honest node."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key

    def run(self, runner: Runner, job: Job, inputs: Mapping[str, Array]) -> RunResult:
        """The job's result: outputs, the receipt signed with the node key, and (for a traced
        job) the trace with every recorded tensor kept for disputes."""
        return runner.run(
            inputs,
            key=self.key,
            trace=job.trace,
            policy=job.policy,
            request_id=job.request_id,
            keep_tensors=job.trace,
            spot=job.spot,
        )

    def answer(self, result: RunResult) -> bytes:
        """The result document the node sends back (JSON; the trace as digests only)."""
        return json.dumps(result.to_json(include_inputs=False)).encode()


def _resign(
    result: RunResult,
    key: SigningKey,
    *,
    outputs: Mapping[str, Array] | None = None,
    trace: Trace | None = None,
) -> RunResult:
    """``result`` with other outputs and/or trace, its receipt signed again over them."""
    outputs = result.outputs if outputs is None else outputs
    trace = result.trace if trace is None else trace
    predicate = dataclasses.replace(
        result.predicate, trace=None if trace is None else trace.commitment
    )
    digests = {name: tensor_digest(array) for name, array in outputs.items()}
    envelope = sign_receipt(digests, predicate, key)
    return RunResult(dict(outputs), envelope, predicate, trace, result.inputs)


def _with_value(trace: Trace, name: str, value: Array) -> Trace:
    """``trace`` with the entry (and the kept tensor) of ``name`` replaced by ``value``: the
    liar's trace agrees with its lie, so only the referee can tell."""
    digest = tensor_digest(value)
    entries = tuple(
        dataclasses.replace(e, digest=digest) if e.output == name else e for e in trace.entries
    )
    tensors = None if trace.tensors is None else {**trace.tensors, name: value}
    return Trace(entries, tensors)


class _Perturb(Behaviour, abc.ABC):
    """Runs honestly, then changes the first element of the first floating output."""

    @abc.abstractmethod
    def _lie(self, value: Any) -> Any:
        """The lie told about one true (NumPy scalar) value."""

    def run(self, runner: Runner, job: Job, inputs: Mapping[str, Array]) -> RunResult:
        result = super().run(runner, job, inputs)
        name = next(
            (
                n
                for n, a in result.outputs.items()
                if np.issubdtype(a.dtype, np.floating) and a.size
            ),
            None,
        )
        if name is None:  # nothing floating to lie about: the answer stays honest
            return result
        lied = np.array(result.outputs[name], copy=True, order="C")
        flat = lied.reshape(-1)
        flat[0] = self._lie(flat[0])
        trace = None if result.trace is None else _with_value(result.trace, name, lied)
        return _resign(result, self.key, outputs={**result.outputs, name: lied}, trace=trace)


class WrongOutput(_Perturb):
    mode = "wrong-output"

    def _lie(self, value: Any) -> Any:
        return np.nextafter(value, value.dtype.type(np.inf))


class Collude(_Perturb):
    mode = "collude"

    def _lie(self, value: Any) -> Any:
        return value.dtype.type(value + 1)


def _output_shapes(runner: Runner, feeds: Mapping[str, Array]) -> dict[str, tuple[int, ...]]:
    """Output shapes from the model's signature, symbolic dimensions bound by the inputs'.

    Falls back to one untraced run when the signature leaves a dimension open."""
    bound: dict[str, int] = {}
    for spec in runner.io.inputs:
        for dim, size in zip(spec.shape or (), feeds[spec.name].shape, strict=False):
            if isinstance(dim, str):
                bound[dim] = size
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in runner.io.outputs:
        declared = (None,) if spec.shape is None else spec.shape  # rank unknown: open
        dims = [bound.get(d) if isinstance(d, str) else d for d in declared]
        if any(d is None for d in dims):
            return {name: a.shape for name, a in runner.outputs(feeds).items()}
        shapes[spec.name] = tuple(int(d) for d in dims if d is not None)
    return shapes


def _random_tensor(rng: np.random.Generator, dtype: np.dtype[Any], shape: tuple[int, ...]) -> Array:
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, shape, dtype=dtype, endpoint=True)
    return np.zeros(shape, dtype)  # strings and the like: no arithmetic to fake


class Lazy(Behaviour):
    """Never runs the model: random outputs, and for a traced job a made-up trace."""

    mode = "lazy"

    def __init__(self, key: SigningKey) -> None:
        super().__init__(key)
        self._layouts: dict[Digest, tuple[TraceEntry, ...]] = {}
        self._lock = threading.Lock()

    def _layout(self, runner: Runner) -> tuple[TraceEntry, ...]:
        """One placeholder entry per node output, in graph order (digests to be made up)."""
        with self._lock:
            layout = self._layouts.get(runner.digest)
            if layout is None:
                zero = Digest(bytes(32))
                layout = tuple(
                    TraceEntry(i, node.op_type, node.name, tuple(node.input), out, zero)
                    for i, node in enumerate(runner.model.graph.node)
                    for out in node.output
                    if out
                )
                self._layouts[runner.digest] = layout
        return layout

    def run(self, runner: Runner, job: Job, inputs: Mapping[str, Array]) -> RunResult:
        rng = np.random.default_rng()  # one per job: a Generator is not thread-safe
        feeds = validate_inputs(runner.io, inputs)
        started = utc_now()
        dtypes = {spec.name: np.dtype(spec.dtype) for spec in runner.io.outputs}
        outputs = {
            name: _random_tensor(rng, dtypes[name], shape)
            for name, shape in _output_shapes(runner, feeds).items()
        }
        trace = None
        if job.trace:
            lies = {name: tensor_digest(a) for name, a in outputs.items()}
            entries = tuple(
                dataclasses.replace(
                    e, digest=lies[e.output] if e.output in lies else Digest(rng.bytes(32))
                )
                for e in self._layout(runner)
            )
            trace = Trace(entries, dict(feeds))
        input_digests = {name: tensor_digest(a) for name, a in feeds.items()}
        predicate = InferencePredicate(
            request_id=job.request_id,
            request_digest=request_digest(
                canonical_request(runner.digest, input_digests, job.policy)
            ),
            model_digest=runner.digest,
            model_files=runner.files_digest,
            inputs=input_digests,
            runtime=runner.fingerprint,
            node_id=self.key.key_id,
            policy=job.policy,
            started=started,
            finished=utc_now(),
            trace=None if trace is None else trace.commitment,
            spot=job.spot,
        )
        digests = {name: tensor_digest(a) for name, a in outputs.items()}
        envelope = sign_receipt(digests, predicate, self.key)
        return RunResult(outputs, envelope, predicate, trace, feeds)


class _Swap(Behaviour, abc.ABC):
    """Runs an altered copy of the model that still claims the real model's digests.

    The copy is an in-memory :class:`Runner` built once per model; its traces are the real
    traces of the altered model, so they are consistent all the way down."""

    def __init__(self, key: SigningKey) -> None:
        super().__init__(key)
        self._runners: OrderedDict[Digest, Runner] = OrderedDict()
        self._lock = threading.Lock()

    @abc.abstractmethod
    def _alter(self, model: onnx.ModelProto) -> bool:
        """Change ``model`` in place; False when there was nothing to change."""

    def _swapped(self, runner: Runner) -> Runner:
        with self._lock:
            swapped = self._runners.get(runner.digest)
            if swapped is None:
                model = runner.model
                if self._alter(model):
                    swapped = Runner(
                        model,
                        digest=runner.digest,
                        files_digest=runner.files_digest,
                        io=runner.io,
                        profile=runner.profile,
                    )
                else:
                    log.warning(
                        "byzantine %s: model %s has nothing to alter", self.mode, runner.digest
                    )
                    swapped = runner
                self._runners[runner.digest] = swapped
                while len(self._runners) > _MAX_SWAPPED:
                    self._runners.popitem(last=False)
            return swapped

    def run(self, runner: Runner, job: Job, inputs: Mapping[str, Array]) -> RunResult:
        return super().run(self._swapped(runner), job, inputs)


def _rewrite(
    model: onnx.ModelProto,
    wanted: Callable[[onnx.TensorProto], bool],
    change: Callable[[Array], Array],
    *,
    first_only: bool,
) -> bool:
    changed = False
    for init in model.graph.initializer:
        if wanted(init):
            init.CopyFrom(numpy_helper.from_array(change(numpy_helper.to_array(init)), init.name))
            changed = True
            if first_only:
                break
    return changed


class Substitute(_Swap):
    mode = "substitute"

    def _alter(self, model: onnx.ModelProto) -> bool:
        return _rewrite(
            model, lambda t: t.data_type in _FLOAT_TYPES, np.zeros_like, first_only=True
        )


class Fp16(_Swap):
    mode = "fp16"

    def _alter(self, model: onnx.ModelProto) -> bool:
        return _rewrite(
            model,
            lambda t: t.data_type == onnx.TensorProto.FLOAT,
            lambda a: a.astype(np.float16).astype(np.float32),
            first_only=False,
        )


class Replay(Behaviour):
    """Answers each job with the answer it computed for the previous one."""

    mode = "replay"

    def __init__(self, key: SigningKey) -> None:
        super().__init__(key)
        self._previous: bytes | None = None
        self._lock = threading.Lock()

    def answer(self, result: RunResult) -> bytes:
        body = super().answer(result)
        with self._lock:
            previous, self._previous = self._previous, body
        return body if previous is None else previous


class Impersonate(Behaviour):
    """Signs every receipt with a throwaway key; the predicate still names the real node."""

    mode = "impersonate"

    def __init__(self, key: SigningKey) -> None:
        super().__init__(key)
        self.impostor = generate_key("ed25519")

    def run(self, runner: Runner, job: Job, inputs: Mapping[str, Array]) -> RunResult:
        return _resign(super().run(runner, job, inputs), self.impostor)


class FalseCheck(Behaviour):
    """Honest on ONNX jobs: the lie is in the LLM prefill checks it signs (a Sybil checker
    rejecting honest completions, :mod:`veriml.node._llm`)."""

    mode = "false-check"


_MODES: Final[Mapping[str | None, type[Behaviour]]] = {
    cls.mode: cls
    for cls in (
        Behaviour,
        WrongOutput,
        Lazy,
        Substitute,
        Fp16,
        Replay,
        Impersonate,
        Collude,
        FalseCheck,
    )
}


def behaviour_for(mode: str | None, key: SigningKey) -> Behaviour:
    """The behaviour of a node started with ``byzantine=mode`` (None: honest)."""
    cls = _MODES.get(mode)
    if cls is None:
        raise FormatError("unknown byzantine mode", got=mode, expected="|".join(BYZANTINE_MODES))
    return cls(key)
