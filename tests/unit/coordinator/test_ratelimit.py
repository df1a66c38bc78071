"""Rate limits: which routes count, whose budget a request spends, what a refusal says."""

from __future__ import annotations

import base64
import json
from ipaddress import ip_network
from typing import Any

import pytest
from limits import parse, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage

from veriml.coordinator.ratelimit import RateLimitedError, RateLimits, _account, family_of
from veriml.coordinator.settings import RATE_LIMIT_FAMILIES, Settings
from veriml.core.errors import FormatError
from veriml.core.keys import generate_key


def _limits(text: str = "2/minute", **options: Any) -> RateLimits:
    families = dict.fromkeys(RATE_LIMIT_FAMILIES, tuple(parse_many(text)))
    return RateLimits(families=families, storage=MemoryStorage(), **options)


@pytest.mark.parametrize(
    ("method", "path", "family"),
    [
        ("POST", "/v1/nodes", "register"),
        ("POST", "/v1/nodes/sha256:ab/heartbeat", "heartbeat"),
        ("POST", "/v1/models", "publish"),
        ("POST", "/v1/inferences", "inference"),
        ("POST", "/v1/chat/completions", "inference"),
        ("POST", "/v1/completions", "inference"),
        ("POST", "/v1/embeddings", "inference"),
        ("POST", "/v1/disputes", "dispute"),
        ("POST", "/v1/disputes/d-1/reveal", "dispute"),
        ("POST", "/v1/disputes/d-1/tensors", "dispute"),
        ("POST", "/v1/ledger/stake", "ledger"),
        ("GET", "/v1/ledger/state", "ledger"),
        ("GET", "/v1/nodes", None),
        ("GET", "/v1/inferences/abc", None),
        ("GET", "/v1/ledger/rules", None),
        ("GET", "/log/checkpoint", None),
        ("POST", "/v1/nodes/x/y/heartbeat", None),
        ("POST", "/v1/inferencesx", None),
    ],
)
def test_every_mutating_or_expensive_route_has_a_family_and_reads_have_none(
    method: str, path: str, family: str | None
) -> None:
    assert family_of(method, path) == family


def test_each_family_has_a_setting_with_a_default_that_parses() -> None:
    limits = Settings().rate_limits()
    assert set(limits) == set(RATE_LIMIT_FAMILIES)
    assert all(limits.values())


@pytest.mark.parametrize(
    ("client", "bucket"),
    [
        (("203.0.113.7", 1), ("203.0.113.7", False)),
        (("::ffff:203.0.113.7", 1), ("203.0.113.7", False)),  # an IPv4 client on a v6 socket
        (("2001:db8:1:2:aaaa::1", 1), ("2001:db8:1:2::/64", False)),  # a host's whole /64
        (("2001:db8:1:2:bbbb::9", 1), ("2001:db8:1:2::/64", False)),
        (("127.0.0.1", 1), ("127.0.0.1", True)),
        (("::1", 1), ("::/64", True)),
        (("testclient", 1), ("local", True)),  # not an IP: an in-process client
        (None, ("local", True)),  # a Unix socket
        (("10.1.2.3", 1), None),  # exempt
    ],
)
def test_a_client_counts_against_its_address_its_v6_prefix_or_nothing_when_exempt(
    client: tuple[str, int] | None, bucket: tuple[str, bool] | None
) -> None:
    limits = _limits(exempt=(ip_network("10.0.0.0/8"),))
    assert limits.address(client) == bucket


def test_past_its_budget_a_request_is_refused_with_the_seconds_to_wait() -> None:
    limits = _limits("2/minute")
    limits.hit("inference", "address", "203.0.113.7")
    limits.hit("inference", "address", "203.0.113.7")
    with pytest.raises(RateLimitedError) as caught:
        limits.hit("inference", "address", "203.0.113.7")
    evidence = caught.value.evidence
    assert (evidence["family"], evidence["scope"], evidence["limit"]) == (
        "inference",
        "address",
        "2 per 1 minute",
    )
    assert 1 <= caught.value.retry_after <= 120
    limits.hit("inference", "address", "203.0.113.8")  # another address has its own budget
    limits.hit("publish", "address", "203.0.113.7")  # and another family


def test_every_window_must_have_room_and_a_refusal_counts_nothing() -> None:
    limits = _limits("1/second;3/hour")
    limits.hit("ledger", "key", "k")
    with pytest.raises(RateLimitedError, match="1 per 1 second"):
        limits.hit("ledger", "key", "k")
    # The refused hit was not counted in the hourly window: two more are left there.
    assert limits._limiter.get_window_stats(parse("3/hour"), "ledger", "key", "k").remaining == 2


def test_local_clients_get_the_local_factor_times_the_budget() -> None:
    limits = _limits("1/minute", local_factor=3)
    for _ in range(3):
        limits.hit("register", "address", "local", local=True)
    with pytest.raises(RateLimitedError):
        limits.hit("register", "address", "local", local=True)


def test_a_tested_key_spends_nothing_until_it_is_counted() -> None:
    limits = _limits("1/minute")
    for _ in range(5):  # forged requests naming the key: tested, never counted
        limits.test("inference", "key", "sha256:victim")
    limits.count("inference", "key", "sha256:victim")  # the victim's own answered request
    with pytest.raises(RateLimitedError):
        limits.test("inference", "key", "sha256:victim")


def test_a_family_set_to_zero_is_not_limited() -> None:
    settings = Settings(rate_limit_inference="0", rate_limit_register="off")
    limits = RateLimits(families=settings.rate_limits(), storage=MemoryStorage())
    assert limits.limits("inference") == ()
    assert limits.limits("register") == ()
    for _ in range(100):
        limits.hit("inference", "address", "x")


class _Unreachable(MemoryStorage):
    def get(self, key: str) -> int:
        raise StorageError(ConnectionError("redis down"))


def test_a_storage_that_cannot_be_reached_lets_requests_through() -> None:
    limits = RateLimits(
        families={"inference": tuple(parse_many("1/minute"))}, storage=_Unreachable()
    )
    for _ in range(3):
        limits.hit("inference", "address", "x")


def test_settings_read_limits_from_the_environment_and_refuse_nonsense() -> None:
    env = {
        "VERIML_RATE_LIMIT_INFERENCE": "10/second;100/minute",
        "VERIML_RATE_LIMIT_EXEMPT": "127.0.0.0/8, ::1",
        "VERIML_RATE_LIMIT_LOCAL_FACTOR": "1",
    }
    settings = Settings.from_env(env)
    assert [str(i) for i in settings.rate_limits()["inference"]] == [
        "10 per 1 second",
        "100 per 1 minute",
    ]
    assert settings.rate_limit_networks() == (ip_network("127.0.0.0/8"), ip_network("::1"))
    for bad in (
        {"rate_limit_publish": "lots"},
        {"rate_limit_publish": "0/minute"},
        {"rate_limit_exempt": ("localhost",)},
        {"rate_limit_local_factor": 0},
        {"rate_limit_storage": "sqlite:///x.db"},
        {"rate_limit_storage": "async+memory://"},
    ):
        with pytest.raises(FormatError):
            Settings(**bad)


def test_a_ledger_request_s_budget_is_its_account_s() -> None:
    account = generate_key()
    payload = {"op": "stake", "public_key": account.public.to_pem().decode(), "amount": 1}
    body = {"payload": base64.b64encode(json.dumps(payload).encode()).decode()}
    assert _account(json.dumps(body).encode()) == account.key_id
    for junk in (b"{", b"[]", b'{"payload": "!!"}', json.dumps({"payload": "e30="}).encode()):
        assert _account(junk) is None
