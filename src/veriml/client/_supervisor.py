"""Keeping a local network running: what ``veriml up`` does once the network has started.

Each child (the coordinator, every witness, every node) is watched. One that exits is
reported and, under the ``on-failure`` policy, started again after an exponential backoff with
jitter, while the others keep serving; ``network.json`` stays, rewritten with the restarted
node's pid (atomically). A node started again registers with the coordinator again by itself
(its start-up does, with a fresh signed descriptor); the coordinator replaces its row, so a
new port is fine.

The rules, as docker compose and systemd have them:

- the *n*-th consecutive failure waits ``min(backoff_max, backoff_start * 2**(n-1))``, half of
  it fixed and half random ("equal jitter"), so children that failed together do not come
  back together;
- a failure counts as consecutive when the child ran less than ``healthy_after`` seconds; a
  child that ran longer starts its count again at one;
- after ``max_failures`` consecutive failures the child is given up (reported, not restarted
  again); under ``restart=False`` its first exit gives it up;
- a failure is an exit with a non-zero code or by a signal (a crash, SIGKILL, the OOM
  killer); a child that exits with code 0 was stopped on purpose (by someone's SIGTERM) and
  is not started again either.

The network is down for good, and :meth:`Supervisor.run` returns 1, when the coordinator gave
up (nothing serves without it), when a witness gave up (every witness must cosign each
checkpoint, so no answer would verify), or when every node gave up. One node given up while
others serve is reported and the network goes on.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from veriml.client._children import Child
from veriml.core.errors import Error, FormatError

__all__ = ["RestartPolicy", "Supervised", "Supervisor"]


@dataclass(frozen=True, kw_only=True)
class RestartPolicy:
    """When and how often a child that exited is started again."""

    restart: bool = True
    backoff_start: float = 1.0
    backoff_max: float = 30.0
    max_failures: int = 5
    healthy_after: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.backoff_start <= self.backoff_max:
            raise FormatError("backoff must satisfy 0 < start <= max", start=self.backoff_start)
        if isinstance(self.max_failures, bool) or self.max_failures < 1:
            raise FormatError("max_failures must be at least 1", got=self.max_failures)
        if self.healthy_after <= 0:
            raise FormatError("healthy_after must be positive", got=self.healthy_after)

    def delay(self, failures: int, rand: float) -> float:
        """Seconds before the restart that follows the ``failures``-th consecutive failure;
        ``rand`` in [0, 1) picks the jittered half."""
        step = min(self.backoff_max, self.backoff_start * 2.0 ** max(0, failures - 1))
        return step / 2 + step / 2 * rand

    def failures_after(self, failures: int, ran_for: float) -> int:
        """The consecutive-failure count once a child that ran ``ran_for`` seconds exits."""
        return failures + 1 if ran_for < self.healthy_after else 1

    def gives_up(self, failures: int) -> bool:
        return not self.restart or failures >= self.max_failures


class Supervised(Protocol):
    """What the supervisor needs of a network (:class:`LocalNetwork`)."""

    coordinator: Child
    witnesses: list[Child]
    nodes: list[Child]

    def restart(self, child: Child) -> None: ...

    def ready(self, child: Child) -> bool: ...

    def write_network_file(self) -> object: ...


@dataclass
class _Watch:
    """One child's record: its consecutive failures and where it is in its life."""

    child: Child
    role: str
    started_at: float
    failures: int = 0
    restart_at: float | None = None
    """Set while the child waits out its backoff."""
    serving: bool = True
    gave_up: bool = False


def exit_reason(code: int | None) -> str:
    """``code 1``, ``SIGKILL``: how a child's exit reads in a report."""
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


