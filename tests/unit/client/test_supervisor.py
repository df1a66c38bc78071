"""The supervisor's rules (``veriml up``), on small real processes and a clock the test drives:
a crashed child comes back after its backoff while the rest keep running, a child that keeps
crashing is given up, and the network is down for good only when it can no longer serve."""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from veriml.client._children import Child, terminate
from veriml.client._supervisor import RestartPolicy, Supervisor, exit_reason
from veriml.core.errors import ConflictError, FormatError

SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]
CRASH = [sys.executable, "-c", "raise SystemExit(3)"]


@dataclass
class FakeNetwork:
    """The three things the supervisor asks of a network, over real child processes."""

    coordinator: Child
    witnesses: list[Child]
    nodes: list[Child]
    written: int = 0
    refuse: set[str] = field(default_factory=set)

    def restart(self, child: Child) -> None:
        if child.name in self.refuse:
            raise ConflictError("port 1 of node is in use", port=1)
        child.start({})

    def ready(self, child: Child) -> bool:
        return True

    def write_network_file(self) -> object:
        self.written += 1
        return None

    def children(self) -> list[Child]:
        return [self.coordinator, *self.witnesses, *self.nodes]


@pytest.fixture
def net(tmp_path: Path) -> Iterator[FakeNetwork]:
    def child(name: str) -> Child:
        return Child(name, "http://127.0.0.1:1", list(SLEEP), tmp_path / f"{name}.log")

    network = FakeNetwork(
        child("coordinator"), [child("witness-1")], [child("node-1"), child("node-2")]
    )
    for c in network.children():
        c.start({})
    try:
        yield network
    finally:
        terminate(network.children(), grace=5)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, bool]] = []

    def __call__(self, line: str, error: bool) -> None:
        self.lines.append((line, error))

    def text(self) -> str:
        return "\n".join(line for line, _ in self.lines)


def _crash(child: Child) -> int:
    assert child.process is not None
    pid = child.process.pid
    child.process.send_signal(signal.SIGKILL)
    child.process.wait()
    return pid


POLICY = RestartPolicy(backoff_start=1.0, backoff_max=8.0, max_failures=3, healthy_after=30.0)


def test_backoff_doubles_to_its_cap_with_half_of_each_step_jittered() -> None:
    assert [POLICY.delay(n, 0.0) for n in (1, 2, 3, 4, 5, 9)] == [0.5, 1, 2, 4, 4, 4]
    assert [POLICY.delay(n, 0.999999) for n in (1, 2, 5)] == pytest.approx([1, 2, 8])


def test_a_long_healthy_run_starts_the_failure_count_again() -> None:
    assert POLICY.failures_after(2, ran_for=29.0) == 3
    assert POLICY.failures_after(2, ran_for=31.0) == 1


def test_a_policy_without_room_to_restart_is_refused() -> None:
    with pytest.raises(FormatError):
        RestartPolicy(max_failures=0)
    with pytest.raises(FormatError):
        RestartPolicy(backoff_start=5, backoff_max=1)


def test_a_crashed_node_is_restarted_after_its_backoff_while_the_others_keep_running(
    net: FakeNetwork,
) -> None:
    log = Log()
    supervisor = Supervisor(net, POLICY, log, clock=lambda: 0.0, rand=lambda: 0.0)
    victim = net.nodes[0]
    old = _crash(victim)
    others = [c.pid for c in net.children() if c is not victim]

    assert supervisor.poll(now=10.0) is None
    assert "node-1 exited (SIGKILL)" in log.text()
    assert "restarting in 0.5 s (failure 1 of 3)" in log.text()
    assert not victim.alive()
    assert net.written == 1  # network.json shows the node down (pid 0) meanwhile

    assert supervisor.poll(now=10.4) is None
    assert not victim.alive()  # still waiting out its backoff
    assert supervisor.poll(now=10.5) is None
    assert victim.alive()
    assert victim.pid != old
    assert net.written == 2
    assert f"node-1 restarted (pid {victim.pid}" in log.text()
    assert [c.pid for c in net.children() if c is not victim] == others
    assert all(c.alive() for c in net.children())

    supervisor.poll(now=11.0)
    assert "node-1 is serving again" in log.text()


