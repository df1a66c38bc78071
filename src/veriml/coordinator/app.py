"""``create_app(settings)``: the coordinator as one FastAPI application.

Nothing is opened at import time or in ``create_app``: the lifespan opens the database (and
migrates it), the blob store, the keys, the log and an HTTP client, builds the services over
them, stores the one frozen :class:`~veriml.coordinator.state.CoordinatorState` as
``app.state.coordinator`` and closes them all at shut-down. The log's
C2SP tlog-tiles API is mounted read-only under ``/log/`` (entries are appended by the
coordinator itself, never through HTTP).

>>> app = create_app(Settings(home=Path(".veriml")))  # doctest: +SKIP
>>> uvicorn.run(app, host="127.0.0.1", port=8700)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from functools import partial
from typing import Any, cast

import httpx
from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

import veriml
from veriml.coordinator import auth, schemas
from veriml.coordinator import routes as service_routes
from veriml.coordinator.db import tables as db
from veriml.coordinator.db.beacon import BeaconKeyRepository
from veriml.coordinator.db.disputes import DisputeStore, answered_at
from veriml.coordinator.db.models import NamespaceRepository
from veriml.coordinator.db.nodes import ModelRepository, NodeRepository, NonceRepository
from veriml.coordinator.disputes import routes as disputes_routes
from veriml.coordinator.disputes.service import DisputeOptions, DisputeService
from veriml.coordinator.hub import routes as hub_routes
from veriml.coordinator.hub.service import HubService
from veriml.coordinator.inference import routes as inference_routes
from veriml.coordinator.keys import load_or_create_keys
from veriml.coordinator.ledger import routes as ledger_routes
from veriml.coordinator.ledger.service import LedgerBook, TensorStore
from veriml.coordinator.llm import routes as llm_routes
from veriml.coordinator.llm import schemas as llm_schemas
from veriml.coordinator.metrics import Metrics
from veriml.coordinator.nodes import routes as nodes_routes
from veriml.coordinator.nodes.beacon import Beacon
from veriml.coordinator.nodes.dispatch import PerHostTransport
from veriml.coordinator.nodes.registry import RegistryService
from veriml.coordinator.nodes.scheduler import Candidate
from veriml.coordinator.problems import install_problem_handlers, problem
from veriml.coordinator.ratelimit import RateLimits, install_rate_limits
from veriml.coordinator.settings import Settings
from veriml.coordinator.state import CoordinatorState, Resources
from veriml.core.errors import Error, LimitExceededError, StorageError
from veriml.models.blobstore import BlobStore
from veriml.protocol.http_signatures import MAX_SKEW, MAX_WINDOW
from veriml.protocol.openapi import complete_document
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.server import create_log_router
from veriml.tlog.witness import WitnessClient

__all__ = ["ROUTERS", "create_app", "default_app"]

ROUTERS = (
    hub_routes.router,
    nodes_routes.router,
    ledger_routes.router,
    disputes_routes.router,
    llm_routes.router,
    inference_routes.router,
)
"""Every sub-package's ``routes.router``, included by :func:`create_app` in this order (then
the log's read-only API under ``/log/`` and the service routes)."""
_UPLOAD_ROUTE = ("POST", "/v1/models")
_log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _LogProxy:
    """Stands for the log in the ``/log/`` router, which is built before the lifespan opens
    the log; every attribute is read from the app's state at request time."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app

    def __getattr__(self, name: str) -> Any:
        state: CoordinatorState | None = getattr(self._app.state, "coordinator", None)
        if state is None:
            raise StorageError("the log is not open (the coordinator is starting)")
        return getattr(state.log, name)


class BodyLimit:
    """ASGI middleware: 413 for a body whose ``Content-Length`` exceeds the route's limit,
    before any of it is read; the same when a body without one streams past it."""

    def __init__(self, app: ASGIApp, *, default: int, upload: int) -> None:
        self.app = app
        self.default = default
        self.upload = upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload if (scope["method"], scope["path"]) == _UPLOAD_ROUTE else self.default
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                response = problem(413, f"request body is larger than {limit} bytes", limit=limit)
                await response(scope, receive, send)
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise LimitExceededError("request body is too large", limit=limit)
            return message

        await self.app(scope, counted, send)


class _Metered:
    """Counts and times requests (see :meth:`Metrics.middleware`)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
        self._counted = metrics.middleware(app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._counted(scope, receive, send)


def _open_resources(
    settings: Settings, metrics: Metrics, limits: RateLimits
) -> tuple[Resources, list[Callable[[], None]]]:
    """Open every resource (blocking); the closers, in the order to run them."""
    closers: list[Callable[[], None]] = []
    try:
        passphrase = settings.key_passphrase.encode() if settings.key_passphrase else None
        keys = load_or_create_keys(
            settings.data_dir, origin=settings.log_origin, passphrase=passphrase
        )
        engine = db.open_engine(settings.db_url)
        closers.append(engine.dispose)
        blobs = BlobStore(settings.blobs_url, max_size=settings.max_upload_bytes)
        # With witnesses, a checkpoint is published (and answers wait for it) only once
        # enough of them cosigned it; they are closed after the log's last publish.
        witnesses = tuple(WitnessClient(url, key) for key, url in settings.witness_endpoints())
        closers += [w.close for w in witnesses]
        options = LogOptions(
            batch_interval=settings.log_batch_interval,
            witnesses=witnesses,
            quorum=settings.required_cosignatures,
        )
        log = Log.open(settings.log_db_url, keys.log, options=options)
        closers.insert(0, log.close)
        models = ModelRepository(engine)
        nodes = NodeRepository(engine, live_after=settings.live_after)
        # Descriptor nonces and signed requests' nonces (kept past the longest signature).
        keep = max(2 * settings.descriptor_max_age, 2 * (MAX_WINDOW + MAX_SKEW.total_seconds()))
        nonces = NonceRepository(engine, keep=keep)
        metrics.watch(models, nodes, log)
        ledger = LedgerBook(log, settings, admin=keys.coordinator.key_id)
        hub = HubService(
            settings=settings,
            models=models,
            namespaces=NamespaceRepository(engine),
            blobs=blobs,
            log=log,
            book=ledger,
        )
        hub.sweep_staging()
        if settings.allow_unsigned_publish:
            _log.warning(
                "unsigned publishing is on: models without a publisher signature are "
                "registered (marked unsigned, reachable by digest only)"
            )
        registry = RegistryService(
            settings=settings, nodes=nodes, nonces=nonces, log=log, book=ledger, limits=limits
        )
        # Stored inputs live apart from the hub's blobs: GET /v1/blobs serves any blob by
        # digest, and a private request's inputs are readable only by its requester.
        tensor_blobs = BlobStore(settings.blobs_url.rstrip("/") + "/tensors")
        resources = Resources(
            settings=settings,
            metrics=metrics,
            rate_limits=limits,
            engine=engine,
            blobs=blobs,
            log=log,
            coordinator_key=keys.coordinator,
            capability_key=auth.capability_key(keys.coordinator),
            models=models,
            nodes=nodes,
            nonces=nonces,
            ledger=ledger,
            hub=hub,
            registry=registry,
            tensors=TensorStore(tensor_blobs, max_bytes=settings.max_json_bytes),
            # The randomness beacon opens after the ledger book (``Beacon.open``).
            beacon=Beacon(BeaconKeyRepository(engine), ledger, interval=settings.beacon_interval),
            http=httpx.AsyncClient(
                timeout=httpx.Timeout(settings.job_timeout, connect=5.0),
                transport=PerHostTransport(
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32)
                ),
            ),
        )
    except BaseException:
        for close in closers:
            close()
        raise
    return resources, closers


