"""The SDK's public names are pinned; a verifying client needs a pinned log key."""

from __future__ import annotations

import subprocess
import sys

import veriml.client

PUBLIC = {
    "CHECKS",
    "COMPLETION_CHECKS",
    "NETWORK_FILE",
    "POLICY_CHECKS",
    "AnswerOutputs",
    "AsyncChatStream",
    "AsyncClient",
    "Challenger",
    "ChatResult",
    "ChatStream",
    "CheckedInference",
    "Client",
    "InferenceResult",
    "LocalNetwork",
    "LogEvidence",
    "NetworkFile",
    "NodeEvidence",
    "Progress",
    "SETTINGS_KEYS",
    "Verification",
    "VerifiedCompletion",
    "VerifiedInference",
    "WatchSummary",
    "Watcher",
    "cache_dir",
    "canonical_policy",
    "client_settings",
    "config_file",
    "default_home",
    "is_network_result",
    "pin_log_key",
    "raise_for_problem",
    "read_network_file",
    "resolve_url",
    "verify_completion",
    "verify_inference",
    "verify_inference_file",
    "write_network_file",
}


def test_client_exports_are_pinned_and_resolve() -> None:
    assert set(veriml.client.__all__) == PUBLIC
    for name in veriml.client.__all__:
        assert getattr(veriml.client, name) is not None, name


def test_the_top_level_client_is_the_sdk_client() -> None:
    import veriml

    assert veriml.Client is veriml.client.Client


def test_a_client_without_a_pinned_log_key_refuses_to_verify(tmp_path: object) -> None:
    code = (
        "import os; os.environ.pop('VERIML_LOG_VKEY', None);"
        "from veriml.client import Client\n"
        "try:\n Client('http://127.0.0.1:1', home=__import__('pathlib').Path('/nonexistent'))\n"
        "except Exception as e: print(type(e).__name__, e.check)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "VerificationError log-key"
