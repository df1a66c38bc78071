"""The coordinator: hub, node registry, scheduler and log sequencer, as one FastAPI app.

Build it with :func:`veriml.coordinator.app.create_app` from a frozen
:class:`veriml.coordinator.settings.Settings`; nothing is created at import time.

Layout: one sub-package per resource, each with its routes (an ``APIRouter`` named
``router`` in ``routes.py``) beside its service; routes -> services -> repositories::

    db/          tables.py (SQLAlchemy 2 Core), migrations/ (Alembic), and the repositories,
                 the only code that speaks SQL: models.py, nodes.py, inferences.py, disputes.py,
                 beacon.py
    hub/         service.py (publish, resolve, serve blobs), archive.py, routes.py
    nodes/       registry.py (registrations, heartbeats), scheduler.py, dispatch.py,
                 beacon.py (the randomness that draws nodes), routes.py
    inference/   service.py (ONNX requests), requests.py (the draw, ledger context and
                 requester every request gets, ONNX or LLM), wire.py (inputs decoded, node
                 answers checked, the answer built), faults.py (crash-test hooks), routes.py
    llm/         service.py (completions), transport.py (jobs posted to nodes, tokens
                 streamed back), checks.py, errors.py, routes.py (OpenAI API)
    disputes/    ONNX and LLM disputes: service.py, admission.py, game.py, parties.py,
                 run.py, llm.py (prefill checks and the LLM disputes), routes.py
    ledger/      service.py (the ledger book, stored tensors), routes.py

Cross-cutting modules stay at the top, because every sub-package uses them and none owns
them: ``app.py`` (builds the state and includes every ``routes.router``), ``routes.py`` (the
service routes: info, health, metrics), ``state.py`` (the app's state), ``deps.py`` (every
FastAPI dependency alias), ``settings.py``, ``auth.py`` (request signatures), ``problems.py``
(problem JSON), ``keys.py``, ``metrics.py``, ``ratelimit.py`` and ``schemas.py`` (request
bodies in the OpenAPI document).

The app's state is one frozen :class:`~veriml.coordinator.state.CoordinatorState`, built by
the lifespan at start-up (its resources closed at shut-down) and stored once as
``app.state.coordinator``; routes reach its members through :mod:`veriml.coordinator.deps`::

    settings, metrics, rate_limits       configuration, Prometheus registry, per-client limits
    engine, blobs, log                   database (db/tables.py), model blobs, transparency log
    coordinator_key, capability_key      Ed25519 job-signing key, read-capability HMAC key
    models, nodes, nonces                the repositories of db/
    ledger, hub, registry, tensors       ledger book, hub, node registry, stored inputs
    beacon, http                         randomness beacon, HTTP client to nodes
    disputes, inference, completions     the services over all of the above
"""

__all__: list[str] = []
