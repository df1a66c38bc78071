"""A local network on this machine: one coordinator, N nodes and a witness, each a ``veriml``
subprocess, all under one home folder (what ``veriml up``, the demo, the end-to-end tests and
the network benchmark start).

Layout under ``HOME`` (docs/network.md, "Keys on disk"): ``coordinator/`` (its keys, SQLite
database, blobs), ``operators/op-<i>/operator.key`` (the operator accounts),
``nodes/node-<i>/`` (node key, model cache) and ``witness/`` (``witness-<j>.key`` with its
``.vkey``, ``witness-<j>.db`` its memory), plus ``network.json`` once every node is
registered. Each node is bound to operator ``op-<i>`` (its own account) unless
``operators={node index: operator index}`` puts several nodes under one operator (one party,
one stake: what the Sybil tests start).

``witnesses=1`` (the default) starts that many ``veriml witness serve`` processes before the
coordinator and makes the coordinator publish a checkpoint only once every one of them cosigned
it; ``network.json`` names them (``witnesses``, ``witness_quorum``), so a client that pins the
log key from the file requires their cosignatures. The log key is made first (the files
``veriml log new`` writes, under ``coordinator/``) because a witness must know the log it
cosigns before the log publishes anything. ``witnesses=0`` runs without one.

``byzantine={index: mode}`` starts node ``index`` (0-based, the order of ``network.json``'s
``nodes``) cheating in that mode (docs/verification.md, "Byzantine harness": tests and demos
only); ``threads={index: n}`` gives it ``n`` intra-op threads.

``stake=AMOUNT`` (default 1000) funds every operator once its nodes are registered: a deposit
signed with the coordinator's admin key (from this disk), then a stake signed with the
operator's own key, so the coordinator's minimum stake (``min_stake``, 100 by default,
docs/ledger.md "Rules") gives their nodes jobs. ``min_stake`` sets that rule for the
coordinator (``VERIML_MIN_STAKE``); ``stake=0`` leaves the operators unbonded.

    with LocalNetwork(Path(".veriml"), nodes=3) as net:   # started, registered
        net.url, net.log_vkey, net.nodes                  # network.json written
    # every child stopped, network.json removed
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from veriml.client._config import NETWORK_FILE, NetworkFile, write_network_file
from veriml.core.errors import FormatError, NodeUnavailable

__all__ = ["Child", "LocalNetwork", "free_port"]

HOST = "127.0.0.1"
START_TIMEOUT = 90.0
STOP_TIMEOUT = 20.0
LOG_ORIGIN = "veriml.local/coordinator"
"""The local log's origin (the coordinator's default) unless ``$VERIML_LOG_ORIGIN`` sets one."""
WITNESS_NAME = "veriml.local/witness-{}"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Child:
    """One service process: its name, URL, command and log file."""

    name: str
    url: str
    args: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    node_id: str | None = None
    operator_key: Path | None = None
    """A node's operator account key (None for the coordinator)."""
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid if self.process is not None else 0

    def start(self, env: Mapping[str, str]) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._close_log()
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            self.args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            start_new_session=True,  # Ctrl-C reaches the launcher, which stops us in order
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, limit: int = 2000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL, as a crash would (for the reliability tests)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=STOP_TIMEOUT)
        self._close_log()


def _veriml() -> list[str]:
    return [sys.executable, "-m", "veriml"]


def _per_node_args(
    nodes: int, byzantine: Mapping[int, str], threads: Mapping[int, int]
) -> list[list[str]]:
    """The extra ``serve node`` arguments of each node, checked before anything starts."""
    extra: list[list[str]] = [[] for _ in range(nodes)]
    for index in (*byzantine, *threads):
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < nodes:
            raise FormatError(
                "node index must be 0-based and below the node count", index=index, nodes=nodes
            )
    if byzantine:
        from veriml.protocol.byzantine import BYZANTINE_MODES

        for index, mode in sorted(byzantine.items()):
            if mode not in BYZANTINE_MODES:
                raise FormatError(
                    "unknown byzantine mode", got=mode, expected="|".join(BYZANTINE_MODES)
                )
            extra[index] += ["--byzantine", mode]
    for index, count in sorted(threads.items()):
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 256:
            raise FormatError("threads must be 1-256", index=index, got=count)
        extra[index] += ["--threads", str(count)]
    return extra


