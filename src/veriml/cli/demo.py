"""``veriml demo``: the network demo (default) or the local flow (``--local``).

The network demo, down to a cheating node caught and slashed, is in
:mod:`veriml.cli.demo_network`. The local flow, without any service:

1. build a small real model (an MLP with seeded weights and a model card);
2. sign it as a publisher (OMS signature, EC P-256 key);
3. run it on a node key with a signed receipt (trace mode on);
4. verify the receipt: signature, types, output digests, model digest, re-execution;
5. tamper with an output, the signature and the model, and show each is rejected;
6. record the receipt in a transparency log (SQLite), write an offline C2SP tlog-proof for it
   and verify that proof with nothing but the log's public key.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.panel import Panel
from rich.table import Table

from veriml.cli._common import console, home_or_default

if TYPE_CHECKING:
    from veriml.runtime import RunResult


def _step(number: int, title: str) -> None:
    console.print(f"\n[bold cyan]{number}.[/] [bold]{title}[/]")


def demo(
    home: Annotated[
        Path | None,
        typer.Option(
            envvar="VERIML_HOME",
            help="Working folder; the demo uses HOME/demo (default: veriml config get home).",
        ),
    ] = None,
    local: Annotated[
        bool, typer.Option("--local", help="The local flow only: no network, no services.")
    ] = False,
) -> None:
    """Start a local network, publish a real model, run verified inferences; show that
    tampering is caught and that a cheating node is disputed and slashed. ``--local``: the
    receipt and log checks on one machine without services."""
    if local:
        local_demo(home_or_default(home))
        return
    from veriml.cli.demo_network import network_demo

    network_demo(home_or_default(home))


def local_demo(home: Path) -> None:
    """Build, sign, run and verify a model locally; show that tampering is caught."""
    # Heavy imports (ONNX Runtime, model-signing) stay out of CLI start-up.
    import numpy as np

    from veriml.core.errors import VerificationError
    from veriml.core.keys import generate_key
    from veriml.models import ModelPackage, sign_model, verify_model
    from veriml.models.examples import build_mlp, write_example_folder
    from veriml.runtime import run
    from veriml.verify import verify_receipt

    work = home / "demo"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    console.print(Panel.fit(f"veriml local demo — working in {work}", style="bold"))

    _step(1, "Build a small real model")
    model_dir = write_example_folder(
        work / "iris-mlp", build_mlp((4, 16, 3), seed=7), name="iris-mlp", task="classification"
    )
    package = ModelPackage.load(model_dir)
    console.print(f"   model folder  {model_dir}")
    console.print(f"   inputs        {', '.join(s.name for s in package.io.inputs)}")
    console.print(f"   OMS digest    {package.digest}")

    _step(2, "Sign it as the publisher (OpenSSF Model Signing, EC P-256)")
    publisher = generate_key("ec")
    publisher.save(work / "publisher.key")
    signature = sign_model(model_dir, work / "publisher.key")
    signed_digest = verify_model(model_dir, work / "publisher.key.pub")
    console.print(f"   signature     {signature}")
    console.print(f"   verified      digest {signed_digest} signed by {publisher.key_id[:19]}…")

    _step(3, "Run it on a node, with a signed receipt and a trace commitment")
    node = generate_key("ed25519")
    node.save(work / "node.key")
    inputs = {"x": np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)}
    result = run(model_dir, inputs, key=node, trace=True)
    result_path = work / "result.json"
    result_path.write_text(json.dumps(result.to_json(), indent=2))
    probs = result.outputs["probs"]
    shown = np.array2string(probs, precision=3, suppress_small=True, separator=", ")
    console.print(f"   outputs       probs{list(probs.shape)} = {' '.join(shown.split())}")
    assert result.predicate.trace is not None
    console.print(
        f"   trace root    {result.predicate.trace.root} ({result.predicate.trace.size} tensors)"
    )
    console.print(f"   receipt       {result_path} (DSSE, signed by node {node.key_id[:19]}…)")

    _step(4, "Verify the receipt, re-executing the model")
    verified = verify_receipt(result_path, node_key=node.public, model=model_dir, reexecute=True)
    console.print(f"   [green]✓ valid[/]  {verified.summary()}")

    _step(5, "Tamper with the evidence")
    table = Table(show_header=True, header_style="bold")
    table.add_column("tampering")
    table.add_column("verdict")
    table.add_column("why")
    for label, tampered, model in _tamperings(result, model_dir, work):
        try:
            verify_receipt(tampered, node_key=node.public, model=model)
        except VerificationError as exc:
            table.add_row(label, f"[green]rejected[/] at {exc.check}", exc.message)
        else:  # a tampering that verifies is a bug in veriml: fail the demo loudly
            table.add_row(label, "[red]ACCEPTED[/]", "veriml failed to detect this")
            console.print(table)
            raise typer.Exit(1)
    console.print(table)

    _step(6, "Record the receipt in the transparency log and prove it offline")
    proof_path, index, size, vkey = _log_receipt(result, work)
    console.print(f"   log           {work / 'log.db'} (RFC 9162 tree, C2SP checkpoints)")
    console.print(f"   log key       {vkey}")
    console.print(f"   entry         index {index} of a tree of {size}")
    console.print(f"   offline proof {proof_path} (C2SP tlog-proof)")
    for label, ok, why in _check_log_proof(proof_path, vkey):
        mark = "[green]✓[/]" if ok else "[green]✓ rejected[/]"
        console.print(f"   {mark} {label}: {why}")
    console.print(
        "\n[bold green]demo complete:[/] every honest check passed, every tampering was caught."
    )


def _tamperings(
    result: RunResult, model_dir: Path, work: Path
) -> list[tuple[str, dict[str, object], Path | None]]:
    import numpy as np
    import onnx
    from onnx import numpy_helper

    # One output value changed by one unit in the last place.
    out = result.to_json()
    probs = result.outputs["probs"].copy()
    probs[0, 0] = np.nextafter(probs[0, 0], np.float32(2))
    out["outputs"]["probs"] = {
        "dtype": "float32",
        "shape": list(probs.shape),
        "data": probs.tolist(),
    }

    # The model folder changed after signing: a copy with one weight nudged.
    altered = work / "iris-mlp-altered"
    shutil.copytree(model_dir, altered)
    proto = onnx.load(altered / "model.onnx")
    w = numpy_helper.to_array(proto.graph.initializer[0]).copy()
    w.flat[0] += np.float32(0.001)
    proto.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, proto.graph.initializer[0].name))
    onnx.save_model(proto, altered / "model.onnx")

    # A receipt re-signed by a key that is not the node's.
    from veriml.core.dsse import Envelope
    from veriml.core.keys import generate_key

    forged = result.to_json()
    envelope = Envelope.from_json(forged["receipt"])
    forged["receipt"] = Envelope.sign(envelope.payload, [generate_key()]).to_json()

    return [
        ("one output value changed by 1 ulp", out, None),
        ("receipt re-signed by another key", forged, None),
        ("receipt checked against an altered model", result.to_json(), altered),
    ]


def _log_entry(result: RunResult) -> bytes:
    from veriml.core.canonical import canonicalize

    # Log entries are RFC 8785 JSON objects with a type (DESIGN.md, "Log").
    return canonicalize({"type": "inference", "receipt": result.receipt.to_json()})


def _log_receipt(result: RunResult, work: Path) -> tuple[Path, int, int, str]:
    from veriml.core.keys import generate_key
    from veriml.tlog import Checkpoint, Log, Note, NoteSigner, TlogProof

    log_key = generate_key("ed25519")
    log_key.save(work / "log.key")
    signer = NoteSigner("demo.veriml.local/log", log_key)
    entry = _log_entry(result)
    with Log.open(f"sqlite:///{work / 'log.db'}", signer) as log:
        index = log.add(entry)
        note = log.checkpoint()
        size = Checkpoint.from_text(Note.from_bytes(note).text).size
        proof = TlogProof(index, tuple(log.inclusion_proof(index, size)), note, extra=entry)
    proof_path = work / "receipt.tlog-proof"
    proof_path.write_bytes(proof.to_bytes())
    return proof_path, index, size, signer.vkey


def _check_log_proof(proof_path: Path, vkey: str) -> list[tuple[str, bool, str]]:
    from veriml.core.errors import Check, VerificationError
    from veriml.core.keys import generate_key
    from veriml.tlog import NoteSigner, NoteVerifier, TlogProof, verify_tlog_proof

    data = proof_path.read_bytes()
    index, checkpoint = verify_tlog_proof(data, log=NoteVerifier.from_vkey(vkey))
    rows = [("verified offline", True, f"entry {index} is in the tree of {checkpoint.size}")]
    proof = TlogProof.from_bytes(data)
    assert proof.extra is not None
    other_log = NoteVerifier.from_vkey(NoteSigner("demo.veriml.local/log", generate_key()).vkey)
    altered = proof.extra.replace(b'"inference"', b'"inferencf"')
    attempts = [
        ("proof checked against another log's key", data, other_log),
        (
            "logged receipt altered",
            TlogProof(proof.index, proof.proof, proof.checkpoint, extra=altered).to_bytes(),
            NoteVerifier.from_vkey(vkey),
        ),
    ]
    for label, candidate, verifier in attempts:
        try:
            verify_tlog_proof(candidate, log=verifier)
        except VerificationError as exc:
            rows.append((label, False, exc.message))
        else:
            raise VerificationError(
                f"a tampered log proof verified: {label}", check=Check.INCLUSION
            )
    return rows


def register(root: typer.Typer) -> None:
    root.command("demo")(demo)
