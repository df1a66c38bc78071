"""The coordinator's ledger: deposits, stake and unstake through signed requests, the state
folded from the log (live and from scratch at a size), the scheduling rule, stored tensors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from _coordinator import running_coordinator
from veriml.coordinator.auth import sign_request
from veriml.coordinator.ledger import LedgerBook, TensorStore
from veriml.core.digest import Digest
from veriml.core.keys import SigningKey, generate_key, load_private_key
from veriml.core.tensors import canonical_tensor_bytes, tensor_digest, tensor_from_canonical
from veriml.ledger.state import fold
from veriml.models.blobstore import BlobStore


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[tuple[str, FastAPI, SigningKey]]:
    home = tmp_path / "home"
    with running_coordinator(home, unstake_delay=120.0, min_stake=50) as (url, app):
        admin = load_private_key(home / "coordinator" / "coordinator.key")
        yield url, app, admin


def _post(url: str, path: str, body: dict[str, Any], key: SigningKey | None) -> httpx.Response:
    raw = json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers |= sign_request(key, "POST", path, raw)
    return httpx.post(url + path, content=raw, headers=headers)


def test_deposit_stake_unstake_fold_into_the_state(
    coordinator: tuple[str, FastAPI, SigningKey],
) -> None:
    url, app, admin = coordinator
    node = generate_key("ed25519")
    deposit = _post(url, "/v1/ledger/deposit", {"account": node.key_id, "amount": 300}, admin)
    assert deposit.status_code == 200, deposit.text
    assert deposit.json()["state"]["balance"] == 300
    staked = _post(url, "/v1/ledger/stake", {"amount": 200}, node)
    assert staked.status_code == 200, staked.text
    unstaked = _post(url, "/v1/ledger/unstake", {"amount": 50}, node)
    assert unstaked.status_code == 200, unstaked.text

    state = httpx.get(url + "/v1/ledger/state").json()
    account = state["accounts"][node.key_id]
    assert (account["balance"], account["stake"]) == (100, 150)
    assert [u["amount"] for u in account["unbonding"]] == [50]
    assert state["totals"]["minted"] == 300
    # The fold from scratch at the log's size is the live state, byte for byte.
    assert httpx.get(url + f"/v1/ledger/state?size={state['size']}").json() == state
    # And an auditor folding the log's entries gets the same digest.
    log = app.state.log
    assert fold(log.entries(0, log.size)).digest() == app.state.ledger.state().digest()
    book: LedgerBook = app.state.ledger
    assert book.schedulable(node.key_id)  # 150 >= min_stake 50
    assert not book.schedulable(generate_key("ed25519").key_id)


def test_ledger_requests_are_signed_by_the_right_key_and_checked_against_the_rules(
    coordinator: tuple[str, FastAPI, SigningKey],
) -> None:
    url, _, admin = coordinator
    stranger = generate_key("ed25519")
    refused = _post(url, "/v1/ledger/deposit", {"account": "x", "amount": 5}, stranger)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert _post(url, "/v1/ledger/stake", {"amount": 5}, None).status_code == 403
    overdraft = _post(url, "/v1/ledger/stake", {"amount": 5}, stranger)
    assert overdraft.status_code == 409, overdraft.text
    assert "ledger rule" in overdraft.json()["detail"]
    for body in ({"amount": 0}, {"amount": -1}, {"amount": True}, {"amount": "5"}, {"x": 1}):
        assert _post(url, "/v1/ledger/stake", body, stranger).status_code == 400, body
    bad_account = {"account": "", "amount": 5}
    assert _post(url, "/v1/ledger/deposit", bad_account, admin).status_code == 400
    # Nothing refused reached the log.
    assert httpx.get(url + "/v1/ledger/state").json()["accounts"] == {}
    assert httpx.get(url + "/v1/ledger/state?size=999").status_code == 404


def test_tensors_are_stored_by_digest_in_their_canonical_encoding(
    tmp_path: Path, coordinator: tuple[str, FastAPI, SigningKey]
) -> None:
    url, app, _ = coordinator
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    store: TensorStore = app.state.tensors
    digests = store.put({"x": x})
    assert digests == {"x": tensor_digest(x)}
    got = httpx.get(url + f"/v1/tensors/{digests['x'].to_text()}")
    assert got.status_code == 200
    assert Digest.of(got.content) == digests["x"]
    np.testing.assert_array_equal(tensor_from_canonical(got.content), x)
    assert httpx.get(url + f"/v1/tensors/{Digest.of(b'none').to_text()}").status_code == 404
    assert httpx.get(url + "/v1/tensors/not-a-digest").status_code == 400
    # A blob that is not a tensor (a model file, say) is not served as one.
    other = BlobStore(str(tmp_path / "home" / "coordinator" / "blobs")).put_bytes(b"weights")
    assert httpx.get(url + f"/v1/tensors/{other.to_text()}").status_code == 404
    assert canonical_tensor_bytes(x) == got.content
