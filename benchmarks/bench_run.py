"""``veriml.runtime.run`` (receipt on, trace off) against raw ``InferenceSession.run``.

Both run the same model on the same inputs in the same process, in interleaved rounds (best
round of each). The raw baseline is a session built under the same verifiable profile, so the
ratios price veriml's work alone: input validation, SHA-256 tensor digests of inputs and
outputs, the RFC 8785 statement and the Ed25519 signature, a fixed cost per call (reported as
``overhead_us``). Two MLPs: one whose raw run takes about 1 ms (``*_1ms``) and a larger one
(``run_ratio``, the goal). ``trace_run_ratio``: the same with trace mode on (every intermediate
tensor materialised and hashed, plus the Merkle root). ``pinned_profile_ratio`` compares the
pinned raw session with onnxruntime's defaults (all graph optimisations, all cores); it is what
bitwise reproducibility costs, not veriml overhead, and is for information only.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from benchmarks._timing import compare_rates
from veriml.core.keys import SigningKey, generate_key
from veriml.models import ModelPackage
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import Profile, runner_for
from veriml.runtime import run as veriml_run


def _measure(
    tmp: Path, sizes: Sequence[int], batch: int, key: SigningKey, *, quick: bool, name: str
) -> dict[str, float]:
    iterations, rounds = (5, 6) if quick else (10, 30)
    x = {"x": np.random.default_rng(0).standard_normal((batch, sizes[0])).astype(np.float32)}
    folder = write_example_folder(tmp / name, build_mlp(sizes), name=name)
    package = ModelPackage.load(folder)
    profile = Profile()
    model_bytes = package.load_proto().SerializeToString()
    raw = ort.InferenceSession(
        model_bytes, sess_options=profile.session_options(), providers=["CPUExecutionProvider"]
    )
    default = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    runner_for(package, profile)  # sessions are built once, as a node would

    def receipt_run() -> object:
        return veriml_run(package, x, key=key)

    def trace_run() -> object:
        return veriml_run(package, x, key=key, trace=True)

    def raw_run() -> object:
        return raw.run(None, x)

    def default_run() -> object:
        return default.run(None, x)

    # Same answer, or the comparison means nothing.
    assert np.array_equal(veriml_run(package, x, key=key).outputs["probs"], raw.run(None, x)[0])
    run_rate, raw_rate = compare_rates(receipt_run, raw_run, iterations=iterations, rounds=rounds)
    trace_rate, raw_rate2 = compare_rates(trace_run, raw_run, iterations=iterations, rounds=rounds)
    pinned_rate, default_rate = compare_rates(
        raw_run, default_run, iterations=iterations, rounds=rounds
    )
    return {
        "raw_ms": 1000.0 / raw_rate,
        "run_ratio": run_rate / raw_rate,
        "trace_run_ratio": trace_rate / raw_rate2,
        "overhead_us": 1e6 / run_rate - 1e6 / raw_rate,
        "pinned_profile_ratio": pinned_rate / default_rate,
    }


def run(quick: bool) -> dict[str, object]:
    key = generate_key("ed25519")
    small_sizes, small_batch = (512, 1024, 1024, 128), 32
    large_sizes, large_batch = (1024, 2048, 2048, 1024, 128), 32
    with tempfile.TemporaryDirectory() as tmp:
        small = _measure(Path(tmp), small_sizes, small_batch, key, quick=quick, name="small")
        large = (
            small
            if quick
            else _measure(Path(tmp), large_sizes, large_batch, key, quick=quick, name="large")
        )
    return {
        "description": (
            f"MLPs {'x'.join(map(str, small_sizes))} (batch {small_batch}, *_1ms) and "
            f"{'x'.join(map(str, large_sizes))} (batch {large_batch}); float32, CPU, verifiable "
            "profile (ORT_DISABLE_ALL, 1 thread); raw = InferenceSession.run, same profile."
        ),
        "raw_ms": large["raw_ms"],
        "run_ratio": large["run_ratio"],
        "trace_run_ratio": large["trace_run_ratio"],
        "raw_ms_1ms": small["raw_ms"],
        "run_ratio_1ms": small["run_ratio"],
        "trace_run_ratio_1ms": small["trace_run_ratio"],
        "overhead_us": small["overhead_us"],
        "pinned_profile_ratio": large["pinned_profile_ratio"],
        "goals": {"run_ratio": 0.9},
    }
