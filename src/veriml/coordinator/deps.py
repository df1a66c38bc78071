"""FastAPI dependency aliases: every object a route takes from the app's state, in one place.

Routes declare ``hub: HubDep`` and get the object the app's lifespan built; nothing is a
module-level global, so several apps can live in one process (as the tests run them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from veriml.coordinator.db.nodes import ModelRepository, NodeRepository
from veriml.coordinator.hub.service import HubService
from veriml.coordinator.ledger.service import LedgerBook
from veriml.coordinator.nodes.registry import RegistryService
from veriml.coordinator.settings import Settings
from veriml.tlog.log import Log

__all__ = [
    "HubDep",
    "LedgerDep",
    "LogDep",
    "ModelsDep",
    "NodesDep",
    "Page",
    "PageDep",
    "RegistryDep",
    "SettingsDep",
]


MAX_OFFSET = 2**63 - 1
"""The largest ``offset`` of a listing: the databases' OFFSET is a 64-bit integer."""


@dataclass(frozen=True)
class Page:
    """One page of a listing (``GET /v1/models``, ``GET /v1/nodes``): ``limit`` items after
    the first ``offset``. A route asks its repository for ``limit + 1`` to learn whether a
    next page exists."""

    limit: int
    offset: int

    def next_offset(self, found: int) -> int | None:
        """The ``next_offset`` member of the answer: None on the last page."""
        return self.offset + self.limit if found > self.limit else None


def _page(
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page:
    return Page(limit=limit, offset=offset)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _models(request: Request) -> ModelRepository:
    models: ModelRepository = request.app.state.models
    return models


def _nodes(request: Request) -> NodeRepository:
    nodes: NodeRepository = request.app.state.nodes
    return nodes


def _log(request: Request) -> Log:
    log: Log = request.app.state.log
    return log


def _hub(request: Request) -> HubService:
    hub: HubService = request.app.state.hub
    return hub


def _registry(request: Request) -> RegistryService:
    registry: RegistryService = request.app.state.registry
    return registry


def _ledger(request: Request) -> LedgerBook:
    book: LedgerBook = request.app.state.ledger
    return book


SettingsDep = Annotated[Settings, Depends(_settings)]
ModelsDep = Annotated[ModelRepository, Depends(_models)]
NodesDep = Annotated[NodeRepository, Depends(_nodes)]
LogDep = Annotated[Log, Depends(_log)]
HubDep = Annotated[HubService, Depends(_hub)]
RegistryDep = Annotated[RegistryService, Depends(_registry)]
LedgerDep = Annotated[LedgerBook, Depends(_ledger)]
PageDep = Annotated[Page, Depends(_page)]
