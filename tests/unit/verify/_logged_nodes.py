"""A network in a real log, as the answer checks need it (shared by the tests of
verify_inference, the policy checks and verify_completion).

Everything a coordinator cites is really logged, and every ledger entry is folded before it
is logged, so the fold (what an auditor runs) accepts it: the rules, an epoch beacon, nodes of
distinct operators (each bound by its operator's signature), each operator's signed deposit
and stake, the ``state`` entry whose bond map answers cite, and a published model with its
namespace claim. An answer built on it carries the network evidence a coordinator attaches
(:meth:`Network.evidence`), so a test about one check gets past every other one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import secrets
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from veriml.core.digest import Digest
from veriml.core.dsse import Envelope
from veriml.core.keys import SigningKey, generate_key
from veriml.core.receipt import utc_now
from veriml.core.timestamps import format_time
from veriml.ledger import (
    BeaconEntry,
    BondMap,
    DepositEntry,
    Entry,
    LedgerState,
    ModelEntry,
    NamespaceEntry,
    NodeEntry,
    Rules,
    StakeEntry,
    StateEntry,
    namespace_of,
)
from veriml.models import sign_model
from veriml.models.examples import build_mlp, write_example_folder
from veriml.models.package import ModelPackage
from veriml.protocol import NodeDescriptor
from veriml.protocol.accounts import LedgerRequest, OperatorBinding
from veriml.protocol.draw import Draw, beacon_commitment, draw_secret
from veriml.tlog import Checkpoint, Log, Note, NoteSigner
from veriml.verify.network import Bonds, LoggedEntry, NetworkEvidence

ADMIN = generate_key()
RULES = Rules(admin=ADMIN.key_id)
"""The default rules: min_stake 100, a one-day challenge window, a one-hour unstake delay."""
STAKE = 1_000
"""What each operator stakes (well above the rules' minimum)."""


def signed_descriptor(node: SigningKey, operator: SigningKey, *, port: int) -> Envelope:
    """``node``'s descriptor, bound by the ``operator`` account and signed by the node."""
    binding = OperatorBinding.of(operator, node.key_id).sign(operator)
    return NodeDescriptor(
        public_key=node.public.to_pem().decode(),
        operator_binding=binding,
        endpoint=f"http://127.0.0.1:{port}",
        issued_at=utc_now(),
        nonce=uuid.uuid4().hex,
    ).sign(node)


@dataclasses.dataclass
class Network:
    """A log with staked nodes of distinct operators, an epoch key and (once published) a
    model; :meth:`evidence` is what a coordinator attaches to an answer."""

    log: Log
    vkey: str
    nodes: list[tuple[SigningKey, str, int]]  # key, operator account id, registration index
    ledger: LedgerState
    epoch_key: bytes
    beacon: int = -1
    """The ``beacon`` entry that began the epoch requests draw from (answers cite it)."""
    state: int = -1
    """The ``state`` entry answers are scheduled under (and cite)."""
    bonds: BondMap = dataclasses.field(default_factory=lambda: BondMap(()))
    provenance: tuple[int, int | None] | None = None
    model: Path | None = None
    epoch: int = 0

    def add(self, entry: Entry) -> int:
        """Log a ledger entry the fold accepts (it refuses, and nothing is logged, otherwise)."""
        self.ledger.check(entry)
        index = self.log.add(entry.to_bytes())
        self.ledger.apply(entry, index)
        return index

    def bond(self, key: SigningKey) -> None:
        """Fund and stake ``key``'s account (:data:`STAKE`), signed as the fold requires."""
        now = utc_now()
        deposit = LedgerRequest.signed(
            ADMIN, "deposit", STAKE, issued_at=now, to=key.key_id, memo=""
        )
        self.add(DepositEntry(key.key_id, STAKE, now, "", deposit))
        stake = LedgerRequest.signed(key, "stake", STAKE, issued_at=now)
        self.add(StakeEntry(key.key_id, STAKE, now, stake))

    def commit_state(self) -> int:
        """Log the ``state`` entry of the current stakes: answers cite it from now on."""
        self.bonds = self.ledger.bond_map()
        self.state = self.add(StateEntry(RULES, self.bonds.root(), self.bonds.size, utc_now()))
        return self.state

    def publish(
        self,
        digest: Digest,
        name: str,
        *,
        signature: Digest,
        publisher: SigningKey | None = None,
        size: int = 1,
        files: Digest | None = None,
    ) -> None:
        """Log ``name``'s namespace claim by ``publisher`` (default: a fresh key) and its model
        entry (``digest``): the provenance every answer of that model cites."""
        publisher = publisher or generate_key("ec")
        pem = publisher.public.to_pem().decode()
        now = utc_now()
        claimed = self.add(NamespaceEntry(namespace_of(name), pem, digest, now))
        entry = ModelEntry(
            digest=digest,
            files_digest=files or Digest.of(b"files of " + digest.raw),
            name=name,
            version="1.0.0",
            publisher_key_id=publisher.key_id,
            publisher_key=pem,
            signature=signature,
            size=size,
            registered_at=now,
        )
        self.provenance = (self.add(entry), claimed)

    def draw(self, request_id: str) -> Draw:
        """The request's draw: its secret under this epoch's key (committed in the log)."""
        return Draw(self.epoch, draw_secret(self.epoch_key, request_id))

    def final_after(self, seconds: float = RULES.challenge_window) -> str:
        """When an answer signed now becomes final under the rules' challenge window."""
        return format_time(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds))

    def operator_of(self, node_id: str) -> str:
        return next(operator for key, operator, _ in self.nodes if key.key_id == node_id)

    def checkpoint(self) -> tuple[bytes, int]:
        """The log's signed checkpoint and its size."""
        note = self.log.checkpoint()
        return note, Checkpoint.from_text(Note.from_bytes(note).text).size

    def cited(self, index: int, size: int) -> LoggedEntry:
        """Entry ``index`` with its inclusion proof in the tree of ``size``."""
        return LoggedEntry(
            index,
            self.log.entries(index, index + 1)[0],
            tuple(self.log.inclusion_proof(index, size)),
        )

    def evidence(
        self,
        operators: Iterable[str],
        size: int,
        *,
        cites: Iterable[int] = (),
        provenance: bool = True,
    ) -> NetworkEvidence:
        """An answer's ``evidence``, ``bonds``, ``provenance`` and ``beacon`` at the tree of
        ``size``: the cited state, the epoch's beacon, the model's entries (unless
        ``provenance=False``: a relayed answer has no model) and ``cites`` (dispute entries),
        each proven; a stake proof per operator with stake (one without is left out, as the
        coordinator leaves it out)."""
        hashes = self.bonds.leaf_hashes()
        staked = {account for account, _ in self.bonds.accounts}
        proofs = tuple(self.bonds.prove(a, hashes) for a in dict.fromkeys(operators) if a in staked)
        model = self.provenance if provenance else None
        indexes = {self.state, self.beacon, *cites, *(i for i in model or () if i is not None)}
        return NetworkEvidence(
            tuple(self.cited(i, size) for i in sorted(indexes)),
            Bonds(self.state, proofs),
            model,
            beacon=self.beacon,
        )