class Supervisor:
    """Watches a started network's children and restarts the ones that exit (module doc).

    :meth:`poll` does one round at a given time and never blocks on a child (it starts
    processes and probes readiness once), so tests drive it with their own clock."""

    def __init__(
        self,
        network: Supervised,
        policy: RestartPolicy,
        report: Callable[[str, bool], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.network = network
        self.policy = policy
        self.report = report
        self.clock = clock
        self.rand = rand
        now = clock()
        self.watches = [
            _Watch(network.coordinator, "coordinator", now),
            *(_Watch(c, "witness", now) for c in network.witnesses),
            *(_Watch(c, "node", now) for c in network.nodes),
        ]

    def run(self, stop: threading.Event, interval: float = 0.25) -> int:
        """Poll until ``stop`` is set (0) or the network is down for good (1)."""
        while not stop.wait(interval):
            verdict = self.poll()
            if verdict is not None:
                return verdict
        return 0

    def poll(self, now: float | None = None) -> int | None:
        """One round: notice exits, restart children whose backoff is over, notice restarted
        children serving again. None while the network can still serve, else 1."""
        now = self.clock() if now is None else now
        changed = False
        for watch in self.watches:
            if watch.gave_up:
                continue
            if watch.restart_at is None:
                if watch.child.alive():
                    if not watch.serving and self.network.ready(watch.child):
                        watch.serving = True
                        self.report(f"{watch.child.name} is serving again", False)
                    continue
                self._exited(watch, now)
                changed = True
            elif now >= watch.restart_at:
                self._restart(watch, now)
                changed = True
        if changed:
            self._write_network_file()
        return self._verdict()

    def _exited(self, watch: _Watch, now: float) -> None:
        child = watch.child
        code = child.process.returncode if child.process is not None else None
        watch.failures = self.policy.failures_after(watch.failures, now - watch.started_at)
        what = f"{child.name} exited ({exit_reason(code)}); log: {child.log_path}"
        if code == 0:
            # A clean exit is someone's SIGTERM (an operator's, a system shutdown's): on-failure
            # does not undo it, as in docker compose.
            watch.serving, watch.gave_up = False, True
            self.report(f"{what}; a clean exit, not restarted", True)
            return
        self._failed(watch, now, what)

    def _failed(self, watch: _Watch, now: float, what: str) -> None:
        watch.serving = False
        if not self.policy.restart:
            watch.gave_up = True
            self.report(f"{what}; not restarted (--restart no)", True)
        elif self.policy.gives_up(watch.failures):
            watch.gave_up = True
            self.report(
                f"{what}; giving up on {watch.child.name} after {watch.failures} failures "
                f"in a row, each within {self.policy.healthy_after:g} s of its start",
                True,
            )
        else:
            delay = self.policy.delay(watch.failures, self.rand())
            watch.restart_at = now + delay
            self.report(
                f"{what}; restarting in {delay:.1f} s "
                f"(failure {watch.failures} of {self.policy.max_failures})",
                True,
            )

    def _restart(self, watch: _Watch, now: float) -> None:
        watch.restart_at = None
        watch.started_at = now
        try:
            self.network.restart(watch.child)
        except (Error, OSError) as exc:
            # A start that cannot even begin (its port is held, say) is a failure like an exit.
            reason = exc.diagnostics() if isinstance(exc, Error) else str(exc)
            watch.failures += 1
            self._failed(watch, now, f"{watch.child.name} did not start: {reason}")
            return
        self.report(
            f"{watch.child.name} restarted (pid {watch.child.pid}, {watch.child.url})", False
        )

    def _write_network_file(self) -> None:
        try:
            self.network.write_network_file()
        except (Error, OSError) as exc:  # the network still serves; say the file is stale
            self.report(f"could not rewrite network.json: {exc}", True)

    def _verdict(self) -> int | None:
        down = [w for w in self.watches if w.gave_up and w.role != "node"]
        nodes = [w for w in self.watches if w.role == "node"]
        if down:
            self.report(f"{down[0].child.name} is down for good: stopping the network", True)
            return 1
        if nodes and all(w.gave_up for w in nodes):
            self.report("every node is down for good: stopping the network", True)
            return 1
        return None
