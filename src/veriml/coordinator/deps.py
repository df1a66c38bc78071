"""FastAPI dependency aliases: what routes take from ``app.state`` (see the package docstring).

Routes declare ``hub: HubDep`` and get the object the app's lifespan built; nothing is a
module-level global, so several apps can live in one process (as the tests run them).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from veriml.coordinator.db.nodes import ModelRepository, NodeRepository
from veriml.coordinator.settings import Settings
from veriml.tlog.log import Log

__all__ = ["LogDep", "ModelsDep", "NodesDep", "SettingsDep"]


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


SettingsDep = Annotated[Settings, Depends(_settings)]
ModelsDep = Annotated[ModelRepository, Depends(_models)]
NodesDep = Annotated[NodeRepository, Depends(_nodes)]
LogDep = Annotated[Log, Depends(_log)]
