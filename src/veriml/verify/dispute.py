"""Disputes: the trace layout, reveal checks, the bisection game and the one-operator referee.

``docs/verification.md`` ("Disputes") is the specification; step numbers in comments follow
its "Bisection" section. Everything here is pure except :func:`referee`, which runs one ONNX
node through :func:`veriml.runtime.reexecute_node` (imported on first use, so the service
process that only drives bisections does not load ONNX Runtime for it).

A dispute is between a **defendant** (whose receipt commits to a trace root) and a
**challenger** (who commits to its own). :class:`Bisection` asks both for the trace entry at
one index per round, each reveal checked by the caller with :func:`check_reveal`, until it
reaches the first operator whose inputs both parties agree on and whose output differs; then
:func:`referee` re-executes that operator alone on the agreed inputs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np
import numpy.typing as npt
import onnx
from onnx import numpy_helper

from veriml.core.digest import Digest
from veriml.core.errors import Check, FormatError, InvalidModelError, VerificationError
from veriml.core.receipt import TraceCommitment
from veriml.core.tensors import tensor_digest
from veriml.tlog.merkle import leaf_hash, verify_inclusion
from veriml.verify.policy import Compare, Winner
from veriml.verify.tensors import check_tensor_digests
from veriml.verify.tolerance import referee_tolerance, within_tolerance

if TYPE_CHECKING:
    from veriml.runtime import TraceEntry

__all__ = [
    "Bisection",
    "LayoutEntry",
    "Reason",
    "RefereeDecision",
    "TraceLayout",
    "check_reveal",
    "referee",
]

Array = npt.NDArray[Any]
Reason = Literal["referee", "timeout", "inconsistent", "invalid-proof", "no-difference"]
REASONS: Final[tuple[Reason, ...]] = (
    "referee",
    "timeout",
    "inconsistent",
    "invalid-proof",
    "no-difference",
)


def _subgraph_reads(node: onnx.NodeProto) -> tuple[str, ...]:
    """Outer-scope names that the subgraph attributes (If/Loop/Scan) of ``node`` read."""

    def free(graph: onnx.GraphProto) -> set[str]:
        defined = {v.name for v in graph.input} | {i.name for i in graph.initializer}
        used: set[str] = set()
        for inner in graph.node:
            used.update(n for n in inner.input if n)
            used.update(_subgraph_reads(inner))
            defined.update(n for n in inner.output if n)
        used.update(o.name for o in graph.output)
        return used - defined

    names: set[str] = set()
    for attribute in node.attribute:
        graphs: Iterable[onnx.GraphProto] = (
            [attribute.g] if attribute.HasField("g") else list(attribute.graphs)
        )
        for graph in graphs:
            names |= free(graph)
    return tuple(sorted(names - set(node.input)))


@dataclass(frozen=True, slots=True)
class LayoutEntry:
    """Trace index ``index`` is output ``output`` of graph node ``node`` (an ``op_type``).

    ``inputs`` are the node's inputs as the trace records them (empty strings for omitted
    optional inputs); ``outer`` the outer-scope names its subgraphs read, if any.
    """

    index: int
    node: int
    op_type: str
    output: str
    inputs: tuple[str, ...]
    outer: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[str, ...]:
        """Every tensor name the operator reads, once each, in order."""
        return tuple(dict.fromkeys(n for n in (*self.inputs, *self.outer) if n))


@dataclass(frozen=True, slots=True)
class TraceLayout:
    """What every trace of one model must look like: one entry per node output, graph order.

    >>> layout = TraceLayout.from_model(build_mlp())  # doctest: +SKIP
    >>> layout.entries[layout.outputs["probs"]].op_type  # doctest: +SKIP
    'Softmax'
    """

    entries: tuple[LayoutEntry, ...]
    producer: Mapping[str, int]
    """Output name -> the trace index that records it."""
    graph_inputs: frozenset[str]
    initializers: frozenset[str]
    outputs: Mapping[str, int]
    """Graph output name -> trace index (outputs that no node produces are not listed)."""

    @property
    def size(self) -> int:
        return len(self.entries)

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> TraceLayout:
        """The layout of ``model``'s traces (as :func:`veriml.runtime.build_trace` records)."""
        graph = model.graph
        initializers = frozenset(i.name for i in graph.initializer)
        graph_inputs = frozenset(v.name for v in graph.input) - initializers
        entries: list[LayoutEntry] = []
        producer: dict[str, int] = {}
        for node_index, node in enumerate(graph.node):
            outer = _subgraph_reads(node)
            for output in node.output:
                if not output:
                    continue
                if output in producer or output in graph_inputs or output in initializers:
                    raise InvalidModelError("a tensor name is defined twice", name=output)
                producer[output] = len(entries)
                entries.append(
                    LayoutEntry(
                        len(entries), node_index, node.op_type, output, tuple(node.input), outer
                    )
                )
        outputs = {o.name: producer[o.name] for o in graph.output if o.name in producer}
        return cls(tuple(entries), producer, graph_inputs, initializers, outputs)

    def source(self, name: str, before: int) -> int | None:
        """The trace index producing ``name`` for an entry at ``before``; None when it is a
        graph input or an initializer (agreed by construction)."""
        if name in self.producer and self.producer[name] < before:
            return self.producer[name]
        if name in self.graph_inputs or name in self.initializers:
            return None
        raise InvalidModelError("an operator reads a tensor nothing earlier defines", name=name)


