"""``veriml chat`` against a local network serving SmolLM2-135M: the answer is printed once it
verified (or streamed, then verified), ``--json`` gives the trust level and the checks, and an
unknown model is a one-line error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from _checks import NETWORK, ran
from _llm import make_smollm2_folder
from veriml.client import COMPLETION_CHECKS, Client, LocalNetwork
from veriml.core.keys import generate_key

pytestmark = pytest.mark.slow

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNetwork]:
    home = tmp_path_factory.mktemp("chat-network")
    tmp = tmp_path_factory.mktemp("chat-model")
    with LocalNetwork(home, nodes=2, port=0, node_args=("--heartbeat", "1")) as network:
        folder = make_smollm2_folder(tmp / "smollm2")
        generate_key("ec").save(tmp / "publisher.key")
        with Client(network.url, log_vkey=network.log_vkey) as client:
            client.publish(folder, tmp / "publisher.key")
        yield network


def _chat(net: LocalNetwork, *args: str) -> subprocess.CompletedProcess[str]:
    # The coordinator and the log key come from the environment, as for the other commands.
    env = {**os.environ, "VERIML_URL": net.url, "VERIML_LOG_VKEY": net.log_vkey}
    return subprocess.run(
        [sys.executable, "-m", "veriml", "chat", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


def test_chat_prints_the_verified_answer_and_its_trust(net: LocalNetwork) -> None:
    done = _chat(net, "smollm2", PROMPT, "--max-tokens", "12", "--temperature", "0")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()
    assert "trust reexecutable" in done.stderr
    assert "; verified" in done.stderr


def test_chat_json_names_every_check_and_agrees_with_the_stream(net: LocalNetwork) -> None:
    args = ("smollm2", PROMPT, "--max-tokens", "12", "--temperature", "0", "--seed", "4")
    plain = _chat(net, *args, "--json", "--policy", "quorum:2/2")
    assert plain.returncode == 0, plain.stderr
    answer = json.loads(plain.stdout)
    assert answer["verified"] == list(ran(COMPLETION_CHECKS, *NETWORK))
    assert answer["trust"] == "reexecutable"
    assert answer["policy"] == "quorum:2/2"
    assert len(answer["agreeing"]) == 2
    streamed = _chat(net, *args, "--stream")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout.strip() == answer["content"].strip()


def test_an_unknown_model_is_a_one_line_error(net: LocalNetwork) -> None:
    done = _chat(net, "no-such-model", PROMPT, "--max-tokens", "8")
    assert done.returncode == 2  # NotFoundError: bad input
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("error:")


def test_a_bad_policy_is_a_usage_error_before_any_request(tmp_path: Path) -> None:
    env = {**os.environ, "VERIML_URL": "http://127.0.0.1:9", "VERIML_LOG_VKEY": ""}
    done = subprocess.run(
        [sys.executable, "-m", "veriml", "chat", "m", "hi", "--policy", "most:3"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "policy" in done.stderr
