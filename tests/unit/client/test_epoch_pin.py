"""The epoch a request names (``X-Veriml-Epoch``): the SDK's check of the answer's draw, and
the coordinator's choice of the epoch to draw from."""

from __future__ import annotations

import pytest

from veriml.client._requests import EPOCH_HEADER, check_epoch, epoch_header
from veriml.coordinator.inference.service import RequestDraws
from veriml.coordinator.nodes.beacon import Epoch
from veriml.core.errors import ConflictError, VerificationError
from veriml.protocol.draw import Draw

SECRET = bytes(32)


def test_an_answer_drawn_from_the_named_epoch_passes() -> None:
    check_epoch(Draw(7, SECRET), 7, own_id=True)
    check_epoch(None, None, own_id=True)  # nothing named (verify=False): nothing to check


@pytest.mark.parametrize("drew", [6, 8, None])
def test_a_fresh_request_drawn_from_any_other_epoch_fails(drew: int | None) -> None:
    # 8: an epoch begun after the id was seen (its key could be ground for the id); 6: the
    # older of two epochs, picked for its draw; None: no draw at all.
    draw = None if drew is None else Draw(drew, SECRET)
    with pytest.raises(VerificationError) as info:
        check_epoch(draw, 7, own_id=True)
    assert info.value.check == "epoch"
    assert info.value.evidence["named"] == 7


def test_a_callers_request_id_may_be_a_retry_answered_under_an_earlier_epoch() -> None:
    check_epoch(Draw(5, SECRET), 7, own_id=False)
    with pytest.raises(VerificationError):
        check_epoch(Draw(8, SECRET), 7, own_id=False)


def test_the_header_carries_the_epoch_only_when_named() -> None:
    assert epoch_header(None) == {}
    assert epoch_header(3) == {EPOCH_HEADER: "3"}


def test_the_coordinator_draws_from_the_named_epoch_or_refuses() -> None:
    epoch = Epoch(3, bytes(range(32)))
    draws = RequestDraws(beacon=lambda: epoch, ledger=None)
    assert draws.draw("r-1") == epoch.draw("r-1")
    assert draws.draw("r-1", 3) == epoch.draw("r-1")
    with pytest.raises(ConflictError) as info:
        draws.draw("r-1", 9)
    assert info.value.evidence["current_epoch"] == 3
