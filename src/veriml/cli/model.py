"""``veriml model``: digest, sign, verify and inspect model folders (OMS signatures)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from veriml.cli._common import (
    JsonOpt,
    ProgressOpt,
    console,
    err_console,
    passphrase_env_option,
    print_json,
    progress_bar,
)
from veriml.cli.key import read_passphrase

# veriml.models pulls in onnx and model-signing: imported inside the commands, so that the
# CLI starts quickly for everything else.
if TYPE_CHECKING:
    from veriml.models.card import ModelCard
    from veriml.models.signature import TensorSpec

app = typer.Typer(help="Digest, sign, verify and inspect model folders.", no_args_is_help=True)

ModelDir = Annotated[
    Path,
    typer.Argument(
        help="The model folder.", exists=True, file_okay=False, dir_okay=True, resolve_path=False
    ),
]
SignatureOpt = Annotated[
    Path | None,
    typer.Option(
        "--signature",
        "-s",
        envvar="VERIML_MODEL_SIGNATURE",
        help="OMS signature bundle (default DIR/model.sig).",
    ),
]
IgnoreOpt = Annotated[
    list[Path] | None,
    typer.Option("--ignore", help="Leave this path (relative to DIR) out of the digest."),
]


@app.command("digest")
def digest(
    model: ModelDir,
    ignore: IgnoreOpt = None,
    json_out: JsonOpt = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Print the OMS root digest of a model folder, as model_signing computes it."""
    from veriml.models import model_digest

    with progress_bar("hashing", forced=show_progress) as progress:
        value = model_digest(model, ignore=ignore or (), progress=progress)
    if json_out:
        print_json({"path": str(model), "digest": str(value)})
    else:
        console.print(str(value))


@app.command("sign")
def sign(
    model: ModelDir,
    key: Annotated[
        Path,
        typer.Option(
            "--key",
            "-k",
            envvar="VERIML_MODEL_KEY",
            help="EC (P-256/P-384) private key PEM; make one with `veriml key new --type ec`.",
        ),
    ],
    signature: SignatureOpt = None,
    passphrase_env: Annotated[
        str | None, passphrase_env_option("VERIML_MODEL_KEY_PASSPHRASE_ENV")
    ] = None,
    ignore: IgnoreOpt = None,
    json_out: JsonOpt = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Sign a model folder; writes an OMS signature bundle (default DIR/model.sig)."""
    from veriml.models import sign_model
    from veriml.models.signing import signed_digest

    passphrase = read_passphrase(passphrase_env)
    with progress_bar("hashing", forced=show_progress) as progress:
        written = sign_model(
            model,
            key,
            signature=signature,
            passphrase=passphrase,
            ignore=ignore or (),
            progress=progress,
        )
    value = signed_digest(written)
    if json_out:
        print_json({"path": str(model), "digest": str(value), "signature": str(written)})
    else:
        console.print(f"signed {model} {value}")
        console.print(f"wrote {written}")


@app.command("verify")
def verify(
    model: ModelDir,
    pubkey: Annotated[
        Path | None,
        typer.Option(
            "--pubkey", "-p", envvar="VERIML_MODEL_PUBKEY", help="The publisher's EC public key."
        ),
    ] = None,
    certificate_chain: Annotated[
        list[Path] | None,
        typer.Option(
            "--certificate-chain",
            envvar="VERIML_MODEL_CERTIFICATE_CHAIN",
            help="Trusted root certificate(s) (PEM), for bundles signed with a certificate.",
        ),
    ] = None,
    identity: Annotated[
        str | None,
        typer.Option(
            "--identity",
            envvar="VERIML_MODEL_IDENTITY",
            help="With --certificate-chain: the signer's name (CN, e-mail or URI) to require.",
        ),
    ] = None,
    signature: SignatureOpt = None,
    ignore: IgnoreOpt = None,
    json_out: JsonOpt = False,
    show_progress: ProgressOpt = False,
) -> None:
    """Check a model folder against its OMS signature; exit 1 naming the failed check."""
    from veriml.models import verify_model, verify_model_certificate

    if (pubkey is None) == (not certificate_chain):
        raise typer.BadParameter("give either --pubkey or --certificate-chain")
    if identity is not None and pubkey is not None:
        raise typer.BadParameter(
            "--identity goes with --certificate-chain", param_hint="--identity"
        )
    bar = progress_bar("hashing", forced=show_progress)
    if pubkey is not None:
        with bar as progress:
            value = verify_model(
                model, pubkey, signature=signature, ignore=ignore or (), progress=progress
            )
        info: dict[str, object] = {"path": str(model), "digest": str(value), "verified": True}
        shown = f"verified {model} {value}"
    else:
        with bar as progress:
            certified = verify_model_certificate(
                model,
                certificate_chain or [],
                signature=signature,
                identity=identity,
                ignore=ignore or (),
                progress=progress,
            )
        info = {"path": str(model), "verified": True, **certified.to_json()}
        shown = f"verified {model} {certified.digest} signed by {certified.subject}"
    if json_out:
        print_json(info)
    else:
        console.print(escape(shown))


def _shape(spec: TensorSpec) -> str:
    if spec.shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"


@app.command("inspect")
def inspect(model: ModelDir, json_out: JsonOpt = False) -> None:
    """Validate a model folder (ONNX or GGUF) and show its digest, card and what it runs on:
    the IO signature and opsets of an ONNX graph, the architecture and context of a GGUF model."""
    from veriml.models import LLMPackage, load_package

    with err_console.status(f"validating and hashing {escape(str(model))}"):
        pkg = load_package(model)
    if json_out:
        print_json(pkg.to_json())
        return
    console.print(f"[bold]{escape(str(pkg.path))}[/]  {pkg.digest}")
    if isinstance(pkg, LLMPackage):
        info = pkg.metadata
        gguf_name = escape(str(pkg.gguf_path.relative_to(pkg.path)))
        console.print(
            f"gguf {gguf_name}  size {pkg.size:,} bytes  {escape(str(info.architecture))}  "
            f"context {info.context_length}  vocabulary {info.vocab_size}  "
            f"chat template {'yes' if pkg.chat_template else 'no'}",
            markup=False,
        )
        _print_card(pkg.card)
        return
    opsets = ", ".join(f"{domain} {version}" for domain, version in sorted(pkg.opsets.items()))
    onnx_name = escape(str(pkg.onnx_path.relative_to(pkg.path)))
    console.print(f"onnx {onnx_name}  size {pkg.size:,} bytes  opsets {escape(opsets)}")
    table = Table("", "name", "dtype", "shape", title="IO signature", title_justify="left")
    for kind, specs in (("input", pkg.io.inputs), ("output", pkg.io.outputs)):
        for spec in specs:
            table.add_row(kind, escape(spec.name), spec.dtype, escape(_shape(spec)))
    console.print(table)
    _print_card(pkg.card)


def _print_card(card: ModelCard | None) -> None:
    if card is None:
        console.print("no model card (README.md front matter)")
        return
    table = Table("field", "value", title="model card", title_justify="left")
    for field, value in card.to_json().items():
        shown = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
        table.add_row(escape(field), escape(shown))
    console.print(table)


def register(root: typer.Typer) -> None:
    """Add the ``model`` command group to the root app."""
    root.add_typer(app, name="model")
