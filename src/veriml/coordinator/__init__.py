"""The coordinator: hub, node registry, scheduler and log sequencer, as one FastAPI app.

Build it with :func:`veriml.coordinator.app.create_app` from a frozen
:class:`veriml.coordinator.settings.Settings`; nothing is created at import time. Layers:
routes (``app.py``, ``hub.py``, ``registry.py``) -> services -> repositories
(``repositories.py``) -> tables (``db.py``, SQLAlchemy 2 Core, migrated by Alembic at start-up).

What the app's lifespan puts on ``app.state`` (the contract other coordinator modules, such as
the inference service, build on; all are created at start-up and closed at shut-down)::

    app.state.settings         Settings                the frozen configuration
    app.state.engine           sqlalchemy.Engine       coordinator database (tables in db.py)
    app.state.blobs            BlobStore               content-addressed blobs (model files)
    app.state.log              veriml.tlog.Log         the coordinator's transparency log
    app.state.coordinator_key  SigningKey              Ed25519 key that signs jobs
    app.state.http             httpx.AsyncClient       outgoing calls to nodes
    app.state.models           ModelRepository         resolve(ref) -> ModelRecord, get(digest)
    app.state.nodes            NodeRepository          live_nodes(model) -> list[NodeRow],
                                                       mark_failed(node_id),
                                                       adjust_active(node_id, delta)
    app.state.metrics          Metrics                 Prometheus registry and collectors

Tables (``veriml.coordinator.db.tables``): ``models``, ``nodes``, ``descriptor_nonces``,
``inferences`` (id PK, model, policy, request_digest, log_index, response JSON, created_at,
and entry, leaf_hash, claimed_at for a row pending until its log entry is proved),
all on ``db.metadata``. The inference service reads and writes ``inferences`` with its own
repository functions; its router, ``veriml.coordinator.inference.routes.router``, is included
by ``create_app`` when that module exists.
"""

__all__: list[str] = []
