"""Host header policy: DNS rebinding protection for loopback-bound servers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sitepeek.hosts import HostPolicy, is_loopback_address, split_host


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("localhost", "localhost"),
        ("LocalHost:8000", "localhost"),
        ("127.0.0.1:8000", "127.0.0.1"),
        ("[::1]:8000", "[::1]"),
        ("[::1]", "[::1]"),
        ("example.com.", "example.com"),
        ("", None),
        ("a:b", None),
        ("[::1", None),
        ("[::1]x", None),
        ("[::1]:x", None),
    ],
)
def test_split_host(value: str, expected: str | None) -> None:
    assert split_host(value) == expected


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost:8000", True),
        ("app.localhost:8000", True),  # RFC 6761 §6.3
        ("127.0.0.1:8000", True),
        ("127.1.2.3", True),
        ("[::1]:8000", True),
        ("evil.example:8000", False),  # the DNS rebinding shape
        ("localhost.evil.example", False),
        ("192.168.1.10:8000", False),
        ("", False),
        ("dev.test", True),  # --allowed-host dev.test
        ("a.shop.test", True),  # --allowed-host *.shop.test
        ("shop.test.evil", False),
    ],
)
def test_loopback_bound_server_answers_loopback_and_allowed_names(host: str, allowed: bool) -> None:
    policy = HostPolicy("127.0.0.1", allowed=["dev.test", "*.shop.test"])
    assert policy.allows(host) is allowed
    assert policy.allows(host) is allowed  # cached verdict is the same


def test_server_bound_to_all_interfaces_answers_any_host() -> None:
    policy = HostPolicy("0.0.0.0")
    assert not policy.enforced
    assert policy.allows("evil.example")


def test_bound_address_itself_is_allowed() -> None:
    assert HostPolicy("127.0.0.2").allows("127.0.0.2:9000")
    assert is_loopback_address("::1")
    assert not is_loopback_address("10.0.0.1")


@given(st.text(max_size=80))
def test_policy_never_raises(value: str) -> None:
    HostPolicy("127.0.0.1").allows(value)
