"""The network demo (``veriml demo``, ``make demo``), issue 4 §5:

1. start a local network: a coordinator and three nodes of distinct operators (subprocesses,
   free ports, SQLite and local blobs under ``HOME/demo-network``);
2. build a real small model, logistic regression trained on the iris data that scikit-learn
   ships (converted with skl2onnx; the ``demo`` extra), and sign it (OMS, EC P-256);
3. publish it to the hub (streamed; the hub verifies the signature before registering it);
4. run inferences under ``none`` and ``quorum:3/2``, each verified by the SDK on arrival;
5. verify the saved answers offline with nothing but the log key, and show that tampered
   copies are rejected, each naming the failed check;
6. print a summary (models, nodes, inferences, verdicts, log size);
7. shut everything down and exit 0.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.panel import Panel
from rich.table import Table

from veriml.cli._common import console

if TYPE_CHECKING:
    import onnx

    from veriml.client import InferenceResult

__all__ = ["build_demo_model", "network_demo"]

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
        obj["nodes"][0]["entry"] = obj["nodes"][-1]["entry"]

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

    _step(1, "Start a local network: one coordinator, three nodes (distinct operators)")
    with LocalNetwork(work / "net", nodes=3, port=0) as net:
        console.print(f"   coordinator   {net.url}", markup=False)
        for child in net.nodes:
            console.print(f"   {child.name:<13} {child.url}  {child.node_id}", markup=False)
        console.print(f"   log key       {net.log_vkey}", markup=False)

        _step(2, "Build a real small model and sign it (OpenSSF Model Signing, EC P-256)")
        model_dir, what = build_demo_model(work / "iris")
        publisher = generate_key("ec")
        publisher.save(work / "publisher.key")
        sign_model(model_dir, work / "publisher.key")
        digest = verify_model(model_dir, work / "publisher.key.pub")
        console.print(f"   model         {what}", markup=False)
        console.print(f"   OMS digest    {digest}", markup=False)

        with Client(net.url, log_vkey=net.log_vkey) as client:
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

            _step(5, "Verify the saved answers offline, with nothing but the log key")
            for _, path in answers:
                verified = verify_inference_file(path, log_vkey=net.log_vkey)
                console.print(f"   [green]✓ valid[/]  {path.name}: {', '.join(verified.checks)}")
            for label, path in _tamper(answers[-1][0], work):
                try:
                    verify_inference_file(path, log_vkey=net.log_vkey)
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
    console.print(
        "\n[bold green]demo complete:[/] every answer verified, every tampering was caught."
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