def check_reveal(
    commitment: TraceCommitment,
    layout: TraceLayout,
    index: int,
    entry: TraceEntry,
    proof: Sequence[bytes],
) -> None:
    """Raise ``VerificationError(check=Check.REVEAL)`` unless ``entry`` is leaf ``index`` of the
    committed trace (RFC 9162 inclusion, https://www.rfc-editor.org/rfc/rfc9162#section-2.1.3)
    and describes the operator the model's layout has at that index."""
    # 1. The commitment is to a trace of this model: same number of leaves.
    if commitment.size != layout.size:
        raise VerificationError(
            "the committed trace does not have the model's layout size",
            check=Check.REVEAL,
            committed=commitment.size,
            layout=layout.size,
        )
    if not 0 <= index < layout.size:
        raise VerificationError(
            "reveal index is outside the trace", check=Check.REVEAL, index=index, size=layout.size
        )
    # 2. The entry names what the layout has at that index.
    expected = layout.entries[index]
    claimed = (entry.node, entry.op_type, entry.output, tuple(entry.inputs))
    if claimed != (expected.node, expected.op_type, expected.output, expected.inputs):
        raise VerificationError(
            "revealed entry does not match the model's layout",
            check=Check.REVEAL,
            index=index,
            expected=f"{expected.node}:{expected.op_type}:{expected.output}",
            got=f"{entry.node}:{entry.op_type}:{entry.output}",
        )
    # 3. Its digest is the leaf at that index under the committed root.
    try:
        verify_inclusion(
            leaf_hash(entry.digest.raw), index, commitment.size, list(proof), commitment.root.raw
        )
    except VerificationError as exc:
        raise VerificationError(
            "revealed entry is not in the committed trace",
            check=Check.REVEAL,
            index=index,
            reason=exc.diagnostics(),
        ) from exc


