"""The veriml Python SDK: publish models, run verified inference, check saved answers offline.

    from veriml.client import Client

    with Client("http://127.0.0.1:8700", log_vkey=vkey) as client:
        client.publish(Path("iris"), Path("publisher.key"))
        result = client.infer("iris", {"x": x}, policy="quorum:3/2")   # verified
        result.save(Path("answer.json"))

    verify_inference_file(Path("answer.json"), log_vkey=vkey)         # offline

LLM answers come through the OpenAI-compatible API (docs/llm.md)::

    reply = client.chat("smollm2", [{"role": "user", "content": "Hi"}], max_tokens=16)
    reply.content, reply.trust, reply.verified    # verified like infer(); see verify_completion

Every answer is verified before it is returned (docs/sdk.md, "What is verified, in order"):
receipt signatures against node keys proven in the log, the model digest, the output digests,
the inference entry's inclusion under a checkpoint signed by the pinned log key (and
witnesses), and the policy verdict. Any failure raises :class:`veriml.errors.VerificationError`
naming the ``check``.

The checks themselves are pure code in :mod:`veriml.verify` (:mod:`~veriml.verify.inference`,
:mod:`~veriml.verify.completion`, the answer formats in :mod:`~veriml.verify.answer`); this
package re-exports them and keeps the transport. The ``_``-prefixed modules are internal.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from veriml.client._config import (
    NETWORK_FILE,
    SETTINGS_KEYS,
    NetworkFile,
    cache_dir,
    client_settings,
    config_file,
    default_home,
    pin_log_key,
    read_network_file,
    resolve_url,
    write_network_file,
)
from veriml.core.lazy import lazy_exports
from veriml.verify.answer import (
    AnswerOutputs,
    InferenceResult,
    LogEvidence,
    NodeEvidence,
    Verification,
    is_network_result,
)
from veriml.verify.inference import CHECKS, POLICY_CHECKS, VerifiedInference, verify_inference

if TYPE_CHECKING:
    from collections.abc import Sequence

    from veriml.client._async import AsyncChatStream, AsyncClient
    from veriml.client._chat import ChatResult, canonical_policy
    from veriml.client._client import ChatStream, Client
    from veriml.client._disputes import Challenger
    from veriml.client._local import LocalNetwork
    from veriml.client._publish import Progress
    from veriml.client._requests import raise_for_problem
    from veriml.client._watch import Watcher
    from veriml.client._watch_report import CheckedInference, WatchSummary
    from veriml.tlog.cosignature import CosignatureVerifier
    from veriml.tlog.note import NoteVerifier
    from veriml.verify.completion import COMPLETION_CHECKS, VerifiedCompletion, verify_completion
    from veriml.verify.tolerance import OutputBounds

__all__ = [
    "CHECKS",
    "COMPLETION_CHECKS",
    "NETWORK_FILE",
    "POLICY_CHECKS",
    "SETTINGS_KEYS",
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
]


def verify_inference_file(
    path: Path,
    *,
    log_vkey: str | NoteVerifier | None = None,
    witnesses: Sequence[str | CosignatureVerifier] = (),
    quorum: int = 0,
    home: Path | None = None,
    bounds: OutputBounds | None = None,
) -> VerifiedInference:
    """Verify a saved answer fully offline; the log key and the witnesses are pinned as for
    :class:`Client` (a key from the local network's file brings its witnesses). ``bounds``
    recomputes tolerance-mode agreement (see :func:`verify_inference`)."""
    from veriml.client._config import pin_witnesses

    result = InferenceResult.load(Path(path))
    log_key = pin_log_key(log_vkey, home)
    chosen, quorum = pin_witnesses(log_vkey, tuple(witnesses), quorum, home)
    return verify_inference(result, log_key=log_key, witnesses=chosen, quorum=quorum, bounds=bounds)


# The HTTP clients, the local-network launcher, the challenger, the watcher and the completion
# (LLM) verification load on first use; so do the helpers the CLI uses.
_LAZY: dict[str, str] = {
    "Client": "veriml.client._client",
    "AsyncClient": "veriml.client._async",
    "LocalNetwork": "veriml.client._local",
    "Challenger": "veriml.client._disputes",
    "Watcher": "veriml.client._watch",
    "ChatStream": "veriml.client._client",
    "AsyncChatStream": "veriml.client._async",
    "ChatResult": "veriml.client._chat",
    "canonical_policy": "veriml.client._chat",
    "Progress": "veriml.client._publish",
    "raise_for_problem": "veriml.client._requests",
    "CheckedInference": "veriml.client._watch_report",
    "WatchSummary": "veriml.client._watch_report",
    "COMPLETION_CHECKS": "veriml.verify.completion",
    "VerifiedCompletion": "veriml.verify.completion",
    "verify_completion": "veriml.verify.completion",
}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, eager=tuple(__all__))
