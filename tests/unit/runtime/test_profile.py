"""The verifiable profile, its sessions and the runtime fingerprint."""

from __future__ import annotations

import json

import onnxruntime as ort
import pytest

from veriml.core.errors import ExecutionError, FormatError, InvalidModelError
from veriml.runtime import Profile, create_session, platform_fingerprint, runtime_fingerprint
from veriml.runtime._fingerprint import _cpu_flags, _platform

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse4_1 sse4_2 avx avx2 fma f16c avx512f avx512_vnni amx_tile ht popcnt
processor\t: 1
flags\t\t: fpu
"""
ARM_CPUINFO = """processor\t: 0
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve
"""


def test_default_profile_disables_graph_rewrites_and_pins_one_thread() -> None:
    profile = Profile()
    assert profile.graph_optimization_level == "ORT_DISABLE_ALL"
    assert (profile.intra_op_threads, profile.inter_op_threads) == (1, 1)
    options = profile.session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert options.intra_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"graph_optimization_level": "ORT_FAST"},
        {"intra_op_threads": 0},
        {"inter_op_threads": -1},
        {"intra_op_threads": True},
        {"execution_provider": ""},
    ],
)
def test_profile_refuses_unreproducible_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        Profile(**kwargs)  # type: ignore[arg-type]


def test_profile_survives_the_fingerprint_round_trip() -> None:
    profile = Profile(graph_optimization_level="ORT_ENABLE_BASIC", intra_op_threads=2)
    fingerprint = json.loads(json.dumps(runtime_fingerprint(profile)))
    assert Profile.from_json(fingerprint) == profile


def test_profile_from_a_foreign_engine_is_refused() -> None:
    fingerprint = runtime_fingerprint(Profile()) | {"engine": "tensorrt"}
    with pytest.raises(FormatError, match="onnxruntime"):
        Profile.from_json(fingerprint)


def test_fingerprint_names_engine_version_provider_and_platform() -> None:
    fp = runtime_fingerprint(Profile())
    assert fp["engine"] == "onnxruntime"
    assert fp["version"] == ort.__version__
    assert fp["execution_provider"] == "CPUExecutionProvider"
    assert fp["graph_optimization_level"] == "ORT_DISABLE_ALL"
    assert fp["platform"]["machine"]
    assert isinstance(fp["platform"]["cpu_flags"], list)
    json.dumps(fp)  # it goes into a signed JSON predicate


def test_fingerprint_reads_the_platform_once_and_copies_out() -> None:
    platform_fingerprint()
    hits = _platform.cache_info().hits
    first = platform_fingerprint()
    first["cpu_flags"].append("tampered")
    assert "tampered" not in platform_fingerprint()["cpu_flags"]
    assert _platform.cache_info().hits >= hits + 2


def test_cpu_flags_keep_only_float_relevant_features_of_the_first_cpu() -> None:
    assert _cpu_flags(X86_CPUINFO) == sorted(
        ["sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "amx_tile"]
    )
    assert _cpu_flags(ARM_CPUINFO) == ["asimd", "asimddp", "asimdhp", "fp", "fphp", "sve"]
    assert _cpu_flags("processor: 0\n") == []


def test_missing_execution_provider_is_an_execution_error() -> None:
    with pytest.raises(ExecutionError, match="not available"):
        create_session(b"", Profile(execution_provider="NoSuchExecutionProvider"))


def test_garbage_model_bytes_are_an_invalid_model() -> None:
    with pytest.raises(InvalidModelError, match="cannot load"):
        create_session(b"\x08\x07not a model", Profile())
