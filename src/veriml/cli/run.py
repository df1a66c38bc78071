"""``veriml run`` and ``veriml verify``: local execution with a signed receipt, and its check.

Both are thin layers over :func:`veriml.runtime.run` and :func:`veriml.verify.verify_receipt`.
Exit codes: 0 success, 1 a failed verification check (named), 2 bad input or usage.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import numpy.typing as npt
import typer

from veriml.cli._common import JsonOpt, console, fail, print_json
from veriml.cli.key import read_passphrase
from veriml.core.canonical import parse_json_object
from veriml.core.errors import FormatError, InvalidInput, InvalidTensor, VerificationError
from veriml.core.keys import load_private_key, load_public_key
from veriml.core.tensors import DEFAULT_MAX_TENSOR_BYTES, tensor_from_json, tensor_from_npy
from veriml.models import ModelPackage
from veriml.runtime import run as run_model
from veriml.verify import verify_receipt

__all__ = ["load_input_files", "register"]

Array = npt.NDArray[Any]
# A JSON tensor spends a few bytes per element on text; bound the file before reading it.
MAX_INPUT_FILE = 4 * DEFAULT_MAX_TENSOR_BYTES


def _read_bounded(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > MAX_INPUT_FILE:
            raise InvalidTensor("input file is too large", path=str(path), size=size)
        return path.read_bytes()
    except OSError as exc:
        raise InvalidTensor("cannot read input file", path=str(path), reason=exc.strerror) from exc


def _read_tensors(path: Path) -> Array | dict[str, Array]:
    """A ``.npy`` file, a JSON tensor, or a JSON object of ``name -> tensor``."""
    data = _read_bounded(path)
    if path.suffix.lower() == ".npy" or data.startswith(b"\x93NUMPY"):
        try:
            return tensor_from_npy(data)
        except InvalidTensor as exc:
            raise InvalidTensor(exc.message, path=str(path), **exc.evidence) from exc
    try:
        obj = parse_json_object(data, what=f"input file {path}")
        if "dtype" in obj:
            return tensor_from_json(obj)
        return {str(name): tensor_from_json(value) for name, value in obj.items()}
    except FormatError as exc:
        raise InvalidTensor(exc.message, path=str(path), **exc.evidence) from exc


def load_input_files(specs: list[str], input_names: list[str]) -> dict[str, Array]:
    """Turn ``--input`` values (``FILE`` or ``NAME=FILE``) into named tensors.

    An unnamed tensor goes to the model's only input; a JSON file may hold several named ones.
    """
    inputs: dict[str, Array] = {}

    def put(name: str, value: Array) -> None:
        if name in inputs:
            raise InvalidInput("input given twice", input=name)
        inputs[name] = value

    for spec in specs:
        name, sep, file = spec.partition("=")
        if sep and name in input_names:
            value = _read_tensors(Path(file))
            if isinstance(value, dict):
                raise InvalidInput("NAME=FILE needs a file holding one tensor", input=name)
            put(name, value)
            continue
        value = _read_tensors(Path(spec))
        if isinstance(value, dict):
            for key, tensor in value.items():
                put(key, tensor)
        elif len(input_names) == 1:
            put(input_names[0], value)
        else:
            raise InvalidInput(
                "the model has several inputs: use --input NAME=FILE",
                file=spec,
                inputs=",".join(input_names),
            )
    return inputs


def run_command(
    model: Annotated[Path, typer.Argument(help="Model folder.", show_default=False)],
    inputs: Annotated[
        list[str],
        typer.Option(
            "--input", "-i", help="Input tensor: FILE (.npy or JSON) or NAME=FILE; repeatable."
        ),
    ],
    key: Annotated[
        Path, typer.Option("--key", "-k", envvar="VERIML_NODE_KEY", help="Node Ed25519 key.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the result JSON.")],
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
        typer.Option(
            "--passphrase-env",
            envvar="VERIML_NODE_KEY_PASSPHRASE_ENV",
            help="Environment variable holding the node key's passphrase.",
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
    if out.exists() and not force:
        raise fail(f"{out}: exists (use --force to overwrite)")
    signing_key = load_private_key(key, passphrase=read_passphrase(passphrase_env), kind="ed25519")
    package = ModelPackage.load(model)
    tensors = load_input_files(inputs, [spec.name for spec in package.io.inputs])
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
    json_out: JsonOpt = False,
) -> None:
    """Verify a result's receipt; exit 1 naming the first failed check."""
    if reexecute and model is None:
        raise fail("--reexecute needs --model DIR")
    if pubkey is None:
        raise fail("--pubkey NODE_PUB is required: a receipt is only as good as the key you trust")
    node_key = load_public_key(pubkey)
    try:
        verified = verify_receipt(result, node_key=node_key, model=model, reexecute=reexecute)
    except VerificationError as exc:
        if json_out:
            print_json({"ok": False, "check": exc.check, "error": exc.diagnostics()})
            raise typer.Exit(exc.exit_code) from exc
        raise
    if json_out:
        print_json(verified.to_json())
    else:
        console.print(verified.summary(), markup=False)


def register(root: typer.Typer) -> None:
    """Add ``run`` and ``verify`` to the root app."""
    root.command("run")(run_command)
    root.command("verify")(verify_command)
