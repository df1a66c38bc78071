"""``veriml chat``: ask an LLM on the network and verify its answer (docs/llm.md,
"OpenAI-compatible API").

The prompt goes through the coordinator's OpenAI-compatible API as one user message; the
answer is verified by the SDK (:meth:`veriml.Client.chat`) before the command reports success
(``--no-verify`` skips that, explicitly). With ``--stream`` the text is printed as it arrives
and verified when the stream ends: a stream that does not verify ends in an error, exit 1.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from veriml.cli._common import JsonOpt, console, err_console, print_json
from veriml.cli.infer import LogVkeyOpt
from veriml.cli.publish import CoordinatorOpt, SignKeyOpt, load_request_key

__all__ = ["register"]


def chat(
    model: Annotated[str, typer.Argument(help="Model: hub name, name@version or digest.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    policy: Annotated[
        str,
        typer.Option(
            envvar="VERIML_POLICY", help="none, quorum:N/K, spot:P or prefill (docs/llm.md)."
        ),
    ] = "none",
    system: Annotated[
        str | None, typer.Option("--system", help="A system message before the prompt.")
    ] = None,
    stream: Annotated[
        bool, typer.Option("--stream", help="Print the text as it is generated.")
    ] = False,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", min=1, help="Most tokens to generate.")
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", min=0.0, help="0 is greedy.")
    ] = None,
    top_p: Annotated[float | None, typer.Option("--top-p", min=0.0, max=1.0)] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Sampling seed (default: the node picks one).")
    ] = None,
    coordinator: CoordinatorOpt = None,
    log_vkey: LogVkeyOpt = None,
    verify: Annotated[
        bool, typer.Option("--verify/--no-verify", help="Verify the answer (default: yes).")
    ] = True,
    sign_key: SignKeyOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Ask MODEL one question under a policy; print the verified answer and its trust."""
    from veriml.client import ChatResult, Client, canonical_policy

    canonical_policy(policy)
    messages: list[dict[str, Any]] = []
    if system is not None:
        messages.append({"role": "system", "content": system})
    messages.append({"role": "user", "content": prompt})
    params: dict[str, Any] = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "top_p": top_p,
        "seed": seed,
    }
    request_key = load_request_key(sign_key)
    with Client(coordinator, log_vkey=log_vkey, verify=verify, key=request_key) as client:
        answer = client.chat(model, messages, policy=policy, stream=stream, **params)
        if isinstance(answer, ChatResult):
            result = answer
            if not json_out:
                console.print(result.text, markup=False)
        else:
            with answer:
                for piece in answer:
                    if not json_out:
                        sys.stdout.write(piece)
                        sys.stdout.flush()
            if not json_out:
                sys.stdout.write("\n")
            result = answer.result
    if json_out:
        print_json(result.to_json())
        return
    state = "verified" if result.verified else "NOT verified (--no-verify)"
    usage = result.usage
    err_console.print(
        f"{result.finish_reason}; {usage.get('prompt_tokens', '?')} prompt + "
        f"{usage.get('completion_tokens', '?')} completion tokens; {result.verdict.outcome} "
        f"under {result.policy} by {len(result.verdict.agreeing)} node(s); trust "
        f"{result.trust}; log entry {result.log_index}; {state}",
        markup=False,
    )
    for note in result.notes:
        err_console.print(f"note: {note}", markup=False)


def register(root: typer.Typer) -> None:
    root.command("chat")(chat)
