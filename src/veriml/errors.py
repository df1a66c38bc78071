"""The public error hierarchy and the published check names; see :mod:`veriml.core.errors`.

Deprecated names (one release): the classes below were renamed so that every exception ends in
``Error`` (docs/verification.md, "Errors"); the old spellings still import from here, with a
:class:`DeprecationWarning`.
"""

import warnings
from typing import Any

from veriml.core.errors import *  # noqa: F403
from veriml.core.errors import __all__ as __all__

_DEPRECATED = {
    "Conflict": "ConflictError",
    "DigestMismatch": "DigestMismatchError",
    "InvalidInput": "InvalidInputError",
    "InvalidModel": "InvalidModelError",
    "InvalidTensor": "InvalidTensorError",
    "LimitExceeded": "LimitExceededError",
    "LogInconsistency": "LogInconsistencyError",
    "NodeUnavailable": "NodeUnavailableError",
    "NotFound": "NotFoundError",
    "PaymentRequired": "PaymentRequiredError",
    "ReexecutionMismatch": "ReexecutionMismatchError",
}


def __getattr__(name: str) -> Any:
    """The renamed classes under their old names, with a :class:`DeprecationWarning`."""
    new = _DEPRECATED.get(name)
    if new is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    warnings.warn(
        f"veriml.errors.{name} is deprecated; use veriml.errors.{new}",
        DeprecationWarning,
        stacklevel=2,
    )
    return globals()[new]
