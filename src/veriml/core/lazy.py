"""Names a package exports but loads on first use (PEP 562 module ``__getattr__``).

A package lists each public name and the module that defines it; ``from veriml.models import
model_digest`` then imports ``veriml.models.digest`` alone, not ONNX or a web stack, which is
how the base install's commands stay small and fast (docs/architecture.md, "Packaging")::

    __getattr__, __dir__ = lazy_exports(__name__, {"model_digest": ".digest", ...})
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str], eager: tuple[str, ...] = ()
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: each name in ``exports`` loads its
    module (absolute, or relative to ``package`` when it starts with a dot) on first use and is
    then kept in the package's namespace. ``eager`` lists names the package defines itself,
    for ``dir()``."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*exports, *eager})

    return __getattr__, __dir__
