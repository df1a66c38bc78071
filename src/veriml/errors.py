"""The public error hierarchy; see :mod:`veriml.core.errors` for the tree."""

from veriml.core.errors import *  # noqa: F403
from veriml.core.errors import __all__ as __all__