@contextlib.contextmanager
def logged_network(tmp: Path, nodes: int, *, port: int = 9000) -> Iterator[Network]:
    """A fresh SQLite log under ``tmp`` with ``nodes`` staked nodes of distinct operators and
    the ``state`` entry that bonds them (no model published yet)."""
    signer = NoteSigner("test.veriml.local/log", generate_key())
    with Log.open(f"sqlite:///{tmp / 'log.db'}", signer) as log:
        net = Network(log, signer.vkey, [], LedgerState(), secrets.token_bytes(32))
        net.add(StateEntry(RULES, BondMap(()).root(), 0, utc_now()))
        net.beacon = net.add(BeaconEntry(net.epoch, beacon_commitment(net.epoch_key), utc_now()))
        for i in range(nodes):
            key, operator = generate_key(), generate_key()
            registered = net.add(NodeEntry(signed_descriptor(key, operator, port=port + i)))
            net.nodes.append((key, operator.key_id, registered))
            net.bond(operator)
        net.commit_state()
        yield net


@contextlib.contextmanager
def model_network(tmp: Path, nodes: int) -> Iterator[Network]:
    """:func:`logged_network` with a small ONNX MLP the nodes run, signed by its publisher
    (OMS) and published under the name ``m``."""
    folder = write_example_folder(tmp / "m", build_mlp((4, 8, 3), seed=1), name="m")
    publisher = generate_key("ec")
    publisher.save(tmp / "publisher.key")
    # The signature lives outside the folder, so the folder's digest is the model's.
    signature = sign_model(folder, tmp / "publisher.key", signature=tmp / "m.sig")
    package = ModelPackage.load(folder)
    with logged_network(tmp, nodes) as net:
        net.publish(
            package.digest,
            "m",
            signature=Digest.of(signature.read_bytes()),
            publisher=publisher,
            size=package.size,
            files=package.files_digest,
        )
        net.model = folder
        yield net
