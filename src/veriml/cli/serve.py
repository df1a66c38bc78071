"""``veriml coordinator serve`` and ``veriml node serve``: run one network service in the
foreground (``veriml serve coordinator|node`` is the old spelling, hidden, for one release).

``coordinator serve`` creates its keys under ``HOME/coordinator/`` on first start (0600) and
prints its URL, its job-signing key id and the log's verifier key (what clients pin); every
other setting comes from ``VERIML_*`` variables (see docs/coordinator.md). ``node serve``
runs a node (docs/node.md) that needs its coordinator's key (``--coordinator-key``), or
``--trust-coordinator-on-first-use`` to learn it once and pin it in the node's home. Both stop
cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from veriml.cli._common import JsonOpt, console, err_console, home_or_default, print_json

__all__ = ["register"]

coordinator_app = typer.Typer(help="Run a coordinator (hub, scheduler, log).", no_args_is_help=True)
node_app = typer.Typer(help="Run a node that executes signed jobs.", no_args_is_help=True)


def coordinator(
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            envvar="VERIML_HOME",
            help="State folder (keys, DB, blobs); default: the configured home (veriml config).",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", envvar="VERIML_COORDINATOR_HOST", help="Address to bind.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", envvar="VERIML_COORDINATOR_PORT", help="Port to bind.")
    ] = 8700,
    db: Annotated[
        str | None,
        typer.Option(
            "--db", envvar="VERIML_DB_URL", help="Database URL (default SQLite under HOME)."
        ),
    ] = None,
    blobs: Annotated[
        str | None,
        typer.Option("--blobs", envvar="VERIML_BLOBS_URL", help="Blob store (path or fsspec URL)."),
    ] = None,
    log_db: Annotated[
        str | None,
        typer.Option("--log-db", envvar="VERIML_LOG_DB_URL", help="Log database (default: --db)."),
    ] = None,
    log_origin: Annotated[
        str | None,
        typer.Option("--log-origin", envvar="VERIML_LOG_ORIGIN", help="Log checkpoint origin."),
    ] = None,
    allow_unsigned_publish: Annotated[
        bool | None,
        typer.Option(
            "--allow-unsigned-publish",
            envvar="VERIML_ALLOW_UNSIGNED_PUBLISH",
            help="UNSAFE outside development: register model folders that no publisher signed, "
            "as unsigned models (marked, no name: reachable by digest only).",
        ),
    ] = None,
    witness: Annotated[
        list[str] | None,
        typer.Option(
            "--witness",
            metavar="VKEY=URL",
            help="A witness that cosigns each checkpoint before it is published (repeatable; "
            "$VERIML_WITNESSES: comma- or space-separated).",
        ),
    ] = None,
    witness_quorum: Annotated[
        int | None,
        typer.Option(
            "--witness-quorum",
            min=0,
            envvar="VERIML_WITNESS_QUORUM",
            help="Cosignatures a checkpoint needs to be published (default: every witness).",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Run a coordinator: hub, node registry, inference and its transparency log."""
    import uvicorn

    from veriml.coordinator.app import create_app
    from veriml.coordinator.keys import load_or_create_keys
    from veriml.coordinator.settings import Settings

    settings = Settings.from_env(
        home=home_or_default(home),
        db_url=db,
        blobs_url=blobs,
        log_db_url=log_db,
        log_origin=log_origin,
        allow_unsigned_publish=allow_unsigned_publish or None,
        witnesses=tuple(witness) if witness else None,
        witness_quorum=witness_quorum,
    )
    passphrase = settings.key_passphrase.encode() if settings.key_passphrase else None
    keys = load_or_create_keys(settings.data_dir, origin=settings.log_origin, passphrase=passphrase)
    url = f"http://{host}:{port}"
    if json_out:
        print_json(
            {"url": url, "coordinator_key_id": keys.coordinator.key_id, "log_vkey": keys.log.vkey}
        )
    else:
        console.print(f"coordinator  {url}")
        console.print(f"key id       {keys.coordinator.key_id}")
        console.print(f"log vkey     {keys.log.vkey}")
        for key, _ in settings.witness_endpoints():
            console.print(f"witness      {key.vkey}")
    if settings.allow_unsigned_publish:
        err_console.print(
            "warning: unsigned publishing is on: models no publisher signed are registered "
            "(marked unsigned, reachable by digest only)",
            markup=False,
        )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host=host, port=port, log_level="warning", lifespan="on"
        )
    )
    server.run()


