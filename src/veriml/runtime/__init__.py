"""Verifiable local ONNX execution: profiles, fingerprints, tracing, receipts.

The public surface is re-exported here; the ``_``-prefixed modules are internal.

>>> from veriml.runtime import Profile, run  # doctest: +SKIP
>>> result = run(Path("my-model"), {"x": x}, key=node_key, trace=True)  # doctest: +SKIP
>>> result.predicate.trace.root  # doctest: +SKIP
"""

from veriml.runtime._fingerprint import FLOAT_CPU_FLAGS, platform_fingerprint, runtime_fingerprint
from veriml.runtime._inputs import load_input_files, validate_inputs
from veriml.runtime._profile import OPTIMIZATION_LEVELS, Profile, create_session
from veriml.runtime._reexec import Engine, check_node, node_model, reexecute_node
from veriml.runtime._result import MAX_RESULT_BYTES, RawResult, RunResult, read_result_file
from veriml.runtime._run import Runner, canonical_request, run, runner_for
from veriml.runtime._trace import TRACE_FORMAT, Trace, TraceEntry, build_trace, traced_model

__all__ = [
    "FLOAT_CPU_FLAGS",
    "MAX_RESULT_BYTES",
    "OPTIMIZATION_LEVELS",
    "TRACE_FORMAT",
    "Engine",
    "Profile",
    "RawResult",
    "RunResult",
    "Runner",
    "Trace",
    "TraceEntry",
    "build_trace",
    "canonical_request",
    "check_node",
    "create_session",
    "load_input_files",
    "node_model",
    "platform_fingerprint",
    "read_result_file",
    "reexecute_node",
    "run",
    "runner_for",
    "runtime_fingerprint",
    "traced_model",
    "validate_inputs",
]
