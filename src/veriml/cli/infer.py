"""``veriml infer``: run a model on the network and verify the answer (docs/sdk.md, "What is
verified, in order").

Inputs are read as ``veriml run`` reads them; the answer is verified by the SDK before it is
shown (``--no-verify`` skips that, explicitly) and ``--out FILE`` saves it for
``veriml verify FILE``, offline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veriml.cli._common import JsonOpt, console, fail, print_json
from veriml.cli.publish import CoordinatorOpt, SignKeyOpt, load_request_key

__all__ = ["LogVkeyOpt", "register"]

LogVkeyOpt = Annotated[
    str | None,
    typer.Option(
        "--log-vkey",
        envvar="VERIML_LOG_VKEY",
        help="The log's verifier key to pin (default: the local network's, from network.json).",
    ),
]


def infer(
    model: Annotated[str, typer.Argument(help="Model: digest, name or name@version.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option("--input", "-i", help="Input: FILE (.npy or JSON) or NAME=FILE; repeatable."),
    ] = None,
    policy: Annotated[
        str, typer.Option(envvar="VERIML_POLICY", help="none or quorum:N/K.")
    ] = "none",
    coordinator: CoordinatorOpt = None,
    log_vkey: LogVkeyOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Save the answer here.")] = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Verify the answer (default: yes).")
    ] = True,
    sign_key: SignKeyOpt = None,
    public: Annotated[
        bool,
        typer.Option(
            "--public",
            help="Let anyone (watchers above all) read this request's inputs and answer; by "
            "default only you can (docs/privacy.md).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a model on the network under a policy; verify and show (or save) the answer."""
    from veriml.client import Client
    from veriml.runtime import load_input_files
    from veriml.verify.policy import Policy

    Policy.parse(policy)  # a bad policy is a usage error before any request
    request_key = load_request_key(sign_key)
    with Client(coordinator, log_vkey=log_vkey, verify=verify, key=request_key) as client:
        info = client.model(model)
        names = [str(i["name"]) for i in (info.get("io") or {}).get("inputs", [])]
        if not names and not inputs:
            raise fail("the model's inputs are unknown; name them: --input NAME=FILE")
        tensors = load_input_files(inputs or [], names)
        result = client.infer(model, tensors, policy=policy, public=public)
    if out is not None:
        result.save(out)
    summary = {
        "id": result.id,
        "model": result.model.to_text(),
        "policy": result.policy,
        "outcome": result.verdict.outcome,
        "agreeing": list(result.verdict.agreeing),
        "outputs": {n: d.to_text() for n, d in sorted(result.verdict.outputs.items())},
        "log_index": result.log.index,
        "verified": list(result.verified),
        "out": None if out is None else str(out),
    }
    if json_out:
        print_json(summary)
        return
    import numpy as np

    for name, array in sorted(result.outputs.items()):
        shown = np.array2string(array, precision=4, suppress_small=True, threshold=20)
        console.print(f"{name}{list(array.shape)} = {' '.join(shown.split())}", markup=False)
    state = "verified" if result.verified else "NOT verified (--no-verify)"
    console.print(
        f"{result.verdict.outcome} under {result.policy} by {len(result.verdict.agreeing)} "
        f"node(s); log entry {result.log.index}; {state}",
        markup=False,
    )
    if out is not None:
        console.print(f"wrote {out}", markup=False)


def register(root: typer.Typer) -> None:
    root.command("infer")(infer)
