"""Prometheus metrics for the coordinator (``GET /metrics``, text exposition format).

Each app has its own :class:`prometheus_client.CollectorRegistry` (no process-wide globals,
so several apps in one process do not collide). Request counts and latencies are labelled by
the route's OpenAPI ``operation_id`` (bounded cardinality: never by raw path). Gauges for
models, live nodes and log size are read from the repositories and the log when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Literal

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.routing import Match

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from veriml.coordinator.db.nodes import ModelRepository, NodeRepository
    from veriml.tlog.log import Log

__all__ = ["CONTENT_TYPE", "Metrics"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_OBSERVED = {
    "inference": (
        "Inferences answered and logged, by policy kind and verdict",
        "Node attempts that failed: no answer in time (unavailable) or evidence that did "
        "not verify (unverified)",
    ),
    "completion": (
        "LLM answers logged, by policy kind and verdict",
        "LLM job attempts that failed: no answer (unavailable) or evidence that did not "
        "verify (unverified)",
    ),
}
"""The help texts of each service's ``veriml_<kind>_verdicts_total{policy,outcome}`` and
``veriml_<kind>_node_failures_total{reason}`` counters."""
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _StateCollector(Collector):
    def __init__(self, models: ModelRepository, nodes: NodeRepository, log: Log) -> None:
        self._models, self._nodes, self._log = models, nodes, log

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "veriml_models", "Models registered on the hub", value=self._models.count()
        )
        yield GaugeMetricFamily(
            "veriml_live_nodes", "Nodes with a recent heartbeat", value=self._nodes.count_live()
        )
        yield GaugeMetricFamily(
            "veriml_log_size", "Entries integrated in the transparency log", value=self._log.size
        )


class Metrics:
    """The app's registry: request counters and latencies, plus state gauges."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "veriml_http_requests",
            "HTTP requests answered, by operation and status code",
            ["operation", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "veriml_http_request_duration_seconds",
            "Time to answer HTTP requests, by operation",
            ["operation"],
            buckets=_BUCKETS,
            registry=self.registry,
        )

    def watch(self, models: ModelRepository, nodes: NodeRepository, log: Log) -> None:
        """Report the number of models, live nodes and the log size at every scrape."""
        self.registry.register(_StateCollector(models, nodes, log))

    def observer(self, kind: Literal["inference", "completion"]) -> Callable[[str, str], None]:
        """A service's ``observe(event, value)`` hook, counting its ``verdict`` events
        (``"<policy>/<outcome>"``) and its ``node-failure`` events (the reason) in this
        registry. Call it once per kind: each call registers its two counters."""
        verdict_help, failure_help = _OBSERVED[kind]
        verdicts = Counter(
            f"veriml_{kind}_verdicts", verdict_help, ["policy", "outcome"], registry=self.registry
        )
        failures = Counter(
            f"veriml_{kind}_node_failures", failure_help, ["reason"], registry=self.registry
        )

        def observe(event: str, value: str) -> None:
            if event == "verdict":
                policy, _, outcome = value.partition("/")
                verdicts.labels(policy, outcome).inc()
            elif event == "node-failure":
                failures.labels(value).inc()

        return observe

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Pure ASGI middleware that counts and times every request by operation id.

        (Not ``BaseHTTPMiddleware``: that wraps ``receive`` in a task group, which turns the
        body-limit error into an exception group, and it costs a task per request.)
        """

        async def counted(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            start = time.perf_counter()
            status = 500

            async def send_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                await send(message)

            try:
                await app(scope, receive, send_status)
            finally:
                operation = _operation(scope)
                self.requests.labels(operation, scope["method"], str(status)).inc()
                self.latency.labels(operation).observe(time.perf_counter() - start)

        return counted


def _operation(scope: Scope) -> str:
    route = scope.get("route")
    if route is None and "app" in scope:
        for candidate in scope["app"].router.routes:
            if candidate.matches(scope)[0] == Match.FULL:
                route = candidate
                break
    name = getattr(route, "operation_id", None) or getattr(route, "name", None)
    return str(name) if name else "unmatched"
