"""The fold's rules for disputes (docs/ledger.md, "Authority"; docs/verification.md,
"Disputes"): a challenge opens once, with both sides' signatures; a verdict closes it and names
the settlement that must follow (:func:`~veriml.ledger.settlement.settle`). Pure: no I/O."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.errors import FormatError, VerificationError
from veriml.ledger.entries import (
    ChallengeEntry,
    DisputeVerdictEntry,
)
from veriml.ledger.settlement import settle
from veriml.ledger.state.change import Change
from veriml.ledger.state.records import OpenDispute
from veriml.protocol.accounts import account_key
from veriml.protocol.prefill_check import PREFILL_CHECK_PREDICATE_TYPE

__all__ = ["RULES"]


def _signed_statement(
    change: Change, party: Mapping[str, Any], node: str, inference: str
) -> tuple[str, Statement]:
    """A party's ``statement`` is a DSSE envelope signed by ``node``'s registered key, naming
    ``node`` and about ``inference``; the SHA-256 of its payload, and the statement."""
    statement = party.get("statement")
    key_pem = change.state._node_keys.get(node)
    if statement is None or key_pem is None:
        raise change.fail(
            "a node party carries its own signed statement, and the node is registered",
            node=node,
        )
    envelope = Envelope.from_json(statement)
    try:
        envelope.verify([account_key(key_pem)])
        signed = Statement.from_bytes(envelope.payload)
    except (VerificationError, FormatError) as exc:
        raise change.fail(
            "a party's statement is not signed by its node", node=node, reason=exc.message
        ) from exc
    request = signed.predicate.get("request")
    if not isinstance(request, Mapping) or request.get("id") != inference:
        raise change.fail("a party's statement is about another inference", node=node)
    named = signed.predicate.get("node")
    if not isinstance(named, Mapping) or named.get("id") != node:
        raise change.fail("a party's statement names another node", node=node)
    return Digest.of(envelope.payload).to_text(), signed


def _claims(statement: Statement, entry: ChallengeEntry) -> bool:
    """Whether a challenger node's statement claims what the challenge says it does: a
    receipt whose outputs are the challenger's claimed ones, or a prefill check of exactly
    the challenged receipt that rejected it (the checking node claims no outputs). A node's
    other logged statements (an agreeing receipt, an accepting check) cannot be used to drag
    it into a dispute it would lose."""
    subjects = {s.name: s.digest.to_text() for s in statement.subjects}
    if statement.predicate_type == PREFILL_CHECK_PREDICATE_TYPE:
        report = statement.predicate.get("report")
        return (
            subjects == {"receipt": entry.defendant["receipt"]}
            and not entry.challenger["outputs"]
            and isinstance(report, Mapping)
            and report.get("accepted") is False
        )
    return bool(subjects) and subjects == dict(entry.challenger["outputs"])


def _challenge(change: Change, entry: ChallengeEntry) -> None:
    if change.known(entry.dispute):
        raise change.fail("dispute was already opened", dispute=entry.dispute)
    # Both sides signed into the dispute: the defendant's own receipt, and the challenger's
    # signed challenge request or (a node) its own statement about the inference.
    receipt, _ = _signed_statement(change, entry.defendant, entry.defendant_node, entry.inference)
    if receipt != entry.defendant["receipt"]:
        raise change.fail("the defendant's statement is not the challenged receipt")
    node = entry.challenger.get("node")
    if entry.authorization is None and (node is None or node != entry.challenger_account):
        raise change.fail(
            "a challenger signs its challenge: a signed challenge request, or its node's "
            "signed statement",
            challenger=entry.challenger_account,
        )
    if node is not None:
        # A node named as the challenger stands by its own signed statement, whoever bonds,
        # and the statement claims what the challenge claims.
        _, statement = _signed_statement(change, entry.challenger, str(node), entry.inference)
        if not _claims(statement, entry):
            raise change.fail(
                "a challenger node's statement does not claim what the challenge claims",
                node=str(node),
            )
    claim = entry.claim
    if claim in change.state._claims:
        raise change.fail(
            "this receipt was already disputed with this claim", inference=entry.inference
        )
    change.claims.append(claim)
    if entry.authorization is not None:
        change.authorised(entry, entry.request)
    change.debit(entry.challenger_account, entry.bond, "bond exceeds the challenger's balance")
    change.account(entry.defendant_node)
    node = entry.challenger.get("node")
    if node is not None:
        change.account(str(node))
    change.opened[entry.dispute] = OpenDispute(
        entry.inference,
        entry.defendant_node,
        entry.challenger_account,
        entry.bond,
        entry.at,
        None if node is None else str(node),
    )


def _verdict(change: Change, entry: DisputeVerdictEntry) -> None:
    rules = change.rules_or_fail()
    dispute = change.state._disputes.get(entry.dispute)
    if dispute is None:
        settled = entry.dispute in change.state._known_disputes
        message = "dispute was already decided" if settled else "no such dispute"
        raise change.fail(message, dispute=entry.dispute)
    change.closed.append(entry.dispute)
    if entry.challenger_lost:
        change.totals.burned += dispute.bond
    else:
        change.account(dispute.challenger).balance += dispute.bond

    def slashable(account: str) -> int:
        found = change.account(account)
        return found.stake + found.unbonding_total

    change.expect = settle(
        entry, dispute.parties, rules, bonding=change.operator_of, slashable=slashable
    )


RULES: dict[type, Callable[[Change, Any], None]] = {
    ChallengeEntry: _challenge,
    DisputeVerdictEntry: _verdict,
}
