"""Optional dependencies: which extra installs what, and one clear error when one is missing.

``pip install veriml`` is the SDK, the CLI and offline verification. The rest comes in extras
(docs/models.md, "Installing"):

========== ==================================================================================
extra      what it adds
========== ==================================================================================
node       ONNX and ONNX Runtime, FastAPI and uvicorn: a node, ``veriml run``, re-execution
llm        llama.cpp and jinja2: GGUF language models on a node (install with ``node``)
server     the coordinator, log and witness servers: ``node`` plus SQLAlchemy, Alembic, ...
postgres   the PostgreSQL driver for the servers' databases
demo       ``server`` plus scikit-learn and skl2onnx: ``veriml demo``
dev        everything, with the test and lint tools
========== ==================================================================================

Importing a veriml package that needs an extra (``veriml.node``, ``veriml.coordinator``, ...)
checks the extra first, so a missing one fails with one line naming the fix::

    MissingExtraError: this needs the 'server' extra: pip install 'veriml[server]'

``import veriml`` puts a finder at the front of :data:`sys.meta_path` that calls :func:`check`
for veriml's own modules: for those in :data:`GUARDED` it asks whether the extra's modules are
installed (:func:`importlib.util.find_spec`, nothing is imported), then lets the normal import
go on. Lazy imports inside functions use :func:`missing_extra`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager

from veriml.core.errors import Error

__all__ = [
    "EXTRAS",
    "GUARDED",
    "MissingExtraError",
    "check",
    "extra_for",
    "missing_extra",
    "require",
]

_WEB = ("fastapi", "starlette", "uvicorn")

# The top-level modules each extra provides, as imported (not as distributions are named).
EXTRAS: dict[str, tuple[str, ...]] = {
    "node": ("onnx", "onnxruntime", *_WEB),
    "llm": ("llama_cpp", "jinja2"),
    "server": (
        "onnx",
        "onnxruntime",
        *_WEB,
        "sqlalchemy",
        "alembic",
        "prometheus_client",
        "limits",
    ),
    "postgres": ("psycopg",),
    "demo": ("sklearn", "skl2onnx"),
}

# veriml modules (named under ``veriml.``) that need an extra, checked when first imported. A
# package covers its sub-modules; ``runtime.llm`` loads llama.cpp itself, on first use.
GUARDED: dict[str, str] = {
    "coordinator": "server",
    "node": "node",
    "runtime": "node",
    "models.examples": "node",
    "models.signature": "node",
    "models.validate": "node",
    "tlog._witness_store": "server",
    "tlog.migrations": "server",
    "tlog.sequencer": "server",
    "tlog.server": "server",
    "tlog.storage": "server",
    "tlog.witness": "server",
}


class MissingExtraError(Error, ModuleNotFoundError):
    """A feature needs an optional dependency that is not installed.

    Also a :class:`ModuleNotFoundError`, so code that probes for an optional module with
    ``except ImportError`` keeps working. Exit code 2: the fix is a different install.
    """

    exit_code = 2

    def __init__(self, extra: str, *, module: str | None = None) -> None:
        super().__init__(
            f"this needs the {extra!r} extra: pip install 'veriml[{extra}]'", module=module
        )
        self.extra = extra
        self.name = module


def extra_for(module: str) -> str | None:
    """The extra that installs the top-level module of ``module``, if veriml knows one.

    A module in several extras is named by the first that lists it, except the web stack:
    every server needs it, and ``server`` installs what any of them runs (a node checks its
    own, smaller extra when ``veriml.node`` is imported)."""
    top = module.partition(".")[0]
    if top in _WEB:
        return "server"
    return next((extra for extra, mods in EXTRAS.items() if top in mods), None)


_satisfied: set[str] = set()


def require(extra: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of ``extra`` can be imported.

    Looks the modules up without importing them; a satisfied extra is remembered.
    """
    if extra in _satisfied:
        return
    for module in EXTRAS[extra]:
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(extra, module=module)
    _satisfied.add(extra)


@contextmanager
def missing_extra() -> Iterator[None]:
    """Turn a :class:`ModuleNotFoundError` of a module an extra provides into
    :class:`MissingExtraError`, for imports made lazily inside a function::

        with missing_extra():
            import llama_cpp
    """
    try:
        yield
    except MissingExtraError:
        raise
    except ModuleNotFoundError as exc:
        extra = extra_for(exc.name or "")
        if extra is None:
            raise
        raise MissingExtraError(extra, module=exc.name) from exc


def check(fullname: str) -> None:
    """Raise :class:`MissingExtraError` if the veriml module ``fullname`` (or the package it
    belongs to) is in :data:`GUARDED` and its extra is missing."""
    name = fullname.removeprefix("veriml.")
    for prefix, extra in GUARDED.items():
        if name == prefix or name.startswith(prefix + "."):
            require(extra)
            return
