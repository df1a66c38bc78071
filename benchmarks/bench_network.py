"""The network end to end: ``none`` inferences at concurrency 32 against a local network
(a coordinator and three nodes, as ``veriml up`` starts them; SQLite), log inclusion included.

Baselines, measured in the same run on the same machine: raw ``InferenceSession.run`` calls on
the same model (in this process), and a bare FastAPI echo endpoint (uvicorn on 127.0.0.1, one
process, driven by the same async httpx client with the same request body).

- ``network_req_per_s_ratio`` = req/s ÷ 500, the issue's goal (≥ 1.0);
- ``network_vs_echo_ratio`` = req/s ÷ echo req/s: what one request costs beyond HTTP itself;
- ``sdk_verified_req_per_s``: the same with the SDK verifying every answer (node entries
  fetched and proven from tiles, receipts, inclusion, verdict);
- ``pull_memory_ratio`` = 100 MiB ÷ ``pull_growth_mib`` and ``load_memory_ratio`` = 1.2 ÷
  ``loaded_vs_bare_session_rss``: the issue's memory limits, met at ≥ 1.0.

CPU per request (``/proc/<pid>/stat``, user + system, during the measured run):
``coordinator_cpu_ms_per_req``, ``nodes_cpu_ms_per_req`` (the three together) and
``loadgen_cpu_ms_per_req`` (this process, the httpx client). Their sum bounds the rate on this
machine: 2 cores give at most 2000 / sum req/s, whatever the latency.

Memory (``/proc/<pid>/status``), each step in its own process so no peak hides another's:
(a) streaming -- the coordinator's peak RSS growth while a model of ``big_model_mib``
(external-data weights) is published, and a process's peak growth while it pulls that model
exactly as a node does (download, hashing, OMS signature, validation): ``pull_growth_mib``;
(b) loading -- a process holding the pulled package's session against a bare onnxruntime
session of the same file (``loaded_vs_bare_session_rss``, goal ≤ 1.2); and, end to end, a real
node's growth for pulling, loading and running it on a job.

Where the time goes: after the measured run, a second network whose coordinator runs under
cProfile answers a few hundred requests; the top entries by own time (the event loop's
thread: routes, dispatch, receipt checks) are in the description. The profiler slows that
coordinator down, so none of the figures above come from it.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from benchmarks._timing import best_rate
from veriml.client import AsyncClient, Client
from veriml.client._children import free_port
from veriml.client._local import LocalNetwork
from veriml.core.digest import Digest
from veriml.core.keys import generate_key
from veriml.core.tensors import tensor_to_json
from veriml.models.examples import build_mlp, write_example_folder
from veriml.runtime import Profile

CONCURRENCY = 32
GOAL_REQ_PER_S = 500.0


def _status(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(text.split(f"{field}:")[1].split()[0]) * 1024


async def _load(url: str, path: str, body: dict[str, Any], total: int) -> list[float]:
    """POST ``body`` ``total`` times at CONCURRENCY; the latency of each, in seconds."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as client:
        queue = iter(range(total))

        async def worker() -> None:
            for _ in queue:
                t0 = time.perf_counter()
                response = await client.post(path, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


def _rate(url: str, path: str, body: dict[str, Any], total: int) -> tuple[float, list[float]]:
    t0 = time.perf_counter()
    latencies = asyncio.run(_load(url, path, body, total))
    return total / (time.perf_counter() - t0), latencies


_ECHO = textwrap.dedent(
    """
    import sys, uvicorn
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    app = FastAPI()
    @app.post("/echo")
    async def echo(request: Request) -> Response:
        return Response(await request.body(), media_type="application/json")
    @app.get("/healthz")
    async def healthz() -> dict:
        return {"ok": True}
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
    """
)


def _echo_rate(body: dict[str, Any], total: int) -> float:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", _ECHO, str(port)])
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("echo server did not start")
            time.sleep(0.05)
        _rate(url, "/echo", body, min(200, total))  # warm up
        rate, _ = _rate(url, "/echo", body, total)
        return rate
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def _big_model(folder: Path, mib: int) -> Path:
    """y = x @ W with W of ``mib`` MiB float32 as ONNX external data (``weights.bin``), written
    in chunks: a single protobuf cannot exceed 2 GiB, and the bench should not hold W either."""
    cols = 1024
    rows = max(1, (mib << 20) // (4 * cols))
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with (folder / "weights.bin").open("wb") as out:
        for start in range(0, rows, 4096):
            chunk = rng.standard_normal((min(4096, rows - start), cols), dtype=np.float32)
            out.write(chunk.astype("<f4").tobytes())
    w = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[rows, cols])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(rows * cols * 4))):
        w.external_data.add(key=k, value=v)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save_model(model, str(folder / "model.onnx"))
    (folder / "README.md").write_text(
        "---\nname: big\nversion: 1.0.0\ntask: regression\nlicense: Apache-2.0\n---\n\n# big\n"
    )
    return folder