class Bisection:
    """The bisection state machine of one dispute (``docs/verification.md``, "Bisection").

    Ask :meth:`next_query` for the trace index both parties must reveal, check the reveals,
    and :meth:`record` their digests; when it returns None, either :attr:`found` is the trace
    index for the referee (whose inputs are :meth:`agreed_inputs`) or :attr:`early` is the
    outcome decided without one.
    """

    def __init__(
        self,
        layout: TraceLayout,
        defendant_outputs: Mapping[str, Digest],
        challenger_outputs: Mapping[str, Digest],
        input_digests: Mapping[str, Digest] | None = None,
    ) -> None:
        if set(defendant_outputs) != set(challenger_outputs):
            raise FormatError(
                "the challenge must claim the same outputs as the receipt",
                receipt=",".join(sorted(defendant_outputs)),
                challenge=",".join(sorted(challenger_outputs)),
            )
        self.layout = layout
        self.defendant_outputs = dict(defendant_outputs)
        self.challenger_outputs = dict(challenger_outputs)
        self.input_digests = dict(input_digests or {})
        self.revealed: dict[int, tuple[Digest, Digest]] = {}
        self.found: int | None = None
        self.early: tuple[Winner, Reason] | None = None
        self.rounds = 0
        self.lo = 0
        self.hi = 0
        self._query: int | None = None
        self._first_output = -1
        differing = sorted(n for n in defendant_outputs if self._claims_differ(n))
        if not differing:
            # 1. Claims agree everywhere: there is nothing to dispute.
            self.early = ("defendant", "no-difference")
            return
        traced = [layout.outputs[n] for n in differing if n in layout.outputs]
        for name in differing:
            if name not in layout.outputs:
                self._untraced_output(name)
                if self.early is not None:
                    return
        # 1. The differing output with the smallest index is asked first: each party must
        # reveal its claim there; if both do, they differ there and the search starts below.
        self._first_output = min(traced)
        self._query = self._first_output

    def _claims_differ(self, name: str) -> bool:
        return self.defendant_outputs[name] != self.challenger_outputs[name]

    def _untraced_output(self, name: str) -> None:
        """A graph output no node produces is a graph input: the receipt's digest decides."""
        agreed = self.input_digests.get(name)
        if agreed is None:
            raise FormatError("a disputed output is neither traced nor a known input", name=name)
        self._settle_consistency(
            self.defendant_outputs[name] == agreed, self.challenger_outputs[name] == agreed
        )

    def _settle_consistency(self, defendant_ok: bool, challenger_ok: bool) -> None:
        if defendant_ok and challenger_ok:
            return
        winner: Winner = (
            "defendant" if defendant_ok else "challenger" if challenger_ok else "neither"
        )
        self.early = (winner, "inconsistent")
        self._query = None

    def forfeit(self, loser: Literal["defendant", "challenger"], reason: Reason) -> None:
        """End the game against ``loser`` (a missed deadline, an unprovable or malformed
        reveal): reasons ``timeout``, ``invalid-proof`` or ``inconsistent``."""
        if reason not in ("timeout", "invalid-proof", "inconsistent"):
            raise FormatError("a forfeit is a timeout, invalid proof or inconsistency", got=reason)
        if self.decided:
            raise FormatError("the bisection is already decided")
        self.early = ("challenger" if loser == "defendant" else "defendant", reason)
        self._query = None

    def next_query(self) -> int | None:
        """The trace index both parties must reveal next, or None once decided."""
        return self._query

    @property
    def decided(self) -> bool:
        return self.found is not None or self.early is not None

    def record(self, index: int, defendant: Digest, challenger: Digest) -> None:
        """Record both parties' (proof-checked) digests at the index :meth:`next_query` asked."""
        if self._query is None or index != self._query:
            raise FormatError("this index was not asked", index=index, asked=self._query)
        self.rounds += 1
        self.revealed[index] = (defendant, challenger)
        if len(self.revealed) == 1 and index == self._first_output:
            # 1. Each party's trace must repeat its claimed output.
            name = self.layout.entries[index].output
            self._settle_consistency(
                defendant == self.defendant_outputs[name],
                challenger == self.challenger_outputs[name],
            )
            if self.early is not None:
                return
            self.lo, self.hi = 0, index
        elif self.lo < self.hi:
            # 2. Halve [lo, hi]: the parties differ at hi.
            if defendant == challenger:
                self.lo = index + 1
            else:
                self.hi = index
        self._query = self._advance()

    def _differs(self, index: int) -> bool:
        defendant, challenger = self.revealed[index]
        return defendant != challenger

    def _advance(self) -> int | None:
        while True:
            if self.lo < self.hi:
                mid = (self.lo + self.hi) // 2
                if mid not in self.revealed:
                    return mid
                if self._differs(mid):
                    self.hi = mid
                else:
                    self.lo = mid + 1
                continue
            # 3. lo == hi: the parties differ here; every input produced by an earlier entry
            # must be asked before blaming this operator.
            entry = self.layout.entries[self.hi]
            sources = [self.layout.source(n, entry.index) for n in entry.reads]
            produced = sorted({s for s in sources if s is not None})
            missing = [s for s in produced if s not in self.revealed]
            if missing:
                return missing[0]
            differing = [s for s in produced if self._differs(s)]
            if not differing:
                # 4. The inputs agree and the output differs: the referee decides.
                self.found = self.hi
                return None
            self.hi = differing[0]
            agreeing = [i for i in self.revealed if i < self.hi and not self._differs(i)]
            self.lo = max(agreeing) + 1 if agreeing else 0

    def agreed_inputs(self) -> dict[str, Digest]:
        """The found operator's non-initializer inputs and the digest both parties agree on."""
        if self.found is None:
            raise FormatError("the bisection has not found an operator")
        entry = self.layout.entries[self.found]
        agreed: dict[str, Digest] = {}
        for name in entry.reads:
            source = self.layout.source(name, entry.index)
            if source is not None:
                agreed[name] = self.revealed[source][0]
            elif name in self.layout.graph_inputs:
                if name not in self.input_digests:
                    raise FormatError("the receipt's input digests lack an input", input=name)
                agreed[name] = self.input_digests[name]
        return agreed


