"""Node configuration: one frozen value built once at start-up (from the CLI or code).

Defaults and why:

- ``concurrency`` = the number of CPU cores. Jobs run under the verifiable profile, which pins
  onnxruntime to one intra-op and one inter-op thread, so one job per core keeps every core
  busy without oversubscribing; more would only queue inside the thread pool.
- ``queue_length`` = 64 waiting jobs beyond the running ones. Past that the node answers 503
  with ``Retry-After`` so the coordinator retries elsewhere instead of piling up latency.
- ``heartbeat_interval`` = 5 s; the coordinator calls a node live for about three intervals.
- ``threads`` = 1 intra-op thread per job: reductions then run in one fixed order, so every
  node with the same profile gets bitwise the same result. Other values are recorded in the
  receipt's runtime fingerprint; comparing such nodes needs the tolerance mode.
- ``byzantine`` = None. A mode name makes the node cheat on purpose (docs/verification.md,
  "Byzantine harness"): for tests and demos only, and logged as a warning at start.
- ``llm_threads`` = 1 llama.cpp thread per LLM job, for the same reason as ``threads``: the
  runtime fingerprint records it and nodes with the same settings agree token for token.
  ``llm_ctx`` = 2048 tokens of context per loaded model (prompt plus completion), the
  engine's default; ``llm_max_loaded`` = 2 engines kept loaded, since each holds its weights
  and a KV cache of ``llm_ctx`` tokens.
- ``relay_url`` = None. With an upstream URL and ``relay_model`` the node runs no model
  itself: it relays LLM jobs to that OpenAI-compatible API and signs them ``attested-relay``.
- ``max_retention`` = 7 days: the longest a traced job may ask the node to keep its trace
  (``retain_until``, the answer's challenge window; ``optimistic:W`` allows W up to 7 days).
  ``trace_hold`` = 1 hour: a trace stays at least this long after it was last read, so a
  dispute opened at the end of a window still finds it.
- ``retrace_concurrency`` = 1 and ``retrace_queue`` = 16: retraces (a traced job for a request
  the node already answered, sent for a dispute) run in their own lane, which ordinary jobs
  cannot fill; the coordinator bounds the disputes open against one node well below this.
- ``max_job_validity`` = 5 minutes: the replay cache keeps job ids (in memory and in its
  journal, ``HOME/replay``) until they expire, so the node refuses jobs whose validity window
  is longer than this (docs/node.md, "Replay protection").
- ``coordinator_key``: required. A node runs only jobs its coordinator signed, so it must know
  that key from its operator, not from whoever answers at the coordinator's URL.
  ``veriml node serve --trust-coordinator-on-first-use`` learns it once, with a warning, and
  pins it at :attr:`NodeConfig.pinned_coordinator_key` (docs/node.md, "Coordinator key").
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from veriml.core.errors import FormatError
from veriml.node._byzantine import BYZANTINE_MODES
from veriml.protocol.messages import node_endpoint
from veriml.runtime import Profile

__all__ = ["DEFAULT_PASSPHRASE_ENV", "PINNED_COORDINATOR_KEY", "NodeConfig"]

DEFAULT_PASSPHRASE_ENV = "VERIML_NODE_PASSPHRASE"  # noqa: S105 - a variable name
PINNED_COORDINATOR_KEY = "coordinator.pub"
"""Where, under a node's home, a coordinator key learnt on first use is pinned."""
_MAX_QUEUE = 1 << 16
_MAX_THREADS = 256  # the runtime profile's own limit
_MIN_LLM_CTX, _MAX_LLM_CTX = 64, 1 << 20
_MAX_LLM_LOADED = 64
_ANY_ADDRESS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 - recognised, not bound