# Each memory figure is measured in a fresh process, so one step's peak is not hidden by
# another's: RSS after imports, then the step, then the peak (VmHWM) and the RSS after it.
_MEASURE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    def rss(field):
        status = Path("/proc/self/status").read_text()
        return int(status.split(field + ":")[1].split()[0]) * 1024

    step, arg = sys.argv[1], sys.argv[2:]
    if step == "bare":
        import onnxruntime as ort
        from veriml.runtime import Profile
        before = rss("VmRSS")
        keep = ort.InferenceSession(arg[0], sess_options=Profile().session_options(),
                                    providers=["CPUExecutionProvider"])
    elif step == "pull":
        import httpx
        from veriml.core.digest import Digest
        from veriml.models.pull import pull_model
        before = rss("VmRSS")
        with httpx.Client(timeout=600) as client:
            keep = pull_model(client, arg[0], Digest.from_text(arg[1]), Path(arg[2]),
                              max_bytes=1 << 40)
    else:
        from veriml.core.digest import Digest
        from veriml.models.pull import load_cached
        from veriml.runtime import Runner
        before = rss("VmRSS")
        keep = Runner.for_package(load_cached(Path(arg[0]), Digest.from_text(arg[1])))
    print(json.dumps({"before": before, "peak": rss("VmHWM"), "after": rss("VmRSS")}))
    """
)


def _measure(*args: str) -> dict[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=1800,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _memory(net: LocalNetwork, tmp: Path, mib: int) -> dict[str, float]:
    """(a) publishing and pulling stream: coordinator and pulling process growth; (b) loading:
    a node process with the model loaded against a bare onnxruntime session."""
    folder = _big_model(tmp / "big", mib)
    key = generate_key("ec")
    key.save(tmp / "big.key")
    coordinator = net.coordinator.pid
    before = _status(coordinator, "VmRSS")
    with Client(net.url, log_vkey=net.log_vkey, timeout=1800) as client:
        digest = client.publish(folder, tmp / "big.key")["digest"]
    coordinator_growth = _status(coordinator, "VmHWM") - before
    # (a) The pull alone (download, hashing, OMS signature, validation), as nodes run it.
    pull = _measure("pull", net.url, digest, str(tmp / "pulled"))
    cached = tmp / "pulled" / Digest.from_text(digest).hex
    # (b) Loading the pulled package into a session, against a bare session of the file.
    loaded = _measure("load", str(cached), digest)
    bare = _measure("bare", str(cached / "model.onnx"))
    # End to end: a real node pulls, loads and runs it on a job.
    nodes_before = {n.pid: _status(n.pid, "VmRSS") for n in net.nodes}
    rows = int(
        onnx.load(str(folder / "model.onnx"), load_external_data=False)
        .graph.input[0]
        .type.tensor_type.shape.dim[1]
        .dim_value
    )
    with Client(net.url, log_vkey=net.log_vkey, timeout=1800) as client:
        x = np.zeros((1, rows), dtype=np.float32)
        result = client.infer("big", {"x": x}, policy="none", verify=False)
    node = next(n for n in net.nodes if n.node_id == result.verdict.agreeing[0])
    node_growth = _status(node.pid, "VmHWM") - nodes_before[node.pid]
    mib_ = 1 << 20
    return {
        "big_model_mib": float(mib),
        "coordinator_publish_growth_mib": coordinator_growth / mib_,
        "pull_growth_mib": (pull["peak"] - pull["before"]) / mib_,
        "loaded_rss_mib": loaded["after"] / mib_,
        "bare_session_rss_mib": bare["after"] / mib_,
        "loaded_vs_bare_session_rss": loaded["after"] / bare["after"],
        # onnxruntime's own peak while it builds a session (weight pre-packing) is in both.
        "loaded_peak_mib": loaded["peak"] / mib_,
        "bare_session_peak_mib": bare["peak"] / mib_,
        "node_pull_load_run_growth_mib": node_growth / mib_,
        "node_rss_mib": _status(node.pid, "VmRSS") / mib_,
    }


# uvicorn re-raises SIGTERM after a graceful shutdown; turned into SystemExit here, so the
# profile is written (``python -m cProfile`` would die with the signal before writing).
_PROFILED = textwrap.dedent(
    """
    import cProfile, runpy, signal, sys
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    sys.argv = ["veriml", *sys.argv[3:]]
    profile = cProfile.Profile()
    try:
        profile.runcall(runpy.run_module, "veriml", run_name="__main__")
    except SystemExit:
        pass
    finally:
        profile.dump_stats({out!r})
    """
)


# Idle waiting, start-up (imports) and connection set-up at warm-up (cProfile charges a
# coroutine there with the time it waited for the connection).
_NOT_REQUEST_TIME = (
    "poll",
    "marshal",
    "compile",
    "posix.stat",
    "importlib",
    "_get_spec",
    "connect_tcp",
    "load_verify_locations",
)


def _profile_summary(path: Path, top: int = 12) -> str:
    out = io.StringIO()
    stats = pstats.Stats(str(path), stream=out)
    stats.sort_stats("tottime").print_stats(4 * top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    rows = []
    for ln in lines[start + 1 :]:
        parts = ln.split(None, 5)
        # Idle waiting and start-up (imports) are not where a request's time goes.
        if len(parts) != 6 or any(w in parts[5] for w in _NOT_REQUEST_TIME):
            continue
        rows.append(f"{float(parts[1]):.2f}s {parts[5][-60:]}")
        if len(rows) == top:
            break
    return "; ".join(rows)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (``/proc/<pid>/stat``), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _publish_and_warm(net: LocalNetwork, folder: Path, key: Path, body: dict[str, Any]) -> None:
    with Client(net.url, log_vkey=net.log_vkey) as client:
        client.publish(folder, key)
    _rate(net.url, "/v1/inferences", body, 3 * CONCURRENCY)  # every node pulls, warms up


def _profiled_breakdown(tmp: Path, folder: Path, key: Path, body: dict[str, Any]) -> str:
    profile_path = tmp / "coordinator.prof"
    net = LocalNetwork(
        tmp / "net-profiled",
        nodes=3,
        port=0,
        coordinator_python_args=("-c", _PROFILED.format(out=str(profile_path))),
    )
    with net:
        _publish_and_warm(net, folder, key, body)
        _rate(net.url, "/v1/inferences", body, 500)
    return _profile_summary(profile_path)


def run(quick: bool) -> dict[str, Any]:
    total = 300 if quick else 3000
    # Just over 2 GiB in full runs: more than one ONNX protobuf may hold.
    big_mib = 64 if quick else 2100
    with tempfile.TemporaryDirectory(prefix="veriml-bench-net-") as tmp_name:
        tmp = Path(tmp_name)
        folder = write_example_folder(tmp / "mlp", build_mlp((16, 32, 3), seed=0), name="mlp")
        key = tmp / "publisher.key"
        generate_key("ec").save(key)
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        body = {"model": "mlp", "inputs": {"x": tensor_to_json(x)}, "policy": "none"}
        with LocalNetwork(tmp / "net", nodes=3, port=0) as net:
            _publish_and_warm(net, folder, key, body)
            pids = [net.coordinator.pid, *(n.pid for n in net.nodes)]
            cpu_before = [_cpu_seconds(p) for p in pids]
            self_before = _self_cpu_seconds()
            rate, latencies = _rate(net.url, "/v1/inferences", body, total)
            loadgen_cpu = _self_cpu_seconds() - self_before
            cpu = [_cpu_seconds(p) - b for p, b in zip(pids, cpu_before, strict=True)]

            async def verified(count: int) -> float:
                async with AsyncClient(net.url, log_vkey=net.log_vkey) as client:
                    t0 = time.perf_counter()
                    sem = asyncio.Semaphore(CONCURRENCY)

                    async def one() -> None:
                        async with sem:
                            await client.infer("mlp", {"x": x})

                    await asyncio.gather(*(one() for _ in range(count)))
                    return count / (time.perf_counter() - t0)

            sdk_rate = asyncio.run(verified(60 if quick else 300))
            memory = _memory(net, tmp, big_mib)
        breakdown = _profiled_breakdown(tmp, folder, key, body)
        echo = _echo_rate(body, total)
        package_session = ort.InferenceSession(
            str(folder / "model.onnx"),
            sess_options=Profile().session_options(),
            providers=["CPUExecutionProvider"],
        )
        raw = best_rate(lambda: package_session.run(None, {"x": x}), iterations=2000, rounds=5)
    latencies.sort()
    p50 = statistics.median(latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    per_req = {
        "coordinator_cpu_ms_per_req": cpu[0] / total * 1000,
        "nodes_cpu_ms_per_req": sum(cpu[1:]) / total * 1000,
        "loadgen_cpu_ms_per_req": loadgen_cpu / total * 1000,
    }
    budget = sum(per_req.values())
    description = (
        f"{total} `none` inferences at concurrency {CONCURRENCY} through the coordinator to "
        f"3 nodes (SQLite, log inclusion), a 16-32-3 MLP. CPU per request: coordinator "
        f"{per_req['coordinator_cpu_ms_per_req']:.1f} ms, nodes "
        f"{per_req['nodes_cpu_ms_per_req']:.1f} ms, load generator "
        f"{per_req['loadgen_cpu_ms_per_req']:.1f} ms: {budget:.1f} ms in all, so 2 cores "
        f"allow at most {2000 / budget:.0f} req/s; a bare echo endpoint driven by the same "
        f"client reaches {echo:.0f} req/s. Where the coordinator's goes (py-spy): "
        f"about a third is HTTP to the nodes (httpx/httpcore: two socket writes per job, "
        f"pool bookkeeping), a quarter serving HTTP (uvicorn, FastAPI, middleware), a fifth "
        f"the database (pending row, completion, the log's batch commit and tiles), the rest "
        f"JSON and RFC 8785, job signing and receipt verification (~0.3 ms); a node's job "
        f"is mostly HTTP (uvicorn, FastAPI: ~a quarter) and JSON, then the receipt "
        f"(RFC 8785 and signing), the job-signature check and the onnxruntime call. "
        f"Coordinator cProfile (second, profiled run), event-loop "
        f"thread, by own time: {breakdown}. Memory: publishing, pulling and loading a "
        f"{big_mib} MiB model (external data)."
    )
    return {
        "description": description,
        "network_req_per_s": rate,
        "network_p50_ms": p50 * 1000,
        "network_p99_ms": p99 * 1000,
        **per_req,
        "sdk_verified_req_per_s": sdk_rate,
        "echo_req_per_s": echo,
        "raw_onnxruntime_calls_per_s": raw,
        "network_vs_echo_ratio": rate / echo,
        "network_req_per_s_ratio": rate / GOAL_REQ_PER_S,
        **memory,
        # Goals as ratios where higher is better (≥ 1.0 met): limit ÷ measured.
        "pull_memory_ratio": 100.0 / max(memory["pull_growth_mib"], 1e-9),
        "load_memory_ratio": 1.2 / memory["loaded_vs_bare_session_rss"],
        "goals": {
            "network_req_per_s_ratio": 1.0,
            "pull_memory_ratio": 1.0,
            "load_memory_ratio": 1.0,
        },
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
