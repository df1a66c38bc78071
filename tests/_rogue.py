"""A malicious coordinator for the red-team tests: the coordinator's own log, written by a
second writer holding the coordinator's log key from its home folder.

A coordinator can log whatever it likes: the log only promises that what was logged stays
logged and that every client sees one history. So the strongest lies an SDK must catch are
answers whose *entries are really in the log*. :class:`RogueLog` appends forged entries to a
running network's log (the same SQLite database, the same key) and :meth:`RogueLog.forge`
turns a genuine answer into a forged one whose inference entry is logged, with fresh
inclusion proofs for it and for every entry it cites: the only checks left to fail are the
ones about meaning (operators, disputes, verdicts, draws).

    rogue = RogueLog(net)
    forged = rogue.forge(answer.to_json(), lambda a: a["verdict"].update(...))
    verify_inference(InferenceResult.from_json(forged), log_key=...)   # must raise
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import httpx
import sqlalchemy as sa

from veriml.client import LocalNetwork
from veriml.coordinator.db import tables as db
from veriml.coordinator.nodes.dispatch import JobSpec, sign_job
from veriml.core.digest import Digest
from veriml.core.dsse import Envelope, Statement
from veriml.core.keys import load_private_key
from veriml.core.receipt import InferencePredicate
from veriml.ledger.entries import InferenceEntry, NodeEntry, parse_entry
from veriml.runtime import RunResult
from veriml.tlog.log import Log, LogOptions
from veriml.tlog.note import NoteSigner
from veriml.verify.answer import InferenceResult

__all__ = ["RogueLog"]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class RogueLog:
    """The network's log, opened for writing with the coordinator's own log key."""

    def __init__(self, net: LocalNetwork) -> None:
        home = net.home / "coordinator"
        origin = json.loads((home / "log.key.json").read_text())["origin"]
        signer = NoteSigner(origin, load_private_key(home / "log.key", kind="ed25519"))
        self.job_key = load_private_key(home / "coordinator.key", kind="ed25519")
        self.url = f"sqlite:///{home / 'veriml.db'}"
        self.log = Log.open(self.url, signer, options=LogOptions(batch_interval=0.0))

    def close(self) -> None:
        self.log.close()

    def __enter__(self) -> RogueLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def append(self, entry: bytes) -> int:
        """Log ``entry`` as the coordinator would (no ledger check: a liar skips it)."""
        return self.log.add(entry)

    def entry(self, index: int) -> bytes:
        return self.log.entries(index, index + 1)[0]

    def epoch_key(self, epoch: int) -> bytes:
        """Epoch ``epoch``'s secret key, from the coordinator's own database."""
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as conn:
                query = sa.select(db.beacon_keys.c.key).where(db.beacon_keys.c.epoch == epoch)
                return bytes.fromhex(str(conn.execute(query).scalar_one()))
        finally:
            engine.dispose()

    def node_entry(self, node_id: str) -> dict[str, Any]:
        """The evidence item of ``node_id``'s registration (its proof is made by :meth:`forge`)."""
        for index, data in enumerate(self.log.entries(0, self.log.size)):
            entry = parse_entry(data)
            if isinstance(entry, NodeEntry) and entry.open().node_id == node_id:
                return {"index": index, "entry": _b64(data), "inclusion_proof": []}
        raise LookupError(node_id)

    def rerun(
        self,
        receipt: Mapping[str, Any],
        node: Any,
        inputs: Mapping[str, Any],
        *,
        spot: Digest | None = None,
    ) -> dict[str, Any]:
        """The receipt (DSSE JSON) of ``node`` (a :class:`LocalNetwork` node) for the job that
        ``receipt`` answered, issued with the coordinator's job key: what a coordinator can
        always get from a node it schedules. ``spot``: the spot commitment to sign into the job
        instead of the receipt's (a secret the coordinator picked)."""
        predicate = InferencePredicate.from_json(
            Statement.from_bytes(Envelope.from_json(receipt).payload).predicate
        )
        spec = JobSpec(
            request_id=predicate.request_id,
            model=predicate.model_digest,
            input_digests=predicate.inputs,
            inputs_json=inputs,
            policy=predicate.policy,
            spot=predicate.spot if spot is None else spot,
        )
        _, job = sign_job(spec, str(node.node_id), self.job_key, timeout=dt.timedelta(minutes=1))
        body = {"job": job.to_json(), "inputs": dict(inputs)}
        response = httpx.post(node.url.rstrip("/") + "/v1/jobs", json=body, timeout=60)
        response.raise_for_status()
        return RunResult.from_bytes(response.content).receipt.to_json()

    def forge(
        self, answer: Mapping[str, Any], change: Callable[[dict[str, Any]], None]
    ) -> dict[str, Any]:
        """``answer`` (a saved result's JSON) changed by ``change``, its inference entry
        rebuilt from the changed answer and logged, and its log evidence (inclusion proof,
        checkpoint, cited entries) proven anew at the log's new size."""
        forged = copy.deepcopy(dict(answer))
        change(forged)
        result = InferenceResult.from_json(forged)
        original = parse_entry(self.entry(int(answer["log"]["index"])))
        assert isinstance(original, InferenceEntry)
        entry = InferenceEntry(
            request_id=result.id,
            request_digest=original.request_digest,
            model=result.model,
            policy=result.policy,
            receipts=result.receipts,
            verdict=result.verdict,
            extra=dict(result.request),
            state=result.network.state,
        )
        index = self.append(entry.to_bytes())
        size = self.log.size
        note = self.log.checkpoint_at(size)
        forged["log"] = {
            "index": index,
            "inclusion_proof": [_b64(h) for h in self.log.inclusion_proof(index, size)],
            "checkpoint": note.decode(),
        }
        forged["evidence"] = [
            {
                "index": item["index"],
                "entry": item["entry"],
                "inclusion_proof": [
                    _b64(h) for h in self.log.inclusion_proof(int(item["index"]), size)
                ],
            }
            for item in forged.get("evidence", [])
        ]
        for node in forged.get("nodes", []):
            node.pop("entry", None)
            node.pop("inclusion_proof", None)
        return forged
