"""The verifiable execution profile and the ONNX Runtime sessions built under it.

Bitwise replay needs both sides to run the same kernels in the same order with the same
reductions, so everything that can change a float result is pinned here and recorded in the
receipt's runtime fingerprint.

Why ``ORT_DISABLE_ALL`` is the default graph optimisation level (measured with onnxruntime 1.32
on x86-64 with AVX-512, Conv -> BatchNormalization -> Relu -> MatMul -> Softmax, float32):

- ``ORT_DISABLE_ALL``: outputs with tracing on are bitwise equal to outputs with tracing off;
- ``ORT_ENABLE_BASIC`` and above fuse Conv+BatchNormalization. Tracing must materialise the
  Conv output, which blocks that fusion, so traced and untraced outputs differ (by ~5e-29 here)
  and a single operator re-executed on its own no longer matches the whole-graph run;
- ``ORT_ENABLE_ALL`` additionally differs from ``ORT_DISABLE_ALL`` (by ~1e-28 here).

With no graph rewriting each node runs as its own kernel, which is what makes the trace and
single-operator re-execution (the dispute referee's tool) agree with the full run. One intra-op
and one inter-op thread and sequential execution keep reductions in a fixed order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as _ort_state

from veriml.core.errors import ExecutionError, FormatError, InvalidModelError

__all__ = ["OPTIMIZATION_LEVELS", "ORT_ERRORS", "Profile", "create_session"]

OPTIMIZATION_LEVELS: Final[Mapping[str, ort.GraphOptimizationLevel]] = {
    "ORT_DISABLE_ALL": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "ORT_ENABLE_BASIC": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "ORT_ENABLE_EXTENDED": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "ORT_ENABLE_ALL": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
MAX_THREADS = 256

# onnxruntime's pybind exceptions derive from Exception directly; these are the ones it raises
# for a model it cannot load or run.
ORT_ERRORS: Final[tuple[type[Exception], ...]] = (
    _ort_state.Fail,
    _ort_state.InvalidArgument,
    _ort_state.InvalidGraph,
    _ort_state.InvalidProtobuf,
    _ort_state.NotImplemented,
    _ort_state.RuntimeException,
    _ort_state.NoSuchFile,
    _ort_state.EPFail,
    _ort_state.EngineError,
)


@dataclass(frozen=True, slots=True)
class Profile:
    """Settings that must be equal on both sides for a bitwise replay.

    >>> Profile().to_json()["graph_optimization_level"]
    'ORT_DISABLE_ALL'
    """

    graph_optimization_level: str = "ORT_DISABLE_ALL"
    intra_op_threads: int = 1
    inter_op_threads: int = 1
    execution_provider: str = "CPUExecutionProvider"

    def __post_init__(self) -> None:
        if self.graph_optimization_level not in OPTIMIZATION_LEVELS:
            raise FormatError(
                "unknown graph optimisation level",
                got=self.graph_optimization_level,
                expected="|".join(OPTIMIZATION_LEVELS),
            )
        for name in ("intra_op_threads", "inter_op_threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise FormatError(f"profile {name} must be an integer", got=value)
            if not 1 <= value <= MAX_THREADS:
                # 0 means "as many as there are cores" to onnxruntime: not reproducible.
                raise FormatError(f"profile {name} must be 1..{MAX_THREADS}", got=value)
        if not isinstance(self.execution_provider, str) or not self.execution_provider:
            raise FormatError("profile execution_provider must be a provider name")

    def session_options(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = OPTIMIZATION_LEVELS[self.graph_optimization_level]
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = self.inter_op_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Spinning threads only burn CPU on a shared node; they do not change results.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        # Fatal only: failures reach the caller as one veriml error carrying onnxruntime's
        # message, not as extra lines on stderr.
        options.log_severity_level = 4
        return options

    def to_json(self) -> dict[str, Any]:
        """The profile's members of the runtime fingerprint."""
        return {
            "execution_provider": self.execution_provider,
            "graph_optimization_level": self.graph_optimization_level,
            "intra_op_threads": self.intra_op_threads,
            "inter_op_threads": self.inter_op_threads,
            "execution_mode": "sequential",
        }

    @classmethod
    def from_json(cls, runtime: Mapping[str, Any]) -> Profile:
        """The profile recorded in a receipt's ``runtime`` fingerprint."""
        if not isinstance(runtime, Mapping):
            raise FormatError("a runtime fingerprint is a JSON object")
        engine = runtime.get("engine", "onnxruntime")
        if engine != "onnxruntime":
            raise FormatError("receipt was not produced by onnxruntime", engine=engine)
        mode = runtime.get("execution_mode", "sequential")
        if mode != "sequential":
            raise FormatError("only sequential execution is reproducible", execution_mode=mode)
        try:
            return cls(
                graph_optimization_level=runtime["graph_optimization_level"],
                intra_op_threads=runtime["intra_op_threads"],
                inter_op_threads=runtime["inter_op_threads"],
                execution_provider=runtime["execution_provider"],
            )
        except KeyError as exc:
            raise FormatError(
                "runtime fingerprint lacks a profile member", member=str(exc)
            ) from exc


def create_session(
    model: bytes | Path, profile: Profile, *, what: str = "model"
) -> ort.InferenceSession:
    """An ``InferenceSession`` under ``profile`` (one provider) for serialised ONNX ``model``
    or the ONNX file at a path (which ONNX Runtime reads without a second in-memory copy)."""
    if profile.execution_provider not in ort.get_available_providers():
        raise ExecutionError(
            "execution provider is not available here",
            provider=profile.execution_provider,
            available=",".join(ort.get_available_providers()),
        )
    try:
        return ort.InferenceSession(
            str(model) if isinstance(model, Path) else model,
            sess_options=profile.session_options(),
            providers=[profile.execution_provider],
        )
    except ORT_ERRORS as exc:
        raise InvalidModelError(
            f"onnxruntime cannot load the {what}", reason=str(exc).splitlines()[0][:300]
        ) from exc