class LocalNetwork:
    """Start, watch and stop a coordinator and ``nodes`` nodes under ``home``."""

    def __init__(
        self,
        home: Path,
        *,
        nodes: int = 3,
        port: int = 8700,
        db: str | None = None,
        env: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT,
        coordinator_args: Sequence[str] = (),
        node_args: Sequence[str] = (),
        coordinator_python_args: Sequence[str] = (),
        byzantine: Mapping[int, str] | None = None,
        threads: Mapping[int, int] | None = None,
        stake: int = 1000,
        min_stake: int | None = None,
        operators: Mapping[int, int] | None = None,
        witnesses: int = 1,
    ) -> None:
        """``coordinator_python_args`` go before ``-m veriml`` (the benchmark profiles the
        coordinator with ``-m cProfile -o FILE``). ``byzantine`` and ``threads`` are per node
        index (0-based); a bad index, mode or thread count is a :class:`FormatError`.
        ``witnesses`` witnesses cosign every checkpoint (all of them must); witness ``j``
        listens on ``port + nodes + j`` (a free port when ``port`` is 0)."""
        if nodes < 1:
            raise FormatError("a network needs at least one node", nodes=nodes)
        if isinstance(witnesses, bool) or not isinstance(witnesses, int) or witnesses < 0:
            raise FormatError("witnesses must be a non-negative integer", got=witnesses)
        per_node = _per_node_args(nodes, byzantine or {}, threads or {})
        if isinstance(stake, bool) or not isinstance(stake, int) or stake < 0:
            raise FormatError("stake must be a non-negative integer", got=stake)
        self.stake = stake
        self.home = home.resolve()
        self.start_timeout = start_timeout
        self.env = {**os.environ, **(env or {})}
        if min_stake is not None:
            self.env["VERIML_MIN_STAKE"] = str(int(min_stake))
        self.env.pop("VERIML_URL", None)  # the children are told their URLs explicitly
        coordinator_port = port or free_port()
        self.url = f"http://{HOST}:{coordinator_port}"
        logs = self.home / "logs"
        args = [
            sys.executable,
            *coordinator_python_args,
            "-m",
            "veriml",
            "serve",
            "coordinator",
            "--home",
            str(self.home),
            "--host",
            HOST,
            "--port",
            str(coordinator_port),
            *(["--db", db] if db else []),
            *coordinator_args,
        ]
        self.coordinator = Child("coordinator", self.url, args, logs / "coordinator.log")
        self._coordinator_args = args
        self.witnesses: list[Child] = []
        for j in range(1, witnesses + 1):
            witness_port = port + nodes + j if port else free_port()
            name = f"witness-{j}"
            url = f"http://{HOST}:{witness_port}"
            # The arguments naming the log are filled in by start(), once its key exists.
            self.witnesses.append(Child(name, url, [], logs / f"{name}.log"))
        self.witness_vkeys: list[str] = []
        self.witness_quorum = witnesses
        self.nodes: list[Child] = []
        shared = dict(operators or {})
        for index, owner in shared.items():
            if not (0 <= index < nodes and 0 <= owner < nodes):
                raise FormatError("operators map node indexes to node indexes", index=index)
        for i in range(1, nodes + 1):
            node_port = port + i if port else free_port()
            name = f"node-{i}"
            node_home = self.home / "nodes" / name
            operator_key = self.home / "operators" / f"op-{shared.get(i - 1, i - 1) + 1}"
            operator_key = operator_key / "operator.key"
            node_cmd = [
                *_veriml(),
                "serve",
                "node",
                "--coordinator",
                self.url,
                "--coordinator-key",
                str(self.home / "coordinator" / "coordinator.pub"),
                "--home",
                str(node_home),
                "--key",
                str(node_home / "node.key"),
                "--operator-key",
                str(operator_key),
                "--host",
                HOST,
                "--port",
                str(node_port),
                *node_args,
                *per_node[i - 1],
            ]
            node_url = f"http://{HOST}:{node_port}"
            child = Child(name, node_url, node_cmd, logs / f"{name}.log")
            child.operator_key = operator_key
            self.nodes.append(child)
        self.log_vkey = ""

    # -- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> LocalNetwork:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self) -> NetworkFile:
        """Start everything; return once every node is registered and network.json is written."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / NETWORK_FILE).unlink(missing_ok=True)
        self._operator_keys()
        if self.witnesses:
            self.start_witnesses()
        self.start_coordinator()
        for node in self.nodes:
            node.start(self.env)
        self.wait_registered()
        if self.stake:
            self.fund_nodes(self.stake)
        return self.write_network_file()

    def node_key_path(self, node: Child) -> Path:
        return self.home / "nodes" / node.name / "node.key"

    def _operator_keys(self) -> None:
        """An Ed25519 key per operator account, made once (mode 0600)."""
        from veriml.core.keys import generate_key

        for node in self.nodes:
            path = node.operator_key
            if path is not None and not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                generate_key("ed25519").save(path)

    def operator_id(self, node: Child) -> str:
        """The account id of ``node``'s operator."""
        from veriml.core.keys import load_private_key

        assert node.operator_key is not None
        return load_private_key(node.operator_key, kind="ed25519").key_id

    def fund_nodes(self, amount: int, nodes: Sequence[Child] | None = None) -> None:
        """Deposit ``amount`` to the operator of each node (signed by the coordinator's admin
        key) and stake it (signed by the operator's key); an operator of several nodes is
        funded once."""
        from veriml.client._client import Client
        from veriml.core.keys import load_private_key

        admin = load_private_key(self.home / "coordinator" / "coordinator.key", kind="ed25519")
        chosen = nodes if nodes is not None else self.nodes
        paths = list(dict.fromkeys(n.operator_key for n in chosen if n.operator_key is not None))
        keys = [load_private_key(path, kind="ed25519") for path in paths]
        with Client(self.url, log_vkey=self.log_vkey or None, verify=False) as client:
            for key in keys:
                client.deposit(key.key_id, amount, admin)
        for key in keys:
            with Client(self.url, log_vkey=self.log_vkey or None, key=key, verify=False) as client:
                client.stake(amount)

    def start_witnesses(self) -> None:
        """Make the log key and the witness keys (once), start every witness trusting that log,
        and wire them into the coordinator's arguments; return once each one answers."""
        origin, log_vkey = self._log_key()
        folder = self.home / "witness"
        self.witness_vkeys = []
        wiring = ["--log-origin", origin]
        for j, child in enumerate(self.witnesses, start=1):
            key, vkey = self._witness_key(folder, j)
            self.witness_vkeys.append(vkey)
            child.args = [
                *_veriml(),
                "witness",
                "serve",
                "--key",
                str(key),
                "--name",
                WITNESS_NAME.format(j),
                "--log",
                log_vkey,
                "--state",
                str(folder / f"witness-{j}.db"),
                "--host",
                HOST,
                "--port",
                child.url.rsplit(":", 1)[1],
            ]
            wiring += ["--witness", f"{vkey}={child.url}"]
        wiring += ["--witness-quorum", str(self.witness_quorum)]
        self.coordinator.args = [*self._coordinator_args, *wiring]
        for child in self.witnesses:
            child.start(self.env)
        # Before its first cosignature a witness answers 404 for the log's checkpoint: up.
        probe = f"/{hashlib.sha256(origin.encode()).hexdigest()}/checkpoint"
        for child in self.witnesses:
            self._wait(lambda c=child: _answers(c.url + probe), f"{child.name} to start")

    def _log_key(self) -> tuple[str, str]:
        """The log's origin and verifier key, from the coordinator's key sidecar; the key is
        made first if absent (the files ``veriml log new`` writes), so the witnesses can
        trust the log before the coordinator starts."""
        from veriml.core.keys import generate_key
        from veriml.tlog.note import NoteSigner

        data = self.home / "coordinator"
        sidecar = data / "log.key.json"
        if not sidecar.exists():
            data.mkdir(parents=True, exist_ok=True)
            origin = self.env.get("VERIML_LOG_ORIGIN") or LOG_ORIGIN
            secret = self.env.get("VERIML_KEY_PASSPHRASE")
            key = generate_key("ed25519")
            key.save(data / "log.key", passphrase=secret.encode() if secret else None)
            signer = NoteSigner(origin, key)
            body = {"origin": origin, "vkey": signer.vkey}
            sidecar.write_text(json.dumps(body, indent=2) + "\n")
        try:
            meta = json.loads(sidecar.read_text())
            return str(meta["origin"]), str(meta["vkey"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise NodeUnavailable("unreadable log key sidecar", path=str(sidecar)) from exc

    @staticmethod
    def _witness_key(folder: Path, j: int) -> tuple[Path, str]:
        """Witness ``j``'s key file and verifier key, made once (what ``veriml witness new``
        writes: the key, mode 0600, ``.pub`` and ``.vkey``)."""
        from veriml.core.keys import generate_key, load_private_key
        from veriml.tlog.cosignature import CosignatureSigner

        path = folder / f"witness-{j}.key"
        if path.exists():
            key = load_private_key(path, kind="ed25519")
        else:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            key = generate_key("ed25519")
            key.save(path)
        vkey = CosignatureSigner(WITNESS_NAME.format(j), key).vkey
        path.with_name(path.name + ".vkey").write_text(vkey + "\n")
        return path, vkey

    def start_coordinator(self) -> None:
        self.coordinator.start(self.env)
        self._wait(lambda: self._get("/healthz") is not None, "the coordinator to start")
        self.log_vkey = self._read_log_vkey()
        self._write_coordinator_pub()

    def _write_coordinator_pub(self) -> None:
        # The nodes pin the coordinator's job-signing key from this disk (no trust on first use).
        from veriml.core.keys import load_private_key

        data = self.home / "coordinator"
        key = load_private_key(data / "coordinator.key", kind="ed25519")
        (data / "coordinator.pub").write_bytes(key.public.to_pem())

    def _read_log_vkey(self) -> str:
        # From the coordinator's own key sidecar on this disk, not from what it serves: the
        # log key is pinned from a source the coordinator process cannot rewrite later.
        import json

        sidecar = self.home / "coordinator" / "log.key.json"
        try:
            return str(json.loads(sidecar.read_text())["vkey"])
        except (OSError, ValueError, KeyError) as exc:
            raise NodeUnavailable(
                "the coordinator wrote no log key sidecar", path=str(sidecar)
            ) from exc

    def wait_registered(self, nodes: Sequence[Child] | None = None) -> None:
        """Wait until every node (or ``nodes``) is registered and live."""
        wanted = list(nodes if nodes is not None else self.nodes)

        def registered() -> bool:
            listed = self._get("/v1/nodes")
            if listed is None:
                return False
            items = listed.get("nodes", listed) if isinstance(listed, dict) else listed
            by_endpoint = {
                str(n.get("endpoint", "")).rstrip("/"): n
                for n in items
                if isinstance(n, dict) and n.get("live", n.get("active", True))
            }
            for node in wanted:
                entry = by_endpoint.get(node.url)
                if entry is None:
                    return False
                node.node_id = str(entry.get("node_id") or entry.get("id"))
            return True

        self._wait(registered, "every node to register")

    def write_network_file(self) -> NetworkFile:
        network = NetworkFile(
            url=self.url,
            log_vkey=self.log_vkey,
            nodes=tuple({"id": n.node_id, "url": n.url, "pid": n.pid} for n in self.nodes),
            witnesses=tuple(self.witness_vkeys),
            witness_quorum=self.witness_quorum if self.witness_vkeys else 0,
        )
        write_network_file(self.home, network)
        return network

    def dead(self) -> list[Child]:
        """Children that exited on their own."""
        children = (*self.witnesses, self.coordinator, *self.nodes)
        return [c for c in children if c.process and not c.alive()]

    def stop(self) -> None:
        """Stop the nodes, then the coordinator, then the witnesses (the coordinator's last
        checkpoint is cosigned as it closes); remove network.json."""
        (self.home / NETWORK_FILE).unlink(missing_ok=True)
        for child in (*self.nodes, self.coordinator, *self.witnesses):
            with contextlib.suppress(OSError):
                child.stop()

    # -- helpers -----------------------------------------------------------------------------

    def _get(self, path: str) -> Any:
        try:
            response = httpx.get(self.url + path, timeout=2)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        try:
            return response.json()
        except ValueError:
            return {}

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            dead = self.dead()
            if dead:
                child = dead[0]
                raise NodeUnavailable(
                    f"{child.name} exited while waiting for {what}",
                    code=child.process.returncode if child.process else None,
                    log=child.tail(600),
                )
            if ready():
                return
            if time.monotonic() > deadline:
                raise NodeUnavailable(f"timed out waiting for {what}", seconds=self.start_timeout)
            time.sleep(0.1)


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (any status)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True