def test_a_node_that_keeps_crashing_is_given_up_and_the_rest_go_on(net: FakeNetwork) -> None:
    log = Log()
    supervisor = Supervisor(net, POLICY, log, clock=lambda: 0.0, rand=lambda: 0.0)
    victim = net.nodes[0]
    victim.args = list(CRASH)
    _crash(victim)
    now, restarts = 1.0, 0
    for _ in range(20):
        assert supervisor.poll(now=now) is None
        if "giving up" in log.text():
            break
        if victim.alive() or victim.process is not None:
            assert victim.process is not None
            victim.process.wait()
        restarts = log.text().count("node-1 restarted")
        now += 10.0
    assert "giving up on node-1 after 3 failures in a row" in log.text()
    assert restarts == 2  # the third crash in a row is not restarted
    assert all(c.alive() for c in net.children() if c is not victim)
    assert supervisor.poll(now=now + 100) is None  # one node still serves


def test_the_network_is_down_for_good_when_the_coordinator_gives_up(net: FakeNetwork) -> None:
    log = Log()
    no_restarts = RestartPolicy(restart=False)
    supervisor = Supervisor(net, no_restarts, log, clock=lambda: 0.0)
    _crash(net.coordinator)
    assert supervisor.poll(now=1.0) == 1
    assert "coordinator exited (SIGKILL)" in log.text()
    assert "not restarted (--restart no)" in log.text()
    assert "coordinator is down for good" in log.text()


def test_a_witness_given_up_stops_the_network_but_one_node_of_two_does_not(
    net: FakeNetwork,
) -> None:
    supervisor = Supervisor(net, RestartPolicy(restart=False), Log(), clock=lambda: 0.0)
    _crash(net.nodes[0])
    assert supervisor.poll(now=1.0) is None
    _crash(net.witnesses[0])
    assert supervisor.poll(now=2.0) == 1


def test_every_node_given_up_stops_the_network(net: FakeNetwork) -> None:
    log = Log()
    supervisor = Supervisor(net, RestartPolicy(restart=False), log, clock=lambda: 0.0)
    for node in net.nodes:
        _crash(node)
    assert supervisor.poll(now=1.0) == 1
    assert "every node is down for good" in log.text()


def test_a_clean_exit_was_asked_for_and_is_not_undone(net: FakeNetwork) -> None:
    log = Log()
    supervisor = Supervisor(net, POLICY, log, clock=lambda: 0.0)
    node = net.nodes[1]
    node.args = [sys.executable, "-c", "pass"]
    _crash(node)
    node.start({})
    assert node.process is not None
    node.process.wait()
    assert supervisor.poll(now=1.0) is None
    assert "node-2 exited (code 0); log:" in log.text()
    assert "a clean exit, not restarted" in log.text()
    assert supervisor.poll(now=100.0) is None
    assert not node.alive()


def test_a_restart_that_cannot_begin_counts_as_a_failure(net: FakeNetwork) -> None:
    log = Log()
    supervisor = Supervisor(net, POLICY, log, clock=lambda: 0.0, rand=lambda: 0.0)
    net.refuse.add("node-1")
    _crash(net.nodes[0])
    for now in (1.0, 2.0, 4.0, 10.0, 20.0):
        supervisor.poll(now=now)
    assert "node-1 did not start: port 1 of node is in use" in log.text()
    assert "giving up on node-1 after 3 failures in a row" in log.text()


def test_exits_read_as_signal_names_or_codes() -> None:
    assert exit_reason(-9) == "SIGKILL"
    assert exit_reason(3) == "code 3"
