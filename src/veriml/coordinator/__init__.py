"""The coordinator: hub, node registry, scheduler and log sequencer, as one FastAPI app.

Build it with :func:`veriml.coordinator.app.create_app` from a frozen
:class:`veriml.coordinator.settings.Settings`; nothing is created at import time.

Layout: one sub-package per resource, each with its routes (an ``APIRouter`` named
``router`` in ``routes.py``) beside its service; routes -> services -> repositories::

    db/          tables.py (SQLAlchemy 2 Core), migrations/ (Alembic), and the repositories,
                 the only code that speaks SQL: models.py, nodes.py, inferences.py, disputes.py
    hub/         service.py (publish, resolve, serve blobs), archive.py, routes.py
    nodes/       registry.py (registrations, heartbeats), scheduler.py, dispatch.py,
                 beacon.py (the randomness that draws nodes), routes.py
    inference/   service.py (ONNX requests), faults.py (crash-test hooks), routes.py
    llm/         service.py (completions), checks.py, errors.py, routes.py (OpenAI API)
    disputes/    service.py, admission.py, game.py, parties.py, run.py, routes.py
    ledger/      service.py (the ledger book, stored tensors), routes.py

Cross-cutting modules stay at the top, because every sub-package uses them and none owns
them: ``app.py`` (builds the state and includes every ``routes.router``), ``routes.py`` (the
service routes: info, health, metrics), ``deps.py`` (every FastAPI dependency alias),
``settings.py``, ``auth.py`` (request signatures), ``problems.py`` (problem JSON), ``keys.py``,
``metrics.py``, ``ratelimit.py`` and ``schemas.py`` (request bodies in the OpenAPI document).

What the app's lifespan puts on ``app.state`` (all created at start-up and closed at
shut-down; routes reach them through :mod:`veriml.coordinator.deps`)::

    app.state.settings         Settings                the frozen configuration
    app.state.engine           sqlalchemy.Engine       coordinator database (db/tables.py)
    app.state.blobs            BlobStore               content-addressed blobs (model files)
    app.state.log              veriml.tlog.Log         the coordinator's transparency log
    app.state.coordinator_key  SigningKey              Ed25519 key that signs jobs
    app.state.http             httpx.AsyncClient       outgoing calls to nodes
    app.state.models           ModelRepository         resolve(ref) -> ModelRecord, get(digest)
    app.state.nodes            NodeRepository          live_nodes(model) -> list[NodeRow],
                                                       mark_failed(node_id),
                                                       adjust_active(node_id, delta)
    app.state.metrics          Metrics                 Prometheus registry and collectors
"""

__all__: list[str] = []
