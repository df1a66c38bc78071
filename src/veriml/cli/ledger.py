"""``veriml ledger state | stake | unstake | deposit``: the ledger through the SDK.

The state is the coordinator's fold of its log (docs/verification.md, "Ledger"); as shown here
it is the coordinator's claim, and ``veriml log audit --coordinator URL`` folds the log itself
and compares. Stake and unstake are signed with the account's key (its key id is the
account: an operator stakes with its operator key, and its stake answers for its nodes); a
deposit mints, so it is signed with the rules' admin key (the coordinator's).

    veriml ledger deposit OPERATOR_ID 100 --key coordinator/coordinator.key
    veriml ledger stake 60 --key operators/op-1/operator.key
    veriml ledger state --json
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from veriml.cli._common import JsonOpt, console, print_json
from veriml.cli.publish import CoordinatorOpt

if TYPE_CHECKING:
    from collections.abc import Mapping

    from veriml.core.keys import SigningKey

__all__ = ["app", "register"]

app = typer.Typer(
    name="ledger",
    help="The ledger: balances, stake, reputation and open disputes.",
    no_args_is_help=True,
)

AmountArg = Annotated[int, typer.Argument(min=1, help="A positive integer amount.")]
AccountKeyOpt = Annotated[
    Path,
    typer.Option(
        "--key",
        "-k",
        envvar="VERIML_CLIENT_KEY",
        help="The account's private key (an operator's operator.key, or a client key); its "
        "passphrase from VERIML_CLIENT_PASSPHRASE.",
    ),
]
AdminKeyOpt = Annotated[
    Path,
    typer.Option(
        "--key",
        "-k",
        envvar="VERIML_ADMIN_KEY",
        help="The coordinator's admin key (its coordinator.key); its passphrase from "
        "VERIML_KEY_PASSPHRASE, as the coordinator reads it.",
    ),
]


def _key(path: Path, passphrase_env: str) -> SigningKey:
    from veriml.cli.key import read_passphrase
    from veriml.core.keys import load_private_key

    return load_private_key(path, passphrase=read_passphrase(passphrase_env, optional=True))


def _unbonding(account: Mapping[str, Any]) -> int:
    items = account.get("unbonding") or []
    return sum(int(u.get("amount", 0)) for u in items if isinstance(u, dict))


def _show_state(state: Mapping[str, Any]) -> None:
    from rich.table import Table

    accounts: Mapping[str, Any] = state.get("accounts") or {}
    table = Table(show_header=True, header_style="bold", title="accounts")
    columns = ("account", "balance", "stake", "unbonding", "reputation", "jobs", "slashes")
    table.add_column("account", overflow="fold")  # folded, never cut: ids are copied from here
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for account_id, account in sorted(accounts.items()):
        table.add_row(
            account_id,
            str(account.get("balance", 0)),
            str(account.get("stake", 0)),
            str(_unbonding(account)),
            str(account.get("reputation", 0)),
            str(account.get("jobs", 0)),
            str(account.get("slashes", 0)),
        )
    console.print(table)
    disputes: Mapping[str, Any] = state.get("disputes") or {}
    if disputes:
        open_table = Table(show_header=True, header_style="bold", title="open disputes")
        for column in ("dispute", "inference", "defendant", "challenger", "bond", "opened"):
            open_table.add_column(column, overflow="fold")
        for dispute_id, d in sorted(disputes.items()):
            open_table.add_row(
                dispute_id,
                str(d.get("inference", "")),
                str(d.get("defendant", "")),
                str(d.get("challenger", "")),
                str(d.get("bond", 0)),
                str(d.get("opened_at", "")),
            )
        console.print(open_table)
    totals: Mapping[str, Any] = state.get("totals") or {}
    shown = ", ".join(f"{name} {value}" for name, value in totals.items())
    console.print(
        f"ledger at log size {state.get('size')}: {len(accounts)} account(s), "
        f"{len(disputes)} open dispute(s)" + (f"; totals: {shown}" if shown else ""),
        markup=False,
    )


def _show_move(what: str, answer: Mapping[str, Any]) -> None:
    account: Mapping[str, Any] = answer.get("state") or {}
    console.print(
        f"{what}: log entry {answer.get('log_index')}; account {answer.get('account', '')} "
        f"balance {account.get('balance', 0)}, stake {account.get('stake', 0)}, "
        f"unbonding {_unbonding(account)}",
        markup=False,
    )


@app.command("state")
def state(
    coordinator: CoordinatorOpt = None,
    size: Annotated[
        int | None,
        typer.Option(min=0, help="Fold only the first N log entries (what an auditor compares)."),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Show the ledger: accounts (balance, stake, unbonding, reputation, jobs, slashes) and
    open disputes, as the coordinator folded them from its log."""
    from veriml.client import Client

    with Client(coordinator, verify=False) as client:
        body = client.ledger_state(size)
    if json_out:
        print_json(body)
        return
    _show_state(body)


@app.command("stake")
def stake(
    amount: AmountArg,
    key: AccountKeyOpt,
    coordinator: CoordinatorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Move AMOUNT of the key's balance to its stake (an operator's nodes need it for jobs)."""
    _move("stake", amount, key, coordinator, json_out)


@app.command("unstake")
def unstake(
    amount: AmountArg,
    key: AccountKeyOpt,
    coordinator: CoordinatorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start unbonding AMOUNT of the key's stake: released after the coordinator's unstake
    delay, and slashable until then."""
    _move("unstake", amount, key, coordinator, json_out)


def _move(
    verb: Literal["stake", "unstake"],
    amount: int,
    key: Path,
    coordinator: str | None,
    json_out: bool,
) -> None:
    """Stake or unstake AMOUNT with the account of ``key`` and print what the ledger says."""
    from veriml.client import Client

    with Client(coordinator, verify=False, key=_key(key, "VERIML_CLIENT_PASSPHRASE")) as client:
        answer = client.stake(amount) if verb == "stake" else client.unstake(amount)
    if json_out:
        print_json(answer)
        return
    _show_move(f"staked {amount}" if verb == "stake" else f"unstaking {amount}", answer)


@app.command("deposit")
def deposit(
    account: Annotated[str, typer.Argument(help="The account credited (a key id).")],
    amount: AmountArg,
    key: AdminKeyOpt,
    memo: Annotated[str, typer.Option(help="A note recorded in the deposit entry.")] = "",
    coordinator: CoordinatorOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Mint AMOUNT to ACCOUNT (signed with the coordinator's admin key)."""
    from veriml.client import Client

    admin = _key(key, "VERIML_KEY_PASSPHRASE")
    with Client(coordinator, verify=False) as client:
        answer = client.deposit(account, amount, admin, memo=memo)
    if json_out:
        print_json(answer)
        return
    _show_move(f"deposited {amount}", answer)


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="ledger")