def node(
    coordinator_url: Annotated[
        str,
        typer.Option("--coordinator", envvar="VERIML_COORDINATOR_URL", help="Coordinator URL."),
    ],
    home: Annotated[
        Path,
        typer.Option("--home", envvar="VERIML_NODE_HOME", help="Node folder (model cache)."),
    ],
    operator_binding: Annotated[
        Path | None,
        typer.Option(
            "--operator-binding",
            envvar="VERIML_OPERATOR_BINDING",
            help="The operator's signed binding of this node (veriml operator bind).",
        ),
    ] = None,
    operator_key: Annotated[
        Path | None,
        typer.Option(
            "--operator-key",
            envvar="VERIML_OPERATOR_KEY",
            help="Or the operator's key: the node binds itself at start (passphrase: "
            "$VERIML_OPERATOR_PASSPHRASE).",
        ),
    ] = None,
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", envvar="VERIML_NODE_KEY", help="Ed25519 key (default HOME/node.key)."
        ),
    ] = None,
    coordinator_key: Annotated[
        Path | None,
        typer.Option(
            "--coordinator-key",
            envvar="VERIML_COORDINATOR_KEY",
            help="Coordinator public key PEM: the node runs only jobs this key signed.",
        ),
    ] = None,
    trust_on_first_use: Annotated[
        bool,
        # No environment variable on purpose, as for --byzantine: an unsafe choice is made on
        # the command line, never inherited (LocalNetwork passes its environment to nodes).
        typer.Option(
            "--trust-coordinator-on-first-use",
            help="UNSAFE: without --coordinator-key, believe the key the coordinator's "
            "/v1/info presents the first time (logged), pin it in HOME/coordinator.pub and "
            "refuse any other from then on.",
        ),
    ] = False,
    host: Annotated[
        str, typer.Option("--host", envvar="VERIML_NODE_HOST", help="Address to bind.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", envvar="VERIML_NODE_PORT", help="Port.")] = 8701,
    endpoint: Annotated[
        str | None,
        typer.Option(
            "--endpoint", envvar="VERIML_NODE_ENDPOINT", help="URL the coordinator calls."
        ),
    ] = None,
    concurrency: Annotated[
        int | None,
        typer.Option("--concurrency", envvar="VERIML_NODE_CONCURRENCY", help="Jobs at once."),
    ] = None,
    queue_length: Annotated[
        int, typer.Option("--queue", envvar="VERIML_NODE_QUEUE", help="Jobs waiting beyond.")
    ] = 64,
    heartbeat_interval: Annotated[
        float,
        typer.Option("--heartbeat", envvar="VERIML_HEARTBEAT_INTERVAL", help="Seconds."),
    ] = 5.0,
    trace_retention: Annotated[
        float,
        typer.Option(
            "--trace-retention",
            envvar="VERIML_TRACE_RETENTION",
            help="Seconds a trace is kept when its job names no retain_until.",
        ),
    ] = 3600.0,
    max_retention: Annotated[
        float,
        typer.Option(
            "--max-retention",
            envvar="VERIML_MAX_RETENTION",
            help="Longest retain_until (seconds past a job's expiry) a traced job may ask for.",
        ),
    ] = 7 * 86_400.0,
    job_timeout: Annotated[
        float,
        typer.Option("--job-timeout", envvar="VERIML_JOB_TIMEOUT", help="Seconds a job may run."),
    ] = 60.0,
    shutdown_grace: Annotated[
        float,
        typer.Option(
            "--shutdown-grace",
            envvar="VERIML_SHUTDOWN_GRACE",
            help="Seconds running jobs get to finish on SIGTERM/Ctrl-C.",
        ),
    ] = 30.0,
    threads: Annotated[
        int,
        typer.Option(
            "--threads",
            min=1,
            max=256,
            envvar="VERIML_NODE_THREADS",
            help="onnxruntime intra-op threads per job (recorded in every receipt).",
        ),
    ] = 1,
    llm_threads: Annotated[
        int,
        typer.Option(
            "--llm-threads",
            min=1,
            max=256,
            envvar="VERIML_NODE_LLM_THREADS",
            help="llama.cpp threads per LLM job (recorded in every completion receipt).",
        ),
    ] = 1,
    llm_ctx: Annotated[
        int,
        typer.Option(
            "--llm-ctx",
            min=64,
            envvar="VERIML_NODE_LLM_CTX",
            help="Context window (prompt plus completion tokens) GGUF models load with.",
        ),
    ] = 2048,
    byzantine: Annotated[
        str | None,
        # No environment variable on purpose: cheating is only ever asked for explicitly, never
        # inherited (LocalNetwork passes its environment to every node).
        typer.Option(
            "--byzantine",
            metavar="MODE",
            help="TESTS AND DEMOS ONLY: cheat on purpose in MODE (wrong-output, lazy, "
            "substitute, fp16, replay, impersonate, collude; docs/verification.md).",
        ),
    ] = None,
    relay: Annotated[
        str | None,
        typer.Option(
            "--relay",
            envvar="VERIML_RELAY_URL",
            metavar="URL",
            help="Relay LLM jobs to this OpenAI-compatible base URL (https://host/v1); "
            "receipts say attested-relay (docs/llm.md).",
        ),
    ] = None,
    relay_model: Annotated[
        str | None,
        typer.Option(
            "--relay-model",
            envvar="VERIML_RELAY_MODEL",
            metavar="NAME",
            help="The upstream's model id the relay serves (as relay:NAME).",
        ),
    ] = None,
    relay_key_env: Annotated[
        str | None,
        typer.Option(
            "--relay-key-env",
            envvar="VERIML_RELAY_KEY_ENV",
            metavar="VAR",
            help="Environment variable holding the upstream's API key (never logged).",
        ),
    ] = None,
) -> None:
    """Run a node: register with the coordinator, pull verified models, run signed jobs."""
    from veriml.node import BYZANTINE_MODES, PINNED_COORDINATOR_KEY, NodeConfig, serve_node

    if byzantine is not None and byzantine not in BYZANTINE_MODES:
        raise typer.BadParameter(
            f"{byzantine!r} is not one of {', '.join(BYZANTINE_MODES)}",
            param_hint="'--byzantine'",
        )

    if (operator_binding is None) == (operator_key is None):
        raise typer.BadParameter(
            "give the operator's binding of this node, or the operator's key (one of them)",
            param_hint="'--operator-binding' / '--operator-key'",
        )
    extra = {} if concurrency is None else {"concurrency": concurrency}
    first_use = coordinator_key is None and trust_on_first_use
    if first_use:  # checked like any key path; the key is learnt once the rest is valid
        coordinator_key = home / PINNED_COORDINATOR_KEY
    config = NodeConfig(
        coordinator_url=coordinator_url,
        key_path=key if key is not None else home / "node.key",
        operator_binding=operator_binding,
        operator_key=operator_key,
        home=home,
        host=host,
        port=port,
        endpoint=endpoint,
        coordinator_key=coordinator_key,
        queue_length=queue_length,
        heartbeat_interval=heartbeat_interval,
        trace_retention=trace_retention,
        max_retention=max_retention,
        job_timeout=job_timeout,
        shutdown_grace=shutdown_grace,
        threads=threads,
        llm_threads=llm_threads,
        llm_ctx=llm_ctx,
        byzantine=byzantine,
        relay_url=relay,
        relay_model=relay_model,
        relay_key_env=relay_key_env,
        **extra,  # type: ignore[arg-type]
    )
    if first_use:
        _learn_coordinator_key(config.coordinator, config.pinned_coordinator_key)
    console.print(f"node  http://{host}:{port}  -> {coordinator_url}")
    if byzantine is not None:
        console.print(f"BYZANTINE mode {byzantine}: this node cheats (tests and demos only)")
    if relay is not None:
        console.print(f"relay {relay_model} at {relay}: receipts are attested-relay (no re-run)")
    serve_node(config)


def _learn_coordinator_key(url: str, pin: Path) -> None:
    """Trust on first use (``learn_coordinator_key``): pin the key at ``pin``, or refuse a
    coordinator that presents another key than the pinned one (exit 1)."""
    import asyncio

    import httpx

    from veriml.node import learn_coordinator_key

    async def learn() -> None:
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0)) as client:
            await learn_coordinator_key(url, pin, client=client)

    asyncio.run(learn())


def register(root: typer.Typer) -> None:
    """Add ``coordinator serve``, ``node serve`` and the hidden old ``serve coordinator|node``."""
    coordinator_app.command("serve")(coordinator)
    node_app.command("serve")(node)
    root.add_typer(coordinator_app, name="coordinator")
    root.add_typer(node_app, name="node")
    legacy = typer.Typer(
        help="Old spelling of coordinator serve / node serve.", no_args_is_help=True
    )
    legacy.command("coordinator")(coordinator)
    legacy.command("node")(node)
    root.add_typer(legacy, name="serve", hidden=True)