def _dispute_service(resources: Resources) -> DisputeService:
    """The dispute engine over the app's keys, HTTP client, models, tensors, ledger and the
    database table that keeps open disputes across restarts."""
    settings = resources.settings
    options = DisputeOptions(
        timeout=settings.dispute_timeout,
        job_timeout=settings.job_timeout,
        slash_fraction=settings.slash_fraction,
        reward_fraction=settings.reward_fraction,
        challenge_bond=settings.challenge_bond,
        challenge_window=settings.challenge_window,
        max_open_per_node=settings.max_disputes_per_node,
        # A retrace's trace is needed for the dispute's span (reads then hold it longer);
        # an hour stays within what any node keeps, so the ask is never refused.
        retrace_retention=min(ABANDONED_AFTER_MOVES * settings.dispute_timeout, 3600.0),
        max_tensor_bytes=settings.max_json_bytes,
    )
    engine = resources.engine
    return DisputeService(
        key=resources.coordinator_key,
        http=resources.http,
        load_model=resources.load_model,
        book=resources.ledger,
        load_tensor=resources.tensors.get,
        store_tensors=resources.tensors.put,
        list_nodes=inference_routes.node_lister(resources, schedulable_only=False),
        find_node=partial(_registered_node, resources.nodes),
        store=DisputeStore(engine, owner=uuid.uuid4().hex, lease=options.lease),
        answered_at=lambda inference: answered_at(engine, inference),
        options=options,
    )


