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

Ports: ``port=P`` puts the coordinator on ``P`` (a :class:`ConflictError` if it is taken) and every
node and witness on the next free port above it; ``port=0`` picks a free port for each
(below the kernel's ephemeral range, so no client connection takes it meanwhile; see
``_children.py``). A node or witness whose port is taken by the time it starts is moved to
another one.

``stake=AMOUNT`` (default 1000) funds every operator once its nodes are registered: a deposit
signed with the coordinator's admin key (from this disk), then a stake signed with the
operator's own key, so the coordinator's minimum stake (``min_stake``, 100 by default,
docs/ledger.md "Rules") gives their nodes jobs. ``min_stake`` sets that rule for the
coordinator (``VERIML_MIN_STAKE``); ``stake=0`` leaves the operators unbonded.

    with LocalNetwork(Path(".veriml"), nodes=3) as net:   # started, registered
        net.url, net.log_vkey, net.nodes                  # network.json written
    # every child stopped, network.json removed

:meth:`LocalNetwork.supervise` keeps a started network running: a child that dies is restarted
with exponential backoff (``_supervisor.py``), which is what ``veriml up`` does.
"""

from __future__ import annotations

import hashlib
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx

from veriml.client._children import (
    HOST,
    STOP_TIMEOUT,
    Child,
    free_port,
    next_free_port,
    port_free,
    set_option,
    terminate,
)
from veriml.client._config import NETWORK_FILE, NetworkFile, write_network_file
from veriml.client._local_keys import (
    WITNESS_NAME,
    log_key,
    operator_keys,
    read_log_key,
    witness_key,
    write_coordinator_pub,
)
from veriml.core.errors import ConflictError, FormatError, NodeUnavailableError

__all__ = ["LocalNetwork"]

START_TIMEOUT = 90.0
PORT_RETRIES = 3
"""How often one start moves a child whose port was taken between the check and its bind."""


def _veriml() -> list[str]:
    return [sys.executable, "-m", "veriml"]


def _per_node_args(
    nodes: int, byzantine: Mapping[int, str], threads: Mapping[int, int]
) -> list[list[str]]:
    """The extra ``node serve`` arguments of each node, checked before anything starts."""
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
        ``witnesses`` witnesses cosign every checkpoint (all of them must). ``port`` is the
        coordinator's; the nodes, then the witnesses, take the free ports above it (free ports
        anywhere when ``port`` is 0)."""
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
        self._base_port = port
        self._respawns: dict[str, int] = {}
        self.cancel = threading.Event()
        """Set it (from a signal handler, say) to make a :meth:`start` under way give up."""
        coordinator_port = port or free_port()
        assigned = {coordinator_port}
        self.url = f"http://{HOST}:{coordinator_port}"
        logs = self.home / "logs"
        args = [
            sys.executable,
            *coordinator_python_args,
            "-m",
            "veriml",
            "coordinator",
            "serve",
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
        self.witness_vkeys: list[str] = []
        self.witness_quorum = witnesses
        self.nodes: list[Child] = []
        shared = dict(operators or {})
        for index, owner in shared.items():
            if not (0 <= index < nodes and 0 <= owner < nodes):
                raise FormatError("operators map node indexes to node indexes", index=index)
        for i in range(1, nodes + 1):
            node_port = self._pick_port(assigned)
            assigned.add(node_port)
            name = f"node-{i}"
            node_home = self.home / "nodes" / name
            operator_key = self.home / "operators" / f"op-{shared.get(i - 1, i - 1) + 1}"
            operator_key = operator_key / "operator.key"
            node_cmd = [
                *_veriml(),
                "node",
                "serve",
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
        for j in range(1, witnesses + 1):
            witness_port = self._pick_port(assigned)
            assigned.add(witness_port)
            name = f"witness-{j}"
            url = f"http://{HOST}:{witness_port}"
            # The arguments naming the log are filled in by start(), once its key exists.
            self.witnesses.append(Child(name, url, [], logs / f"{name}.log"))
        self.log_vkey = ""
        self._log_origin = ""

    # -- ports -------------------------------------------------------------------------------

    def _pick_port(self, avoid: set[int]) -> int:
        """A free port for a node or witness: the first above the base port, or any."""
        if self._base_port:
            return next_free_port(self._base_port, avoid)
        return free_port(avoid)

    def children(self) -> tuple[Child, ...]:
        """Every child, in start order: witnesses, coordinator, nodes."""
        return (*self.witnesses, self.coordinator, *self.nodes)

    def _movable(self, child: Child) -> bool:
        """Whether ``child`` may listen somewhere else: a node always (it tells the coordinator
        its endpoint when it registers), a witness or an automatic coordinator port only while
        nothing that was told its URL is running."""
        if child in self.nodes:
            return True
        if child is self.coordinator:
            return not self._base_port and not any(n.alive() for n in self.nodes)
        return not self.coordinator.alive()

    def _ensure_port(self, child: Child) -> None:
        """Before ``child`` starts: move it off a port something else took meanwhile, or raise
        :class:`ConflictError` when it must keep that port (the coordinator's ``--port``)."""
        if port_free(child.port):
            return
        if not self._movable(child):
            raise ConflictError(f"port {child.port} of {child.name} is in use", port=child.port)
        child.move_to(self._pick_port({c.port for c in self.children()}))
        if child is self.coordinator:
            self.url = child.url
            for node in self.nodes:
                set_option(node.args, "--coordinator", self.url)

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
        self._ensure_port(self.coordinator)  # a --port in use is refused before anything runs
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / NETWORK_FILE).unlink(missing_ok=True)
        operator_keys(self.nodes)
        if self.witnesses:
            self.start_witnesses()
        self.start_coordinator()
        for node in self.nodes:
            self.restart(node)
        self.wait_registered()
        if self.stake:
            self.fund_nodes(self.stake)
        return self.write_network_file()

    def node_key_path(self, node: Child) -> Path:
        return self.home / "nodes" / node.name / "node.key"

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
        """Make the log key and the witness keys (once) and start every witness trusting that
        log; return once each one answers. :meth:`start_coordinator` wires them in."""
        origin, log_vkey = log_key(self.home / "coordinator", self.env)
        self._log_origin = origin
        folder = self.home / "witness"
        self.witness_vkeys = []
        for j, child in enumerate(self.witnesses, start=1):
            key, vkey = witness_key(folder, j)
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
                str(child.port),
            ]
        for child in self.witnesses:
            self.restart(child)
        for child in self.witnesses:
            self._wait(partial(self.ready, child), f"{child.name} to start")

    def _witness_probe(self) -> str:
        # Before its first cosignature a witness answers 404 for the log's checkpoint: up.
        return f"/{hashlib.sha256(self._log_origin.encode()).hexdigest()}/checkpoint"

    def _coordinator_command(self) -> list[str]:
        """The coordinator's arguments, with its port and its witnesses' current URLs."""
        args = list(self._coordinator_args)
        set_option(args, "--port", str(self.coordinator.port))
        if self.witnesses:
            args += ["--log-origin", self._log_origin]
            for vkey, child in zip(self.witness_vkeys, self.witnesses, strict=True):
                args += ["--witness", f"{vkey}={child.url}"]
            args += ["--witness-quorum", str(self.witness_quorum)]
        return args

    def start_coordinator(self) -> None:
        """Start the coordinator (again, after a crash) and return once it answers."""
        self.restart(self.coordinator)
        self._wait(lambda: self.ready(self.coordinator), "the coordinator to start")
        self.log_vkey = read_log_key(self.home / "coordinator")[1]
        write_coordinator_pub(self.home / "coordinator")

    def wait_registered(self, nodes: Sequence[Child] | None = None) -> None:
        """Wait until every node (or ``nodes``) is registered and live."""
        wanted = list(nodes if nodes is not None else self.nodes)

        def registered() -> bool:
            listed = self._registrations()
            if listed is None or any(node.url not in listed for node in wanted):
                return False
            for node in wanted:
                self._note_registration(node, listed[node.url])
            return True

        self._wait(registered, "every node to register")

    def _registrations(self) -> dict[str, dict[str, Any]] | None:
        """The coordinator's live nodes by endpoint, or None when it does not answer."""
        listed = self._get("/v1/nodes")
        if listed is None:
            return None
        items = listed.get("nodes", listed) if isinstance(listed, dict) else listed
        return {
            str(n.get("endpoint", "")).rstrip("/"): n
            for n in items
            if isinstance(n, dict) and n.get("live", n.get("active", True))
        }

    @staticmethod
    def _note_registration(node: Child, entry: Mapping[str, Any]) -> None:
        node.node_id = str(entry.get("node_id") or entry.get("id"))
        index = entry.get("log_index")
        node.log_index = index if isinstance(index, int) else node.log_index

    def ready(self, child: Child) -> bool:
        """One probe (no waiting): whether ``child`` serves. The coordinator answers
        ``/healthz``, a witness answers HTTP, and a node is registered, live, with a newer
        registration than the last one seen (so a restarted node counts once it registered
        again, not while its predecessor's row is still live)."""
        if child is self.coordinator:
            return self._get("/healthz") is not None
        if child in self.witnesses:
            return _answers(child.url + self._witness_probe())
        entry = (self._registrations() or {}).get(child.url)
        if entry is None:
            return False
        index = entry.get("log_index")
        if child.log_index is not None and not (isinstance(index, int) and index > child.log_index):
            return False
        self._note_registration(child, entry)
        return True

    def restart(self, child: Child) -> None:
        """Start ``child`` again after it exited, without waiting for it to serve. A node (or a
        witness while the coordinator is down) whose port was taken meanwhile moves to a free
        one; a child that must keep its port raises :class:`ConflictError`."""
        if child.alive():
            return
        self._ensure_port(child)
        if child is self.coordinator:
            child.args = self._coordinator_command()
        child.start(self.env)

    def supervise(
        self,
        stop: threading.Event,
        report: Callable[[str, bool], None],
        *,
        restart: bool = True,
        max_failures: int = 5,
    ) -> int:
        """Keep the started network running until ``stop`` is set; return 0 then, or 1 as soon
        as it is down for good (the coordinator or a witness gave up, or every node did).

        A child that exits is reported and, with ``restart``, started again after an
        exponential backoff with jitter; after ``max_failures`` consecutive failures each
        within a short time of its start it is given up. ``network.json`` is rewritten
        (atomically) whenever a node's pid or URL changes. ``report(line, is_error)`` gets
        one line per event. The caller stops the network afterwards (:meth:`stop`)."""
        from veriml.client._supervisor import RestartPolicy, Supervisor

        policy = RestartPolicy(restart=restart, max_failures=max_failures)
        return Supervisor(self, policy, report).run(stop)

    def write_network_file(self) -> NetworkFile:
        """Write ``network.json`` (atomically): a node not running has ``pid`` 0."""
        network = NetworkFile(
            url=self.url,
            log_vkey=self.log_vkey,
            nodes=tuple(
                {"id": n.node_id, "url": n.url, "pid": n.pid if n.alive() else 0}
                for n in self.nodes
            ),
            witnesses=tuple(self.witness_vkeys),
            witness_quorum=self.witness_quorum if self.witness_vkeys else 0,
        )
        write_network_file(self.home, network)
        return network

    def dead(self) -> list[Child]:
        """Children that exited on their own."""
        return [c for c in self.children() if c.process and not c.alive()]

    def stop(
        self, grace: float = STOP_TIMEOUT, hurry: threading.Event | None = None
    ) -> list[Child]:
        """Remove network.json and stop the nodes, then the coordinator, then the witnesses
        (the coordinator's last checkpoint is cosigned as it closes). Each group gets SIGTERM
        and, ``grace`` seconds later (at once when ``hurry`` is set), SIGKILL for any child
        still running; returns the children that had to be killed."""
        (self.home / NETWORK_FILE).unlink(missing_ok=True)
        killed: list[Child] = []
        for group in (self.nodes, [self.coordinator], self.witnesses):
            killed += terminate(group, grace=grace, hurry=hurry)
        return killed

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

    def _wait(self, ready: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while True:
            if self.cancel.is_set():
                raise NodeUnavailableError(f"start cancelled while waiting for {what}")
            for child in self.dead():
                if not self._respawn_if_port_lost(child):
                    raise NodeUnavailableError(
                        f"{child.name} exited while waiting for {what}",
                        code=child.process.returncode if child.process else None,
                        log=child.tail(600),
                    )
            if ready():
                return
            if time.monotonic() > deadline:
                raise NodeUnavailableError(
                    f"timed out waiting for {what}", seconds=self.start_timeout
                )
            time.sleep(0.1)

    def _respawn_if_port_lost(self, child: Child) -> bool:
        """Start ``child`` again on another port if it died because something took its port
        between the check and its bind (a few times per child); False when it died of
        anything else, or must keep its port."""
        tries = self._respawns.get(child.name, 0)
        if port_free(child.port) or not self._movable(child) or tries >= PORT_RETRIES:
            return False
        self._respawns[child.name] = tries + 1
        self.restart(child)
        return True


def _answers(url: str) -> bool:
    """Whether anything answers HTTP at ``url`` (any status)."""
    try:
        httpx.get(url, timeout=2)
    except httpx.HTTPError:
        return False
    return True
