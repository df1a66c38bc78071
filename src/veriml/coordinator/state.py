"""The coordinator app's state: one frozen object, built by the app's lifespan.

:func:`veriml.coordinator.app.create_app` opens :class:`Resources` (database, blob stores,
log, keys, repositories, ledger book, beacon, HTTP client) at start-up, builds the services
over them, and stores the resulting :class:`CoordinatorState` once, as
``app.state.coordinator``. Routes reach its members through the dependency aliases of
:mod:`veriml.coordinator.deps`; nothing else is put on ``app.state``.

The object is frozen: a test that runs a service of its own (fake nodes, say) swaps it in
with :func:`dataclasses.replace` and stores the new state.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx
    import onnx
    import sqlalchemy as sa
    from starlette.requests import Request

    from veriml.coordinator.db.nodes import ModelRepository, NodeRepository, NonceRepository
    from veriml.coordinator.disputes.service import DisputeService
    from veriml.coordinator.hub.service import HubService
    from veriml.coordinator.inference.service import InferenceService
    from veriml.coordinator.ledger.service import LedgerBook, TensorStore
    from veriml.coordinator.llm.service import CompletionService
    from veriml.coordinator.metrics import Metrics
    from veriml.coordinator.nodes.beacon import Beacon
    from veriml.coordinator.nodes.registry import RegistryService
    from veriml.coordinator.ratelimit import RateLimits
    from veriml.coordinator.settings import Settings
    from veriml.core.digest import Digest
    from veriml.core.keys import SigningKey
    from veriml.models.blobstore import BlobStore
    from veriml.tlog.log import Log

__all__ = ["CoordinatorState", "Resources", "started"]


@dataclass(frozen=True)
class Resources:
    """What the lifespan opens (and closes at shut-down), before any service is built."""

    settings: Settings
    """The frozen configuration."""
    metrics: Metrics
    """Prometheus registry and collectors (created with the app, for the middleware)."""
    rate_limits: RateLimits
    """The per-client limits (created with the app, for the middleware)."""
    engine: sa.Engine
    """The coordinator database (db/tables.py)."""
    blobs: BlobStore
    """Content-addressed blobs (model files)."""
    log: Log
    """The coordinator's transparency log."""
    coordinator_key: SigningKey
    """The Ed25519 key that signs jobs."""
    capability_key: bytes
    """The HMAC key of read capabilities (derived from the coordinator key)."""
    models: ModelRepository
    nodes: NodeRepository
    nonces: NonceRepository
    ledger: LedgerBook
    hub: HubService
    registry: RegistryService
    tensors: TensorStore
    """Stored request inputs, apart from the hub's blobs (docs/privacy.md)."""
    beacon: Beacon
    """The randomness that draws nodes (opened after the ledger book)."""
    http: httpx.AsyncClient
    """Outgoing calls to nodes."""

    def load_model(self, digest: Digest) -> onnx.ModelProto:
        """The ONNX graph of a published model (blocking), for tolerance bounds and disputes."""
        return self.hub.onnx_package(digest).load_proto()


@dataclass(frozen=True)
class CoordinatorState(Resources):
    """:class:`Resources` and the services built over them: ``app.state.coordinator``."""

    disputes: DisputeService
    inference: InferenceService
    completions: CompletionService

    @classmethod
    def over(
        cls,
        resources: Resources,
        *,
        disputes: DisputeService,
        inference: InferenceService,
        completions: CompletionService,
    ) -> CoordinatorState:
        """The state of ``resources`` with its services."""
        opened = {field.name: getattr(resources, field.name) for field in fields(Resources)}
        return cls(**opened, disputes=disputes, inference=inference, completions=completions)


def started(request: Request) -> CoordinatorState | None:
    """The state of the app serving ``request``; None before its lifespan built it."""
    state: CoordinatorState | None = getattr(request.app.state, "coordinator", None)
    return state
