"""Where a webhook may be sent: http(s) URLs whose host resolves only to public addresses.

Server-side request forgery: a tenant's webhook URL must not make our workers call the cloud metadata
service (169.254.169.254), the database or anything else on the loopback or a private network. The URL is
checked when the webhook is created (a clear 422) and again at every attempt, because DNS can change: the
attempt then connects to the address it checked, not to a second lookup's answer (`Target.pinned_url`).
`SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS=true` lifts the address rule, for tests and private networks.

Hand-written on `ipaddress` because the libraries that do this wrap `requests` (advocate, unmaintained since
2020) rather than httpx, and the rule itself is a dozen lines of the standard library.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_URL_LENGTH = 2048
_DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeTarget(ValueError):
    """A webhook URL we will not call, with the reason a client can act on."""


@dataclass(frozen=True)
class Target:
    """A checked webhook URL and the address to connect to."""

    url: httpx.URL
    address: IPAddress

    @property
    def pinned_url(self) -> httpx.URL:
        """The URL with its host replaced by the checked address (send it with `host_header` and `sni_hostname`)."""
        return self.url.copy_with(host=str(self.address))

    @property
    def host_header(self) -> str:
        """The `Host` header the receiver expects: the URL's host, and port if not the default."""
        return self.url.netloc.decode("ascii")

    @property
    def sni_hostname(self) -> str:
        """The name TLS verifies the receiver's certificate against."""
        return self.url.host


def parse_webhook_url(raw: str) -> httpx.URL:
    """The URL if it is an absolute http(s) URL with a host and no credentials; UnsafeTarget saying what is wrong."""
    if len(raw) > MAX_URL_LENGTH:
        raise UnsafeTarget(f"the URL is {len(raw)} characters long; at most {MAX_URL_LENGTH} are allowed")
    try:
        url = httpx.URL(raw)
    except (httpx.InvalidURL, TypeError) as exc:
        raise UnsafeTarget(f"not a valid URL: {exc}") from exc
    if url.scheme not in _DEFAULT_PORTS:
        raise UnsafeTarget(f"the URL must start with http:// or https://, not {url.scheme or 'nothing'}")
    if not url.host:
        raise UnsafeTarget("the URL has no host")
    if url.userinfo:
        raise UnsafeTarget("the URL must not carry a user name or password; the signature authenticates us")
    return url


def forbidden_kind(address: IPAddress) -> str | None:
    """Why a private-targets-off deployment must not connect to `address` (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is the loopback too
    for kind, flagged in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("non-public", not address.is_global),  # e.g. 100.64.0.0/10, carrier-grade NAT
    ):
        if flagged:
            return kind
    return None


def resolve(url: httpx.URL) -> list[IPAddress]:
    """Every address the URL's host stands for; UnsafeTarget if it does not resolve."""
    try:
        return [ipaddress.ip_address(url.host)]
    except ValueError:
        pass
    port = url.port or _DEFAULT_PORTS[url.scheme]
    try:
        infos = socket.getaddrinfo(url.host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTarget(f"the host {url.host} does not resolve ({exc})") from exc
    # The scope of a link-local IPv6 address (`fe80::1%eth0`) does not matter to the check.
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    return list(dict.fromkeys(addresses))


def check_target(raw: str, *, allow_private: bool) -> Target:
    """The URL and the address to send to; UnsafeTarget if it is malformed, does not resolve, or (unless
    `allow_private`) any of its addresses is loopback, link-local, private, multicast, reserved or unspecified."""
    url = parse_webhook_url(raw)
    addresses = resolve(url)
    if not addresses:
        raise UnsafeTarget(f"the host {url.host} has no addresses")
    if not allow_private:
        for address in addresses:
            kind = forbidden_kind(address)
            if kind is not None:
                shown = url.host if _is_address(url.host) else f"{url.host} resolves to {address}, which"
                article = "an" if kind[0] in "aeiou" else "a"
                raise UnsafeTarget(
                    f"{shown} is {article} {kind} address: webhooks may only target public addresses "
                    "(an operator can allow private ones with SELFSUP_WEBHOOK_ALLOW_PRIVATE_TARGETS=true)"
                )
    return Target(url=url, address=addresses[0])


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
