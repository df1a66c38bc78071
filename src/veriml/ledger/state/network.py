"""The fold's rules for the entries that describe the network (docs/ledger.md, "Authority"):
``state`` entries set the rules and commit to the bond map, beacon epochs follow one another
and reveal their keys, namespaces are claimed once, nodes stay bound to their operator, and
inferences cite their state entry and draw from a current epoch. Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import FormatError, VerificationError
from veriml.ledger.entries import (
    BeaconEntry,
    InferenceEntry,
    ModelEntry,
    NamespaceEntry,
    NodeEntry,
    StateEntry,
)
from veriml.ledger.state.change import REVEAL_LAG, Change, Epoch, Paying, PendingDraw
from veriml.protocol.draw import beacon_commitment

__all__ = ["RULES"]


def _state(change: Change, entry: StateEntry) -> None:
    bonds = change.state.bond_map()
    root, size = bonds.root(), bonds.size
    if (entry.root, entry.size) != (root, size):
        raise change.fail(
            "the state entry's bond map is not the ledger's",
            claimed=entry.root,
            calculated=root,
            size=size,
        )
    change.rules = entry.rules
    change.state_ref = (change.index, entry.at)


def _beacon(change: Change, entry: BeaconEntry) -> None:
    epochs = change.state._epochs
    expected = 0 if not epochs else max(epochs) + 1
    if entry.epoch != expected:
        raise change.fail("beacon epochs follow one another", epoch=entry.epoch, expected=expected)
    # Epoch e reveals the key of epoch e - 2: requests draw from the epoch current when they
    # start and may be logged in the next, so a key is revealed only once every job drawn from
    # it has long expired (a node holding a job cannot learn its own spot decision).
    revealed = entry.epoch - REVEAL_LAG
    if entry.reveal is not None:
        if revealed < 0:
            raise change.fail("the first two epochs have nothing to reveal", epoch=entry.epoch)
        committed = epochs[revealed].commitment
        if beacon_commitment(entry.reveal) != committed:
            raise change.fail(
                "the revealed key is not the one its epoch committed to", epoch=revealed
            )
        for pending in change.state._draws.get(revealed, ()):
            pending.check(entry.reveal, change)
    elif change.state._draws.get(revealed):
        # A key "lost" after draws were made from it would leave them unchecked forever: a
        # coordinator could pick its own secrets and never reveal. The keys live in the
        # coordinator's database, beside the log; losing them is losing the database.
        raise change.fail("an epoch that drew requests must reveal its key", epoch=revealed)
    change.epoch = (entry.epoch, Epoch(entry.commitment, change.index), entry.reveal)


def _namespace(change: Change, entry: NamespaceEntry) -> None:
    owner = change.state._namespaces.get(entry.namespace)
    if owner is not None:
        raise change.fail(
            "the namespace is already claimed", namespace=entry.namespace, owner=owner
        )
    change.namespaces[entry.namespace] = entry.owner


def _model(change: Change, entry: ModelEntry) -> None:
    if entry.unsigned:
        return  # owns no name: reachable by digest only
    owner = change.state._namespaces.get(entry.namespace)
    if owner != entry.publisher_key_id:
        raise change.fail(
            "a signed model's name must be in a namespace its publisher owns",
            namespace=entry.namespace,
            owner=owner,
            publisher=entry.publisher_key_id,
        )


def _node(change: Change, entry: NodeEntry) -> None:
    try:
        descriptor = entry.open()
    except (VerificationError, FormatError) as exc:
        raise change.fail(
            "node entry's descriptor does not verify", reason=exc.diagnostics()
        ) from exc
    node, operator = descriptor.node_id, descriptor.operator
    bound = change.state._operators.get(node)
    if bound is not None and bound != operator:
        raise change.fail(
            "a node stays bound to its first operator", node=node, operator=bound, got=operator
        )
    change.operators[node] = operator
    change.node_keys[node] = descriptor.public_key
    change.account(node)
    change.account(operator)


def _inference(change: Change, entry: InferenceEntry) -> None:
    if entry.state is not None and entry.state not in change.state._states:
        raise change.fail("the inference cites no state entry", state=entry.state)
    change.paying = Paying(entry.request_id, _answering(entry))
    draw = entry.verdict.draw
    if draw is not None:
        epoch = change.state._epochs.get(draw.epoch)
        latest = max(change.state._epochs, default=None)
        if epoch is None or latest is None:
            raise change.fail("the inference draws from an epoch not begun", epoch=draw.epoch)
        if draw.epoch < latest - 1:
            # The current epoch, or the one before for a request in flight at the rotation:
            # an older key is public, and choosing among epochs would choose the draw.
            raise change.fail(
                "the inference draws from an epoch that has ended", epoch=draw.epoch, latest=latest
            )
        pending = PendingDraw(change.index, entry.request_id, draw)
        if epoch.key is not None:
            pending.check(epoch.key, change)
        else:
            change.draws.append((draw.epoch, pending))
    if entry.verdict.outcome != "accepted":
        return
    for node_id in dict.fromkeys(entry.verdict.agreeing):
        change.account(node_id).jobs += 1


def _answering(entry: InferenceEntry) -> dict[str, tuple[Envelope, ...]]:
    """An inference entry's receipts about its own request, by the node each names
    (unverified: a fee to a node checks that one of them is that node's signature)."""
    nodes: dict[str, tuple[Envelope, ...]] = {}
    for receipt in entry.receipts:
        try:
            predicate = Statement.from_bytes(receipt.payload).predicate
        except (FormatError, VerificationError):
            continue
        node, request = predicate.get("node"), predicate.get("request")
        if not (isinstance(request, Mapping) and request.get("id") == entry.request_id):
            continue
        if isinstance(node, Mapping) and isinstance(node.get("id"), str):
            nodes[node["id"]] = (*nodes.get(node["id"], ()), receipt)
    return nodes


RULES: dict[type, Callable[[Change, Any], None]] = {
    StateEntry: _state,
    BeaconEntry: _beacon,
    NamespaceEntry: _namespace,
    ModelEntry: _model,
    NodeEntry: _node,
    InferenceEntry: _inference,
}
