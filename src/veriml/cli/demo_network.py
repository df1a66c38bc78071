"""The network demo (``veriml demo``, ``make demo``; docs/sdk.md, "The local network"):

1. start a local network: a coordinator, three nodes of distinct operators and a witness that
   cosigns every checkpoint (subprocesses, free ports, SQLite and local blobs under
   ``HOME/demo-network``);
2. build a real small model, logistic regression trained on the iris data that scikit-learn
   ships (converted with skl2onnx; the ``demo`` extra), and sign it (OMS, EC P-256);
3. publish it to the hub (streamed; the hub verifies the signature before registering it);
4. run inferences under ``none`` and ``quorum:3/2``, each verified by the SDK on arrival;
5. verify the saved answers offline with nothing but the log and witness keys, and show that
   tampered copies are rejected, each naming the failed check;
6. print a summary (models, nodes, inferences, verdicts, log size);
7. shut everything down.

Then a cheating node is caught and slashed (docs/node.md, "Byzantine harness"):

8. start a second network whose third node runs ``--byzantine wrong-output`` (one ulp added
   to its first float output, its trace consistent with it); every node stakes;
9. ask for ``quorum:3/2``: all three nodes answer, the two honest ones agree and the
   coordinator disputes the cheater's dissent before it logs the answer;
10. show the dispute: bisection over the two trace commitments to one operator in O(log L)
    rounds, and the referee's re-execution of that operator alone;
11. read the entries the dispute added to the log (each checked against a signed
    checkpoint): challenge, verdict, slash, reward, reputation; the cheater's stake before
    and after, from ``GET /v1/ledger/state``, and no honest node slashed;
12. fold the ledger from the whole log, as an auditor does, and compare it with the
    coordinator's;
13. shut down and exit 0.
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.panel import Panel
from rich.table import Table

from veriml.cli._common import console

if TYPE_CHECKING:
    import onnx

    from veriml.client import InferenceResult, LocalNetwork

__all__ = ["build_demo_model", "cheater_act", "network_demo"]

IRIS_URI = "https://archive.ics.uci.edu/dataset/53/iris"


def _step(number: int, title: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{title}[/]")


def _iris_model() -> tuple[onnx.ModelProto, str]:
    """Logistic regression on iris, converted to ONNX (tensor outputs, no ZipMap)."""
    import numpy as np

    try:
        from skl2onnx import to_onnx
        from sklearn.datasets import load_iris
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        from veriml.models.examples import build_mlp

        # Without the demo extra: a seeded MLP of the same shape, labelled as such.
        return build_mlp(
            (4, 16, 3), seed=7, name="iris-mlp"
        ), "seeded MLP (pip install veriml[demo] for iris)"
    x, y = load_iris(return_X_y=True)
    clf = LogisticRegression(max_iter=500).fit(x.astype(np.float32), y)
    model = to_onnx(
        clf,
        x[:1].astype(np.float32),
        options={id(clf): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    return model, f"logistic regression on iris (train accuracy {clf.score(x, y):.3f})"


def build_demo_model(folder: Path) -> tuple[Path, str]:
    """Write the demo model folder (ONNX + model card); return it and a description."""
    from veriml.models.examples import write_example_folder

    model, what = _iris_model()
    write_example_folder(
        folder,
        model,
        name="iris",
        version="1.0.0",
        task="classification",
        datasets=(IRIS_URI,),
    )
    return folder, what


def _tamper(result: InferenceResult, work: Path) -> list[tuple[str, Path]]:
    import base64

    import numpy as np

    def write(name: str, change: Any) -> Path:
        obj = result.to_json()
        change(obj)
        path = work / name
        path.write_text(json.dumps(obj))
        return path

    def output(obj: dict[str, Any]) -> None:
        name = sorted(obj["outputs"])[-1]
        tensor = obj["outputs"][name]
        flat = np.asarray(tensor["data"], dtype=tensor["dtype"]).reshape(-1)
        flat[0] = np.nextafter(flat[0], np.float32(2)) if flat.dtype.kind == "f" else flat[0] + 1
        tensor["data"] = flat.reshape(tensor["shape"]).tolist()

    def verdict(obj: dict[str, Any]) -> None:
        obj["verdict"]["agreeing"] = obj["verdict"]["agreeing"][:1]

    def proof(obj: dict[str, Any]) -> None:
        hashes = obj["log"]["inclusion_proof"]
        raw = bytearray(base64.b64decode(hashes[0]))
        raw[0] ^= 1
        hashes[0] = base64.b64encode(bytes(raw)).decode()

    def node(obj: dict[str, Any]) -> None:
        # The first node's registration entry (in the evidence) replaced by the last one's.
        cited = {e["index"]: e for e in obj["evidence"]}
        first, last = obj["nodes"][0]["log_index"], obj["nodes"][-1]["log_index"]
        cited[first]["entry"] = cited[last]["entry"]

    return [
        ("one output value changed by 1 ulp", write("t-output.json", output)),
        ("verdict claims fewer agreeing nodes", write("t-verdict.json", verdict)),
        ("log inclusion proof altered", write("t-proof.json", proof)),
        ("node registration swapped", write("t-node.json", node)),
    ]


def network_demo(home: Path) -> None:
    """Run the network demo under ``home/demo-network`` (see the module docstring)."""
    import numpy as np

    from veriml.client import Client, LocalNetwork, verify_inference_file
    from veriml.core.errors import VerificationError
    from veriml.core.keys import generate_key
    from veriml.models import sign_model, verify_model
    from veriml.tlog import Checkpoint, Note

    work = (home / "demo-network").resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    console.print(Panel.fit(f"veriml network demo — working in {work}", style="bold"))

    _step(1, "Start a local network: one coordinator, three nodes (distinct operators), a witness")
    with LocalNetwork(work / "net", nodes=3, port=0) as net:
        console.print(f"   coordinator   {net.url}", markup=False)
        for child in net.nodes:
            console.print(f"   {child.name:<13} {child.url}  {child.node_id}", markup=False)
        console.print(f"   log key       {net.log_vkey}", markup=False)
        for child, vkey in zip(net.witnesses, net.witness_vkeys, strict=True):
            console.print(f"   {child.name:<13} {vkey} (cosigns every checkpoint)", markup=False)
        # Every answer's checkpoint must carry the witness's cosignature, online and offline.
        witnesses, quorum = net.witness_vkeys, net.witness_quorum

        _step(2, "Build a real small model and sign it (OpenSSF Model Signing, EC P-256)")
        model_dir, what = build_demo_model(work / "iris")
        publisher = generate_key("ec")
        publisher.save(work / "publisher.key")
        sign_model(model_dir, work / "publisher.key")
        digest = verify_model(model_dir, work / "publisher.key.pub")
        console.print(f"   model         {what}", markup=False)
        console.print(f"   OMS digest    {digest}", markup=False)

        with Client(net.url, log_vkey=net.log_vkey, witnesses=witnesses, quorum=quorum) as client:
            _step(3, "Publish it to the hub")
            published = client.publish(model_dir, work / "publisher.key")
            console.print(
                f"   registered    iris@1.0.0 {published.get('digest')} "
                f"(log entry {published.get('log_index')})",
                markup=False,
            )

            _step(4, "Run inferences on the network; the SDK verifies every answer")
            x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
            name = client.model("iris")["io"]["inputs"][0]["name"]
            answers: list[tuple[InferenceResult, Path]] = []
            for policy in ("none", "quorum:3/2"):
                result = client.infer("iris", {name: x}, policy=policy)
                path = result.save(
                    work / f"answer-{policy.replace(':', '-').replace('/', '-')}.json"
                )
                answers.append((result, path))
                outs = ", ".join(
                    f"{n}={' '.join(np.array2string(a, precision=3).split())}"
                    for n, a in sorted(result.outputs.items())
                )
                console.print(
                    f"   [green]✓[/] {policy:<11} {result.verdict.outcome} by "
                    f"{len(result.verdict.agreeing)} node(s), log entry {result.log.index}: {outs}"
                )

            _step(5, "Verify the saved answers offline, with nothing but the log and witness keys")
            for _, path in answers:
                verified = verify_inference_file(
                    path, log_vkey=net.log_vkey, witnesses=witnesses, quorum=quorum
                )
                console.print(f"   [green]✓ valid[/]  {path.name}: {', '.join(verified.checks)}")
            for label, path in _tamper(answers[-1][0], work):
                try:
                    verify_inference_file(
                        path, log_vkey=net.log_vkey, witnesses=witnesses, quorum=quorum
                    )
                except VerificationError as exc:
                    console.print(f"   [green]✓ rejected at {exc.check}[/]  {label}: {exc.message}")
                else:  # a tampering that verifies is a bug in veriml: fail the demo loudly
                    console.print(f"   [red]ACCEPTED[/]  {label}: veriml failed to detect this")
                    raise typer.Exit(1)

            _step(6, "Summary")
            _summary(client, [r for r, _ in answers])
        note = answers[-1][0].log.checkpoint
        size = Checkpoint.from_text(Note.from_bytes(note).text).size
        console.print(f"   log size      {size} entries (checkpoint of the last answer)")
        _step(7, "Shut down")
    cheater_act(work, work / "publisher.key", x, first=8)
    console.print(
        "\n[bold green]demo complete:[/] every answer verified, every tampering was caught, "
        "the cheating node was caught and slashed."
    )


DEEP_MODEL = "deep-mlp"
STAKE = 1000
"""What each node of the cheater act stakes (deposited by the coordinator's operator, staked
with the node's key), in ledger units; losing a dispute costs a node the coordinator's
``slash_fraction`` of it."""
MIN_STAKE = 100
"""The cheater act's coordinator gives no jobs to a node with less stake."""


def cheater_act(work: Path, publisher_key: Path, x: Any, *, first: int) -> None:
    """Steps ``first`` to ``first + 5`` of the demo (module docstring, steps 8-13): a network
    with one cheating node, serving a deeper model (``x``: its ``[batch, 4]`` input) so the
    bisection has a trace worth halving. Fails the demo (exit 1) unless the cheater is
    slashed, no honest node is, and the ledger folded from the log is the coordinator's."""
    from veriml.client import Client, LocalNetwork
    from veriml.models import sign_model
    from veriml.models.examples import build_mlp, write_example_folder

    numbers = itertools.count(first)
    _step(
        next(numbers),
        "A network where node-3 cheats (wrong-output: one ulp added to its answer); "
        "every node stakes",
    )
    model = build_mlp((4, *[32] * 7, 3), seed=7, name=DEEP_MODEL)
    folder = write_example_folder(
        work / DEEP_MODEL, model, name=DEEP_MODEL, version="1.0.0", task="classification"
    )
    sign_model(folder, publisher_key)
    with LocalNetwork(
        work / "net-cheater",
        nodes=3,
        port=0,
        byzantine={2: "wrong-output"},
        stake=STAKE,
        min_stake=MIN_STAKE,
    ) as net:
        names = {str(child.node_id): child.name for child in net.nodes}
        # A slash lands on the node's operator account: name it after its node.
        names |= {net.operator_id(child): f"{child.name}'s operator" for child in net.nodes}
        cheater = str(net.nodes[2].node_id)
        with Client(net.url, log_vkey=net.log_vkey) as client:
            published = client.publish(folder, publisher_key)
            console.print(
                f"   model         {DEEP_MODEL}: an MLP of {len(model.graph.node)} operators, "
                f"{published.get('digest')}",
                markup=False,
            )
            before = client.ledger_state()
            console.print(
                f"   stake rule    a node's operator needs {MIN_STAKE} staked for it to get jobs"
            )
            for child in net.nodes:
                account = _operator_account(before, str(child.node_id))
                role = "[red]cheats[/]" if child.node_id == cheater else "honest"
                console.print(
                    f"   {child.name:<13} {child.node_id}  operator stake "
                    f"{account.get('stake', 0)}  {role}"
                )

            _step(next(numbers), "Ask for quorum:3/2: all three nodes answer, the cheater dissents")
            result = client.infer(DEEP_MODEL, {"x": x}, policy="quorum:3/2")
            verdict = result.verdict
            agreeing = ", ".join(names.get(n, n) for n in verdict.agreeing)
            console.print(
                f"   [green]✓[/] verdict     {verdict.outcome} by {agreeing} "
                f"(log entry {result.log.index}; the SDK re-derived it from the receipts)"
            )
            if not verdict.disputes:
                console.print("   [red]no dispute was opened against the cheater[/]")
                raise typer.Exit(1)
            for ref in verdict.disputes:
                console.print(
                    f"   dispute       {ref.id}: {names.get(ref.challenger, ref.challenger)} "
                    f"challenges {names.get(ref.defendant, ref.defendant)}"
                )

            _step(next(numbers), "The dispute: bisection to one operator, then the referee")
            entries, size = _log_entries(net.url, net.log_vkey)
            traces = {
                e["dispute"]: int((e["defendant"].get("trace") or {}).get("size", 0))
                for e in entries
                if e.get("type") == "challenge"
            }
            for ref in verdict.disputes:
                _show_dispute(net.url, ref.id, names, traces.get(ref.id, 0))

            _step(next(numbers), "The evidence in the log, and every node's stake before and after")
            for index in range(before["size"], size):
                console.print(f"   entry {index:<7} {_describe(entries[index], names)}")
            after = client.ledger_state(size)
            _stakes(net, before, after, cheater)

            _step(next(numbers), "Audit: fold the ledger from the whole log, as anyone can")
            _audit(entries, after)
        _step(next(numbers), "Shut down")


def _show_dispute(url: str, dispute: str, names: Mapping[str, str], trace_size: int) -> None:
    """The settled dispute as the coordinator serves it (``GET /v1/disputes/{id}``);
    ``trace_size`` is the length of the defendant's committed trace (its challenge entry)."""
    import httpx

    from veriml.client import raise_for_problem

    response = httpx.get(f"{url}/v1/disputes/{dispute}", timeout=30)
    raise_for_problem(response)
    state = response.json()
    result = state.get("result") or {}
    rounds, messages = state.get("rounds", 0), state.get("messages", 0)
    bound = math.ceil(math.log2(trace_size)) if trace_size > 1 else 1
    console.print(
        f"   trace         {trace_size} tensors committed by each party (one Merkle root each)"
    )
    console.print(
        f"   bisection     {rounds} rounds (⌈log₂ {trace_size}⌉ = {bound}), {messages} "
        "messages: per round, each party reveals one entry with its inclusion proof"
    )
    console.print(
        f"   operator      #{result.get('node_index')} {result.get('op_type')}: inputs agreed, "
        "output differs",
        markup=False,
    )
    claims = result.get("claims") or {}
    for party in ("defendant", "challenger"):
        who = names.get(str(state.get(party)), str(state.get(party)))
        console.print(f"   {party:<13} {who} claims {_short(claims.get(party))}", markup=False)
    for output, digest in sorted((result.get("referee") or {}).items()):
        console.print(
            f"   referee       re-ran that operator alone: {output} = {_short(digest)}",
            markup=False,
        )
    winner = result.get("winner")
    colour = "green" if winner == "challenger" else "red"
    console.print(
        f"   verdict       [{colour}]{winner} wins[/] (reason {result.get('reason')}), "
        f"status {state.get('status')}"
    )


def _short(value: Any) -> str:
    """A digest, or a mapping of name to digest, shortened for the screen."""
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {_short(v)}" for k, v in sorted(value.items()))
    text = str(value)
    return text[:19] + "…" if len(text) > 20 else text


def _log_entries(url: str, vkey: str) -> tuple[list[dict[str, Any]], int]:
    """Every entry of the log and its size, read from tiles: each entry bundle is checked
    against the tree of a checkpoint signed by the log key."""
    from veriml.tlog import LogClient, NoteVerifier
    from veriml.tlog.tiles import TILE_WIDTH

    with LogClient(url + "/log/", NoteVerifier.from_vkey(vkey)) as log:
        signed = log.checkpoint()
        reader = log.hash_reader(signed)
        raw: list[bytes] = []
        while len(raw) < signed.checkpoint.size:
            raw += reader.read_entry_bundle(len(raw) // TILE_WIDTH)
    return [json.loads(data) for data in raw], signed.checkpoint.size


def _describe(entry: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """One log entry on one line, nodes by their demo names."""

    def who(account: Any) -> str:
        return names.get(str(account), str(account)[:19] + "…")

    kind = entry.get("type")
    if kind == "challenge":
        defendant, challenger = entry["defendant"], entry["challenger"]
        trace = defendant.get("trace") or {}
        return (
            f"challenge  {who(challenger.get('node') or challenger.get('account'))} vs "
            f"{who(defendant.get('node'))}, trace of {trace.get('size')} tensors, "
            f"bond {entry.get('bond')}"
        )
    if kind == "verdict":
        return (
            f"verdict    {entry.get('winner')} wins ({entry.get('reason')}) at operator "
            f"#{entry.get('node_index')} {entry.get('op_type')}, {entry.get('rounds')} rounds, "
            f"{entry.get('messages')} messages"
        )
    if kind == "slash":
        return (
            f"slash      {who(entry.get('account'))}: {entry.get('amount')} "
            f"({entry.get('burned')} burned)"
        )
    if kind == "reward":
        return f"reward     {who(entry.get('account'))}: {entry.get('amount')}"
    if kind == "reputation":
        return f"reputation {who(entry.get('account'))}: {entry.get('delta'):+d}"
    if kind == "inference":
        verdict = entry.get("verdict") or {}
        return f"inference  {verdict.get('policy')} {verdict.get('outcome')}"
    return str(kind)


def _operator_account(state: Mapping[str, Any], node: str) -> Mapping[str, Any]:
    """The account of the operator ``node`` is bound to (its stake answers for the node)."""
    operator = state.get("operators", {}).get(node, node)
    found: Mapping[str, Any] = state["accounts"].get(operator, {})
    return found


def _stakes(
    net: LocalNetwork, before: Mapping[str, Any], after: Mapping[str, Any], cheater: str
) -> None:
    """The stake table (each node's operator's stake); exit 1 unless the cheater's operator,
    and only it, lost stake."""
    table = Table(header_style="bold")
    columns = ("node", "role", "operator stake before", "after", "slashed", "reputation")
    for column in columns:
        table.add_column(column)
    failed = False
    for child in net.nodes:
        node = str(child.node_id)
        was = _operator_account(before, node)
        now = _operator_account(after, node)
        lost = int(was.get("stake", 0)) - int(now.get("stake", 0))
        is_cheater = node == cheater
        failed |= (lost <= 0) if is_cheater else (lost != 0 or now.get("slashes", 0) != 0)
        reputation = after["accounts"].get(node, {}).get("reputation", 0)
        table.add_row(
            child.name,
            "[red]cheater[/]" if is_cheater else "honest",
            str(was.get("stake", 0)),
            str(now.get("stake", 0)),
            f"[red]{now.get('slashed', 0)}[/]" if is_cheater else str(now.get("slashed", 0)),
            str(reputation),
        )
    console.print(table)
    if failed:
        console.print("   [red]the slashes are not the cheater's alone[/]")
        raise typer.Exit(1)
    console.print("   [green]✓[/] the cheater was slashed; no honest node was")


def _audit(entries: list[dict[str, Any]], coordinator: Mapping[str, Any]) -> None:
    """Fold the ledger from the log's entries and require the coordinator's state to match."""
    from veriml.core.canonical import canonicalize
    from veriml.ledger import fold

    state = fold(canonicalize(e) for e in entries)
    ours = json.loads(json.dumps(state.to_json()))
    if ours != coordinator:
        console.print("   [red]the coordinator's ledger differs from the log's fold[/]")
        raise typer.Exit(1)
    console.print(
        f"   [green]✓[/] {len(entries)} entries folded: the coordinator's ledger, digest "
        f"{state.digest()}",
        markup=True,
    )


def _summary(client: Any, results: list[InferenceResult]) -> None:
    models = Table(title="models", header_style="bold")
    for column in ("name", "version", "digest", "log"):
        models.add_column(column)
    for m in client.models():
        models.add_row(
            str(m.get("name")),
            str(m.get("version")),
            str(m.get("digest"))[:23] + "…",
            str(m.get("log_index")),
        )
    nodes = Table(title="nodes", header_style="bold")
    for column in ("node", "operator", "endpoint", "live", "log"):
        nodes.add_column(column)
    for n in client.nodes():
        nodes.add_row(
            str(n.get("node_id") or n.get("id"))[:23] + "…",
            str(n.get("operator")),
            str(n.get("endpoint")),
            str(n.get("live", "")),
            str(n.get("log_index")),
        )
    inferences = Table(title="inferences", header_style="bold")
    for column in ("id", "policy", "verdict", "agreeing", "log"):
        inferences.add_column(column)
    for r in results:
        inferences.add_row(
            r.id[:8] + "…",
            r.policy,
            r.verdict.outcome,
            str(len(r.verdict.agreeing)),
            str(r.log.index),
        )
    console.print(models)
    console.print(nodes)
    console.print(inferences)
