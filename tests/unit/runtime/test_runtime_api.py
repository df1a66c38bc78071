"""The public surface of veriml.runtime is explicit and pinned."""

from __future__ import annotations

import veriml.runtime


def test_runtime_exports_exactly_its_public_api() -> None:
    assert sorted(veriml.runtime.__all__) == [
        "Engine",
        "FLOAT_CPU_FLAGS",
        "MAX_RESULT_BYTES",
        "OPTIMIZATION_LEVELS",
        "Profile",
        "RawResult",
        "RunResult",
        "Runner",
        "TRACE_FORMAT",
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
    for name in veriml.runtime.__all__:
        assert hasattr(veriml.runtime, name), name