@dataclass(frozen=True, slots=True)
class RefereeDecision:
    """Who matched the referee at the disputed operator (``node_index`` is the graph node)."""

    winner: Winner
    node_index: int
    op_type: str
    referee: dict[str, Digest]


def _initializer_values(model: onnx.ModelProto, names: Iterable[str]) -> dict[str, Array]:
    wanted = set(names)
    return {
        init.name: numpy_helper.to_array(init)
        for init in model.graph.initializer
        if init.name in wanted
    }


def referee(
    model: onnx.ModelProto,
    layout: TraceLayout,
    index: int,
    inputs: Mapping[str, Array],
    defendant: Digest,
    challenger: Digest,
    *,
    agreed: Mapping[str, Digest],
    mode: Compare = "bitwise",
    defendant_value: Array | None = None,
    challenger_value: Array | None = None,
) -> RefereeDecision:
    """Re-execute the operator at trace ``index`` on the agreed ``inputs`` and say who matched.

    ``agreed`` (from :meth:`Bisection.agreed_inputs`) holds the digest of every non-initializer
    input; each tensor in ``inputs`` is checked against it first (``VerificationError``,
    ``check="referee-input"``). The operator runs alone under the pinned :class:`Profile` in
    ONNX Runtime. Bitwise: a party matches when its digest is the referee's. Tolerance: also
    when its revealed value (checked against its digest) is within :func:`referee_tolerance`.
    Both match: ``none``; neither: ``neither``.
    """
    from veriml.runtime import Profile, reexecute_node

    if not 0 <= index < layout.size:
        raise FormatError("no such trace index", index=index, size=layout.size)
    if mode not in ("bitwise", "tolerance"):
        raise FormatError("comparison mode must be bitwise or tolerance", got=mode)
    entry = layout.entries[index]
    # The agreed inputs are exactly the operator's non-initializer reads, and the tensors are
    # the ones agreed on.
    needed = {n for n in entry.reads if n not in layout.initializers}
    if set(agreed) != needed:
        raise VerificationError(
            "agreed digests do not cover the operator's inputs",
            check=Check.REFEREE_INPUT,
            needed=",".join(sorted(needed)),
            agreed=",".join(sorted(agreed)),
        )
    missing = needed - set(inputs)
    if missing:
        raise VerificationError(
            "an agreed input tensor is missing", check=Check.REFEREE_INPUT, input=min(missing)
        )
    values = {name: np.asarray(inputs[name]) for name in needed}
    check_tensor_digests(
        values, agreed, check=Check.REFEREE_INPUT, kind="input", claimant="the agreed trace"
    )
    outputs = reexecute_node(model, entry.node, values, engine="onnxruntime", profile=Profile())
    digests = {name: tensor_digest(value) for name, value in outputs.items()}
    reference = outputs[entry.output]
    expected = digests[entry.output]
    if mode == "tolerance":
        node = model.graph.node[entry.node]
        everything = values | _initializer_values(model, entry.reads)
        output_index = [o for o in node.output if o].index(entry.output)
        opset = next(
            (int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 17
        )
        tolerance = referee_tolerance(node, everything, reference, output_index, opset=opset)

        def matches(claim: Digest, value: Array | None) -> bool:
            if claim == expected:
                return True
            if value is None or tensor_digest(np.asarray(value)) != claim:
                return False  # a party that cannot show the tensor it committed to loses
            return within_tolerance(np.asarray(value), reference, tolerance)

        defendant_ok = matches(defendant, defendant_value)
        challenger_ok = matches(challenger, challenger_value)
    else:
        defendant_ok, challenger_ok = defendant == expected, challenger == expected
    winner: Winner = (
        ("none" if challenger_ok else "defendant")
        if defendant_ok
        else ("challenger" if challenger_ok else "neither")
    )
    return RefereeDecision(winner, entry.node, entry.op_type, digests)