def _default_concurrency() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    """Everything a node needs to run.

    >>> NodeConfig(coordinator_url="http://127.0.0.1:8700", key_path=Path("n/node.key"),
    ...            operator_key=Path("op/operator.key"), home=Path("n")).cache_dir
    PosixPath('n/models')
    """

    coordinator_url: str
    """Base URL of the coordinator the node registers with and pulls models from."""
    key_path: Path
    """The node's Ed25519 private key (PEM); created with mode 0600 on first start if absent."""
    home: Path
    """The node's own folder; the model cache is ``home/models``."""
    operator_binding: Path | None = None
    """The operator's signed binding of this node (``veriml operator bind``): the operator's
    key stays off the node. Quorums and checks count operators, and an operator's stake
    stands behind all its nodes (docs/network.md, "Operator binding")."""
    operator_key: Path | None = None
    """Instead of a binding: the operator's private key, with which the node binds itself at
    start (convenient on one machine; the key then lives beside the node)."""
    operator_passphrase_env: str = "VERIML_OPERATOR_PASSPHRASE"  # noqa: S105 - a variable name
    """Name of the environment variable holding the operator key's passphrase."""
    passphrase_env: str = DEFAULT_PASSPHRASE_ENV
    """Name of the environment variable holding the key's passphrase (unset: no passphrase)."""
    host: str = "127.0.0.1"
    port: int = 8701
    endpoint: str | None = None
    """The origin the coordinator reaches this node at (``http(s)://host[:port]``, no path);
    default ``http://host:port``."""
    coordinator_key: Path | None = None
    """The coordinator's Ed25519 public key (PEM): required (None is refused). Jobs signed by
    any other key are refused."""
    concurrency: int = field(default_factory=_default_concurrency)
    queue_length: int = 64
    heartbeat_interval: float = 5.0
    trace_retention: float = 3600.0
    """Seconds a trace is kept after its job ran when the job names no ``retain_until``."""
    max_retention: float = 7 * 86_400.0
    """Longest ``retain_until`` (from now) a traced job may ask for; longer ones are refused."""
    trace_hold: float = 3600.0
    """Seconds a trace is kept after it was last written or read (a dispute reading it)."""
    retrace_concurrency: int = 1
    """Retraces running at once, in their own worker threads."""
    retrace_queue: int = 16
    """Retraces waiting beyond the running ones; more answer 503."""
    job_timeout: float = 60.0
    """Seconds a job may take from admission to answer, pull of its model included."""
    max_job_validity: float = 300.0
    """Longest ``expires_at - issued_at`` accepted; bounds how long the replay cache keeps ids."""
    max_body_bytes: int = 64 << 20
    """Largest ``POST /v1/jobs`` body (inputs travel in it)."""
    max_model_bytes: int = 8 << 30
    """Largest model (sum of its files) the node pulls."""
    max_trace_bytes: int = 512 << 20
    """Most bytes of trace files kept under ``home/traces``; the oldest go first beyond it."""
    shutdown_grace: float = 30.0
    """Seconds running jobs get to finish once shutdown starts."""
    access_log: bool = False
    """Log every HTTP request (off by default: at hundreds of jobs a second it costs CPU)."""
    threads: int = 1
    """onnxruntime intra-op threads per job; recorded in every receipt's runtime fingerprint."""
    byzantine: str | None = None
    """A mode of ``BYZANTINE_MODES``: the node cheats that way. Tests and demos only."""
    llm_threads: int = 1
    """llama.cpp threads per LLM job; recorded in every completion receipt's runtime."""
    llm_ctx: int = 2048
    """Context window (prompt plus completion tokens) of each loaded GGUF model."""
    llm_max_loaded: int = 2
    """GGUF models kept loaded at once; the least recently used is unloaded beyond it."""
    relay_url: str | None = None
    """An OpenAI-compatible upstream's base URL (``https://host/v1``): the node relays LLM jobs
    there and signs them ``attested-relay`` (docs/llm.md, "Relay engine")."""
    relay_model: str | None = None
    """The upstream's model id the relay serves (as ``relay:NAME``); required with a relay."""
    relay_key_env: str | None = None
    """Name of the environment variable holding the upstream's API key (None: no key)."""

    def __post_init__(self) -> None:
        if not self.coordinator_url.startswith(("http://", "https://")):
            raise FormatError("coordinator URL must be http(s)", got=self.coordinator_url)
        if (self.operator_binding is None) == (self.operator_key is None):
            raise FormatError(
                "a node needs its operator's binding (--operator-binding) or the operator's "
                "key (--operator-key), one of them"
            )
        if not 0 < self.port < 65536:
            raise FormatError("port must be 1-65535", got=self.port)
        if self.concurrency < 1 or self.concurrency > 1024:
            raise FormatError("concurrency must be 1-1024", got=self.concurrency)
        if not 0 <= self.queue_length <= _MAX_QUEUE:
            raise FormatError(f"queue length must be 0-{_MAX_QUEUE}", got=self.queue_length)
        for name in ("heartbeat_interval", "job_timeout", "max_job_validity"):
            if not getattr(self, name) > 0:
                raise FormatError(f"{name} must be positive", got=getattr(self, name))
        if not 1 <= self.retrace_concurrency <= 64 or not 0 <= self.retrace_queue <= _MAX_QUEUE:
            raise FormatError(
                f"retrace lane must have 1-64 workers and a queue of 0-{_MAX_QUEUE}",
                concurrency=self.retrace_concurrency,
                queue=self.retrace_queue,
            )
        for name in ("trace_retention", "shutdown_grace", "max_retention", "trace_hold"):
            if getattr(self, name) < 0:
                raise FormatError(f"{name} must not be negative", got=getattr(self, name))
        if self.max_body_bytes < 1024 or self.max_model_bytes < 1024:
            raise FormatError("size limits must be at least 1 KiB")
        if isinstance(self.threads, bool) or not 1 <= self.threads <= _MAX_THREADS:
            raise FormatError(f"threads must be 1-{_MAX_THREADS}", got=self.threads)
        if isinstance(self.llm_threads, bool) or not 1 <= self.llm_threads <= _MAX_THREADS:
            raise FormatError(f"llm_threads must be 1-{_MAX_THREADS}", got=self.llm_threads)
        if not _MIN_LLM_CTX <= self.llm_ctx <= _MAX_LLM_CTX:
            raise FormatError(f"llm_ctx must be {_MIN_LLM_CTX}-{_MAX_LLM_CTX}", got=self.llm_ctx)
        if not 1 <= self.llm_max_loaded <= _MAX_LLM_LOADED:
            raise FormatError(
                f"llm_max_loaded must be 1-{_MAX_LLM_LOADED}", got=self.llm_max_loaded
            )
        if (self.relay_url is None) != (self.relay_model is None):
            raise FormatError("a relay needs both its upstream URL and its model name")
        if self.relay_url is not None and not self.relay_url.startswith(("http://", "https://")):
            raise FormatError("relay upstream URL must be http(s)", got=self.relay_url[:80])
        if self.relay_key_env is not None and self.relay_url is None:
            raise FormatError("a relay key variable is only used by a relay (--relay)")
        if self.byzantine is not None and self.byzantine not in BYZANTINE_MODES:
            raise FormatError(
                "unknown byzantine mode", got=self.byzantine, expected="|".join(BYZANTINE_MODES)
            )
        if self.endpoint is None and self.host in _ANY_ADDRESS:
            raise FormatError(
                "a node bound to every interface needs an advertised endpoint the coordinator "
                "can reach (--endpoint)",
                host=self.host,
            )
        # What the coordinator accepts in a descriptor: an http(s) origin, no path.
        object.__setattr__(self, "endpoint", self._origin())
        if self.coordinator_key is None:  # last: every other mistake is named first
            raise FormatError(
                "a node needs its coordinator's public key (--coordinator-key PEM), or "
                "--trust-coordinator-on-first-use to learn and pin it once"
            )

    def _origin(self) -> str | None:
        """The endpoint given, normalised; None when none is (the default is checked too)."""
        try:
            if self.endpoint is not None:
                return node_endpoint(self.endpoint)
            node_endpoint(self.advertised_endpoint)
        except FormatError as exc:
            raise FormatError(
                "advertised endpoint must be an http(s) origin: scheme, host and port, no path",
                got=self.advertised_endpoint[:80],
            ) from exc
        return None

    @property
    def advertised_endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return self.endpoint or f"http://{host}:{self.port}"

    @property
    def pinned_coordinator_key(self) -> Path:
        """Where a coordinator key learnt on first use is kept (``HOME/coordinator.pub``)."""
        return self.home / PINNED_COORDINATOR_KEY

    @property
    def profile(self) -> Profile:
        """The runtime profile jobs run under: the verifiable one, with ``threads``."""
        return Profile(intra_op_threads=self.threads)

    @property
    def cache_dir(self) -> Path:
        return self.home / "models"

    @property
    def traces_dir(self) -> Path:
        """Kept traces and the journal of answered requests (docs/node.md, "Traces")."""
        return self.home / "traces"

    @property
    def coordinator(self) -> str:
        """The coordinator URL without a trailing slash."""
        return self.coordinator_url.rstrip("/")

    def passphrase(self) -> bytes | None:
        value = os.environ.get(self.passphrase_env)
        return value.encode() if value else None

    def operator_passphrase(self) -> bytes | None:
        value = os.environ.get(self.operator_passphrase_env)
        return value.encode() if value else None
