"""Fixtures of the runtime tests: each tiny model of ``_runtime_models`` in turn."""

from __future__ import annotations

import pytest
from _runtime_models import MODELS, Model


@pytest.fixture(params=sorted(MODELS))
def any_model(request: pytest.FixtureRequest) -> Model:
    """Each of the test models in turn."""
    return MODELS[request.param]()
