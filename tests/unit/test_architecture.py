"""The package structure is a promise: dependencies flow one way (docs/architecture.md).

Every module under ``src/veriml`` is read with :mod:`ast` (nothing is imported or run) and each
import, at module level or inside a function, ``import x`` or ``from x import y``, absolute or
relative, becomes an edge between top-level sub-packages. A string constant naming a veriml
module counts too: the lazy export tables load modules by name through ``importlib``. The
edges must be a subset of :data:`ALLOWED`, which is acyclic, and the three programs that talk
over the network (``coordinator``, ``node``, ``client``) never import one another: what they
share is a format (``protocol``), a check (``verify``) or a value type (``core``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

import veriml

SRC = Path(veriml.__file__).parent
TOP = "veriml"  # the package's own __init__.py: the public API

_LIBRARIES = frozenset({"core", "models", "runtime", "tlog", "protocol", "ledger", "verify"})

ALLOWED: dict[str, frozenset[str]] = {
    # Digests, canonical JSON, tensors, keys, DSSE/in-toto, the receipt and completion
    # predicates, the error tree: the bottom, importing nothing of veriml.
    "core": frozenset(),
    # Model folders (OMS digests and signatures, validation, blob store, hub pulls): values
    # and checks from core only.
    "models": frozenset({"core"}),
    # Running a model needs the validated package (models). It also commits to a trace with
    # RFC 9162 Merkle math, and there is one Merkle implementation: tlog.merkle (pure). This
    # edge is beside the brief's picture (core <- models <- runtime; core <- tlog), not
    # against its direction: tlog imports core only. The LLM engine checks that the request
    # it runs is canonical, and the canonical form is API policy (protocol.openai_requests).
    "runtime": frozenset({"core", "models", "tlog", "protocol"}),
    # The transparency log: Merkle math, notes, checkpoints, tiles, storage, witness.
    "tlog": frozenset({"core"}),
    # Wire formats the coordinator, the nodes and the SDK share (signed messages, policies
    # and verdicts, server-sent events, the byzantine harness's mode names).
    "protocol": frozenset({"core"}),
    # Log entry types and the state fold: entries carry protocol messages and verdicts and
    # are bounded by the log's entry size.
    "ledger": frozenset({"core", "protocol", "tlog"}),
    # Pure verification: receipts (re-executed through runtime), answers and their log
    # evidence (ledger entries rebuilt byte for byte, tlog proofs), policies and disputes.
    "verify": frozenset({"core", "models", "runtime", "tlog", "protocol", "ledger"}),
    # The three services sit on the libraries and never on one another. The coordinator also
    # reads veriml.__version__ (its OpenAPI document and /v1/info); the package's __init__
    # loads nothing eagerly, so that pulls in no other service.
    "coordinator": _LIBRARIES | {TOP},
    "node": _LIBRARIES,
    "client": _LIBRARIES,
    # The CLI drives everything: the services it serves and the SDK it calls.
    "cli": _LIBRARIES | {"coordinator", "node", "client", "errors", "_extras", TOP},
    # The public API re-exports the libraries and the SDK (lazily), never a service or the
    # CLI, so the table stays acyclic with the coordinator's __version__ read.
    TOP: _LIBRARIES | {"client", "errors", "_extras"},
    # veriml.errors is the public spelling of core.errors.
    "errors": frozenset({"core"}),
    # Which extra installs what, and the finder that names a missing one (imported by the
    # package's __init__ and the CLI's entry point).
    "_extras": frozenset({"core"}),
    # python -m veriml runs the CLI.
    "__main__": frozenset({"cli"}),
}

SERVICES = ("coordinator", "node", "client")


def _node_of(module: str) -> str | None:
    """The top-level package (or top-level module) a dotted veriml module name belongs to."""
    parts = module.split(".")
    if parts[0] != "veriml":
        return None
    if len(parts) == 1:
        return TOP
    return parts[1] if parts[1] in ALLOWED else None


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(dotted: str) -> bool:
    parts = dotted.split(".")
    if parts[0] != "veriml":
        return False
    base = SRC.parent.joinpath(*parts)
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _imported(path: Path) -> Iterator[tuple[str, int]]:
    """Every veriml module ``path`` imports (or names for importlib), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:  # from veriml import client: the sub-package itself
                if _is_module(f"{module}.{alias.name}"):
                    yield f"{module}.{alias.name}", node.lineno
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
            and "." in node.value  # "veriml" alone is the answer member of an OpenAI body
            and _is_module(node.value)
        ):
            yield node.value, node.lineno


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def _edges() -> dict[tuple[str, str], list[str]]:
    """``(importer, imported)`` package pairs, each with where it happens."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in _modules():
        source = _node_of(_module_name(path))
        assert source is not None, f"{path} is in no package of the table"
        for module, line in _imported(path):
            target = _node_of(module)
            if target is not None and target != source:
                where = f"{path.relative_to(SRC.parent)}:{line} imports {module}"
                edges.setdefault((source, target), []).append(where)
    return edges


def test_every_package_and_top_level_module_has_a_row() -> None:
    found = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
    found |= {p.stem for p in SRC.glob("*.py") if p.name != "__init__.py"}
    assert found | {TOP} == set(ALLOWED)


def test_imports_follow_the_allowed_package_edges() -> None:
    wrong = {
        f"{source} -> {target}": where[:3]
        for (source, target), where in sorted(_edges().items())
        if target not in ALLOWED[source]
    }
    assert not wrong, wrong


def test_the_allowed_edges_are_acyclic_and_name_known_packages() -> None:
    for source, targets in ALLOWED.items():
        assert source not in targets
        assert targets <= set(ALLOWED), source
    try:
        order = list(TopologicalSorter(ALLOWED).static_order())
    except CycleError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"the package table has a cycle: {exc.args[1]}")
    assert order.index("core") < order.index("verify") < order.index("client") < order.index("cli")


def test_the_coordinator_the_nodes_and_the_sdk_never_import_one_another() -> None:
    for source in SERVICES:
        assert not ALLOWED[source] & set(SERVICES), source
    crossing = {
        f"{source} -> {target}": where
        for (source, target), where in _edges().items()
        if source in SERVICES and target in SERVICES
    }
    assert not crossing, crossing


def test_the_checker_reads_relative_and_function_level_imports() -> None:
    # The walk must see what a lazy import hides: a function-level import and an importlib
    # table both count (veriml.client loads its HTTP client, and veriml its SDK, that way).
    edges = _edges()
    assert ("client", "verify") in edges
    assert (TOP, "client") in edges