def _registered_node(nodes: NodeRepository, node_id: str) -> Candidate | None:
    """A registered node, live or not (blocking): a dispute reaches a defendant the
    scheduler has set aside for a moment (busy, or between heartbeats)."""
    row = nodes.get(node_id)
    if row is None:
        return None
    return Candidate.of(row)


ABANDONED_AFTER_MOVES = 64
"""A dispute older than this many move deadlines cannot still be running (bisection over a
2**20-entry trace takes about 40 moves): the sweeper closes it without a winner."""


async def _sweep_disputes(disputes: DisputeService, settings: Settings) -> None:
    """Keep this replica's leases on the disputes it drives, resume stored ones no replica
    drives, and close disputes with no stored record that a lost database left open (see
    ``maintain`` and ``void_abandoned``)."""
    while True:
        await asyncio.sleep(max(1.0, min(60.0, settings.dispute_timeout)))
        try:
            await disputes.maintain()
            await disputes.void_abandoned(
                older_than=ABANDONED_AFTER_MOVES * settings.dispute_timeout
            )
        except Error as exc:  # the next sweep tries again
            _log.warning("open disputes not swept: %s", exc.diagnostics())


def create_app(settings: Settings) -> FastAPI:
    """The coordinator app for ``settings``; resources open when the app starts."""

    metrics = Metrics()
    limits = RateLimits.from_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        resources, closers = await run_in_threadpool(_open_resources, settings, metrics, limits)
        # The rules and the bond map, then the randomness beacon: logged before any request.
        await resources.ledger.open()
        await resources.beacon.open()
        disputes = _dispute_service(resources)
        state = CoordinatorState.over(
            resources,
            disputes=disputes,
            inference=inference_routes.service_over(resources, disputes),
            completions=llm_routes.service_over(resources, disputes),
        )
        app.state.coordinator = state
        try:  # before serving: a challenger's next request finds its dispute again
            await disputes.resume()
        except Error as exc:  # the sweeper tries again
            _log.warning("open disputes not resumed: %s", exc.diagnostics())
        sweeper = asyncio.create_task(_sweep_disputes(disputes, settings))
        rotation = asyncio.create_task(resources.beacon.run(), name="veriml-beacon")
        try:
            await run_in_threadpool(state.inference.recover_pending)
        except Error as exc:  # the rows stay pending; GET and retries complete them
            _log.warning("pending inferences not recovered: %s", exc.diagnostics())
        try:
            yield
        finally:
            for task in (sweeper, rotation):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await disputes.aclose()
            await resources.http.aclose()
            for close in closers:
                await run_in_threadpool(close)

    app = FastAPI(
        title="veriml coordinator",
        version=veriml.__version__,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    install_problem_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    app.include_router(create_log_router(cast(Log, _LogProxy(app))), prefix="/log")
    app.include_router(service_routes.router)
    _describe_bodies(app)
    # Innermost, so the requests it refuses are metered and bounded like any other.
    install_rate_limits(app, limits)
    app.add_middleware(_Metered, metrics=metrics)
    app.add_middleware(BodyLimit, default=settings.max_json_bytes, upload=settings.max_upload_bytes)
    return app


def _describe_bodies(app: FastAPI) -> None:
    """``/openapi.json`` with every request body described: the routes read raw bytes (a
    signature covers them), so their bodies are declared as ``$ref``s to the schemas of
    :mod:`veriml.coordinator.schemas`, added here to the document's components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete_document(build(), (*schemas.MODELS, *llm_schemas.MODELS))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def default_app() -> FastAPI:
    """An app from ``VERIML_*`` variables (for ``uvicorn --factory``)."""
    return create_app(Settings.from_env())
