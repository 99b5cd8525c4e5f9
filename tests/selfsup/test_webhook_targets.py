"""Which webhook URLs may be called: http(s), public addresses only unless the operator allows private ones."""

from __future__ import annotations

import ipaddress

import pytest

from selfsup.webhook_targets import UnsafeTarget, check_target, forbidden_kind


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),  # IPv4-mapped IPv6 is the same host
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("fe80::1", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("240.0.0.1", "private"),  # reserved (240/4); the standard library lists it among the private ones
        ("100.64.0.1", "non-public"),  # carrier-grade NAT
        ("93.184.215.14", None),
        ("2606:4700::1111", None),
    ],
)
def test_forbidden_kinds_of_address(address: str, kind: str | None) -> None:
    assert forbidden_kind(ipaddress.ip_address(address)) == kind


def test_private_targets_are_refused_unless_allowed() -> None:
    for url in ("http://127.0.0.1:9/x", "http://[::1]/x", "http://localhost/x", "http://10.0.0.1/x"):
        with pytest.raises(UnsafeTarget, match="SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS"):
            check_target(url, allow_private=False)
        assert check_target(url, allow_private=True).url.host


def test_the_send_connects_to_the_checked_address_with_the_original_host() -> None:
    target = check_target("https://[::1]:8443/hooks?a=1", allow_private=True)
    assert str(target.pinned_url) == "https://[::1]:8443/hooks?a=1"
    assert target.host_header == "[::1]:8443" and target.sni_hostname == "::1"
    named = check_target("http://localhost:8080/h", allow_private=True)
    assert named.pinned_url.host == str(named.address) and named.host_header == "localhost:8080"
    assert named.sni_hostname == "localhost"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://93.184.215.14/", "http:// or https://"),
        ("93.184.215.14/hook", "http:// or https://"),
        ("http://user:pw@93.184.215.14/", "user name or password"),
        ("http://name.invalid/", "does not resolve"),
        ("http://93.184.215.14/" + "x" * 2048, "at most 2048"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(UnsafeTarget, match=says):
        check_target(url, allow_private=True)
