"""FastAPI dependency aliases: every object a route takes from the app's state, in one place.

Routes declare ``hub: HubDep`` and get the member of the app's
:class:`~veriml.coordinator.state.CoordinatorState` (``app.state.coordinator``) the lifespan
built; nothing is a module-level global, so several apps can live in one process (as the
tests run them). Code that is not a route parameter reads the same object with
:func:`state_of`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query, Request

from veriml.coordinator.db.nodes import ModelRepository, NodeRepository
from veriml.coordinator.disputes.service import DisputeService
from veriml.coordinator.hub.service import HubService
from veriml.coordinator.inference.service import InferenceService
from veriml.coordinator.ledger.service import LedgerBook, TensorStore
from veriml.coordinator.llm.service import CompletionService
from veriml.coordinator.nodes.registry import RegistryService
from veriml.coordinator.settings import Settings
from veriml.coordinator.state import CoordinatorState, started
from veriml.core.errors import StorageError
from veriml.tlog.log import Log

__all__ = [
    "CompletionsDep",
    "DisputesDep",
    "HubDep",
    "InferenceDep",
    "LedgerDep",
    "LogDep",
    "ModelsDep",
    "NodesDep",
    "Page",
    "PageDep",
    "RegistryDep",
    "SettingsDep",
    "StateDep",
    "TensorsDep",
    "state_of",
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


def state_of(request: Request) -> CoordinatorState:
    """The app's :class:`CoordinatorState` (``app.state.coordinator``); a
    :class:`StorageError` (503) while the coordinator is starting."""
    state = started(request)
    if state is None:
        raise StorageError("the coordinator is starting")
    return state


def _settings(request: Request) -> Settings:
    return state_of(request).settings


def _models(request: Request) -> ModelRepository:
    return state_of(request).models


def _nodes(request: Request) -> NodeRepository:
    return state_of(request).nodes


def _log(request: Request) -> Log:
    return state_of(request).log


def _hub(request: Request) -> HubService:
    return state_of(request).hub


def _registry(request: Request) -> RegistryService:
    return state_of(request).registry


def _ledger(request: Request) -> LedgerBook:
    return state_of(request).ledger


def _tensors(request: Request) -> TensorStore:
    return state_of(request).tensors


def _inference(request: Request) -> InferenceService:
    return state_of(request).inference


def _completions(request: Request) -> CompletionService:
    return state_of(request).completions


def _disputes(request: Request) -> DisputeService:
    return state_of(request).disputes


StateDep = Annotated[CoordinatorState, Depends(state_of)]
SettingsDep = Annotated[Settings, Depends(_settings)]
ModelsDep = Annotated[ModelRepository, Depends(_models)]
NodesDep = Annotated[NodeRepository, Depends(_nodes)]
LogDep = Annotated[Log, Depends(_log)]
HubDep = Annotated[HubService, Depends(_hub)]
RegistryDep = Annotated[RegistryService, Depends(_registry)]
LedgerDep = Annotated[LedgerBook, Depends(_ledger)]
TensorsDep = Annotated[TensorStore, Depends(_tensors)]
InferenceDep = Annotated[InferenceService, Depends(_inference)]
CompletionsDep = Annotated[CompletionService, Depends(_completions)]
DisputesDep = Annotated[DisputeService, Depends(_disputes)]
PageDep = Annotated[Page, Depends(_page)]
