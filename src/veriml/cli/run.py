"""``veriml run`` and ``veriml verify``: local execution with a signed receipt, and its check.

Both are thin layers over :func:`veriml.runtime.run` and :func:`veriml.verify.verify_receipt`.
Exit codes: 0 success, 1 a failed verification check (named), 2 bad input or usage
(docs/sdk.md, "Exit codes").
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from veriml.cli._common import JsonOpt, console, fail, passphrase_env_option, print_json
from veriml.cli.key import read_passphrase

if TYPE_CHECKING:
    from veriml.verify import VerifiedInference, VerifiedReceipt

__all__ = ["register"]


def run_command(
    model: Annotated[Path, typer.Argument(help="Model folder.", show_default=False)],
    key: Annotated[
        Path, typer.Option("--key", "-k", envvar="VERIML_NODE_KEY", help="Node Ed25519 key.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the result JSON.")],
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input", "-i", help="Input tensor: FILE (.npy or JSON) or NAME=FILE; repeatable."
        ),
    ] = None,
    trace: Annotated[
        bool, typer.Option("--trace", help="Record every intermediate tensor; commit to them.")
    ] = False,
    policy: Annotated[
        str, typer.Option(envvar="VERIML_POLICY", help="Verification policy to record.")
    ] = "none",
    request_id: Annotated[
        str | None, typer.Option("--request-id", help="Request id (default: a new UUID).")
    ] = None,
    passphrase_env: Annotated[
        str | None,
        passphrase_env_option(
            "VERIML_NODE_KEY_PASSPHRASE_ENV",
            help="Name of the environment variable holding the node key's passphrase.",
        ),
    ] = None,
    no_inputs: Annotated[
        bool,
        typer.Option("--no-inputs", help="Leave inputs out of the result (no re-execution)."),
    ] = False,
    force: Annotated[bool, typer.Option(help="Overwrite the result file.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Run a model locally and write its outputs with a signed receipt."""
    # ONNX Runtime loads here, not at CLI start-up.
    from veriml.core.keys import load_private_key
    from veriml.models import ModelPackage
    from veriml.runtime import load_input_files
    from veriml.runtime import run as run_model

    if out.exists() and not force:
        raise fail(f"{out}: exists (use --force to overwrite)")
    signing_key = load_private_key(key, passphrase=read_passphrase(passphrase_env), kind="ed25519")
    package = ModelPackage.load(model)
    tensors = load_input_files(inputs or [], [spec.name for spec in package.io.inputs])
    result = run_model(
        package, tensors, key=signing_key, trace=trace, policy=policy, request_id=request_id
    )
    out.write_bytes(result.to_bytes(include_inputs=not no_inputs))
    p = result.predicate
    output_digests = {
        s["name"]: "sha256:" + s["digest"]["sha256"]
        for s in json.loads(result.receipt.payload)["subject"]
    }
    summary = {
        "out": str(out),
        "request_id": p.request_id,
        "model": p.model_digest.to_text(),
        "node": p.node_id,
        "outputs": output_digests,
        "trace": None if p.trace is None else p.trace.to_json(),
    }
    if json_out:
        print_json(summary)
        return
    names = ", ".join(output_digests)
    trace_note = "" if p.trace is None else f", trace root {p.trace.root} ({p.trace.size} tensors)"
    console.print(
        f"wrote {out}: outputs [{names}] of {p.model_digest}, signed by {p.node_id}", markup=False
    )
    console.print(f"request {p.request_id}{trace_note}", markup=False)


def verify_command(
    result: Annotated[Path, typer.Argument(help="Result JSON written by `veriml run`.")],
    model: Annotated[
        Path | None, typer.Option("--model", "-m", help="Check the model digest against DIR.")
    ] = None,
    pubkey: Annotated[
        Path | None,
        typer.Option(
            "--pubkey", envvar="VERIML_NODE_PUBKEY", help="The node public key you trust."
        ),
    ] = None,
    reexecute: Annotated[
        bool, typer.Option("--reexecute", help="Re-run the model; require bitwise equality.")
    ] = False,
    log_vkey: Annotated[
        str | None,
        typer.Option(
            "--log-vkey",
            envvar="VERIML_LOG_VKEY",
            help="For network results: the log key to pin (default: the local network's).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Verify a result file or a saved network answer; exit 1 naming the failed check.

    A network answer (``veriml infer --out``) is checked fully offline: node keys from the log,
    receipts, outputs, log inclusion under the pinned log key, and the verdict."""
    if _is_network_result(result):
        _verify_network_result(result, log_vkey, json_out)
        return
    if reexecute and model is None:
        raise fail("--reexecute needs --model DIR")
    if pubkey is None:
        raise fail("--pubkey NODE_PUB is required: a receipt is only as good as the key you trust")
    from veriml.core.keys import load_public_key
    from veriml.verify import verify_receipt  # re-execution needs the 'node' extra

    node_key = load_public_key(pubkey)
    _report(
        lambda: verify_receipt(result, node_key=node_key, model=model, reexecute=reexecute),
        json_out,
    )


def _report(check: Callable[[], VerifiedReceipt | VerifiedInference], json_out: bool) -> None:
    """Run ``check`` and print its account; a failed check prints ``{"ok": false, ...}`` with
    ``--json`` and exits 1 (else the error boundary prints it)."""
    from veriml.core.errors import VerificationError

    try:
        verified = check()
    except VerificationError as exc:
        if json_out:
            print_json({"ok": False, "check": exc.check, "error": exc.diagnostics()})
            raise typer.Exit(exc.exit_code) from exc
        raise
    if json_out:
        print_json(verified.to_json())
    else:
        console.print(verified.summary(), markup=False)


def _is_network_result(path: Path) -> bool:
    from veriml.client import is_network_result
    from veriml.verify.answer import MAX_RESULT_BYTES

    try:
        if path.stat().st_size > MAX_RESULT_BYTES:
            return False  # verify_receipt reports the size
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False  # verify_receipt reports what is wrong with the file
    return isinstance(obj, dict) and is_network_result(obj)


def _verify_network_result(path: Path, log_vkey: str | None, json_out: bool) -> None:
    """A network answer saved by ``veriml infer --out``: every check of the SDK, offline."""
    from veriml.client import verify_inference_file

    _report(lambda: verify_inference_file(path, log_vkey=log_vkey), json_out)


def register(root: typer.Typer) -> None:
    """Add ``run`` and ``verify`` to the root app."""
    root.command("run")(run_command)
    root.command("verify")(verify_command)
