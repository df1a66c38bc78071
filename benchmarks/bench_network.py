"""The network end to end: ``none`` inferences at concurrency 32 against a local network
(a coordinator and three nodes, as ``veriml up`` starts them; SQLite), log inclusion included.

Baselines, measured in the same run on the same machine: raw ``InferenceSession.run`` calls on
the same model (in this process), and a bare FastAPI echo endpoint (uvicorn on 127.0.0.1, one
process, driven by the same async httpx client with the same request body).

- ``network_req_per_s_ratio`` = req/s ÷ 500, the issue's goal (≥ 1.0);
- ``network_vs_echo_ratio`` = req/s ÷ echo req/s: what one request costs beyond HTTP itself;
- ``sdk_verified_req_per_s``: the same with the SDK verifying every answer (node entries
  fetched and proven from tiles, receipts, inclusion, verdict).

Memory (``/proc/<pid>/status``): publishing then pulling and loading a model of
``big_model_mib`` (external-data weights), the coordinator's peak RSS growth, the node's, and
the node's RSS with the model loaded against a bare onnxruntime session process for that model.

Where the time goes: the coordinator runs under cProfile (``python -m cProfile``; the event
loop's thread: routes, dispatch, receipt checks) and the top entries are in the description.
"""

from __future__ import annotations

import asyncio
import io
import json
import pstats
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
from onnx import TensorProto, helper, numpy_helper

from benchmarks._timing import best_rate
from veriml.cli.network import LocalNetwork, free_port
from veriml.client import AsyncClient, Client
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
    """y = x @ W with W of ``mib`` MiB float32 in an external-data file."""
    cols = 1024
    rows = max(1, (mib << 20) // (4 * cols))
    w = np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cols])],
        [numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folder.mkdir(parents=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
    )
    (folder / "README.md").write_text(
        "---\nname: big\nversion: 1.0.0\ntask: regression\nlicense: Apache-2.0\n---\n\n# big\n"
    )
    return folder


_BARE = textwrap.dedent(
    """
    import sys, onnxruntime as ort
    from pathlib import Path
    from veriml.runtime import Profile
    s = ort.InferenceSession(sys.argv[1], sess_options=Profile().session_options(),
                             providers=["CPUExecutionProvider"])
    status = Path("/proc/self/status").read_text()
    print(int(status.split("VmRSS:")[1].split()[0]) * 1024)
    """
)


def _memory(net: LocalNetwork, tmp: Path, mib: int) -> dict[str, float]:
    folder = _big_model(tmp / "big", mib)
    key = generate_key("ec")
    key.save(tmp / "big.key")
    coordinator = net.coordinator.pid
    before = _status(coordinator, "VmRSS")
    with Client(net.url, log_vkey=net.log_vkey, timeout=1800) as client:
        client.publish(folder, tmp / "big.key")
        coordinator_growth = _status(coordinator, "VmHWM") - before
        nodes_before = {n.pid: _status(n.pid, "VmRSS") for n in net.nodes}
        rows = int(
            onnx.load(str(folder / "model.onnx"), load_external_data=False)
            .graph.input[0]
            .type.tensor_type.shape.dim[1]
            .dim_value
        )
        x = np.zeros((1, rows), dtype=np.float32)
        result = client.infer("big", {"x": x}, policy="none", verify=False)
    node = next(n for n in net.nodes if n.node_id == result.verdict.agreeing[0])
    node_growth = _status(node.pid, "VmHWM") - nodes_before[node.pid]
    node_rss = _status(node.pid, "VmRSS")
    bare = int(
        subprocess.run(
            [sys.executable, "-c", _BARE, str(folder / "model.onnx")],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout.strip()
    )
    return {
        "big_model_mib": float(mib),
        "coordinator_publish_growth_mib": coordinator_growth / (1 << 20),
        "node_pull_and_load_growth_mib": node_growth / (1 << 20),
        "node_rss_mib": node_rss / (1 << 20),
        "bare_session_rss_mib": bare / (1 << 20),
        "node_vs_bare_session_rss": node_rss / bare,
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


_NOT_REQUEST_TIME = ("poll", "marshal", "compile", "posix.stat", "importlib", "_get_spec")


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


def run(quick: bool) -> dict[str, Any]:
    total = 300 if quick else 3000
    big_mib = 64 if quick else 1024
    with tempfile.TemporaryDirectory(prefix="veriml-bench-net-") as tmp_name:
        tmp = Path(tmp_name)
        folder = write_example_folder(tmp / "mlp", build_mlp((16, 32, 3), seed=0), name="mlp")
        generate_key("ec").save(tmp / "publisher.key")
        x = np.random.default_rng(0).standard_normal((1, 16)).astype(np.float32)
        body = {"model": "mlp", "inputs": {"x": tensor_to_json(x)}, "policy": "none"}
        profile_path = tmp / "coordinator.prof"
        net = LocalNetwork(
            tmp / "net",
            nodes=3,
            port=0,
            coordinator_python_args=("-c", _PROFILED.format(out=str(profile_path))),
        )
        with net:
            with Client(net.url, log_vkey=net.log_vkey) as client:
                client.publish(folder, tmp / "publisher.key")
                client.infer("mlp", {"x": x})  # every node pulls on its first job
            _rate(net.url, "/v1/inferences", body, 3 * CONCURRENCY)  # warm up every node
            rate, latencies = _rate(net.url, "/v1/inferences", body, total)

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
        breakdown = _profile_summary(profile_path)
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
    description = (
        f"{total} `none` inferences at concurrency {CONCURRENCY} through the coordinator to "
        f"3 nodes (SQLite, log inclusion), a 16-32-3 MLP. Coordinator cProfile, event-loop "
        f"thread, by own time: {breakdown}. Memory: publishing, pulling and loading a "
        f"{big_mib} MiB model (external data)."
    )
    return {
        "description": description,
        "network_req_per_s": rate,
        "network_p50_ms": p50 * 1000,
        "network_p99_ms": p99 * 1000,
        "sdk_verified_req_per_s": sdk_rate,
        "echo_req_per_s": echo,
        "raw_onnxruntime_calls_per_s": raw,
        "network_vs_echo_ratio": rate / echo,
        "network_req_per_s_ratio": rate / GOAL_REQ_PER_S,
        **memory,
        "goals": {"network_req_per_s_ratio": 1.0},
    }


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
