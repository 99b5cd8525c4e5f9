"""API key scopes: what a key may do, read by the API (to authorize), the command line and storage.

- `read`: GET (and HEAD) requests: list and fetch corpora, datasets, models, jobs, checkpoints, events, streams.
- `write`: every other `/v1` request except key and tenant management: upload, create, control (cancel, pause,
  resume), estimate, run probes, delete. It includes `read` (a client that submits a job follows it).
- `admin`: manage the tenant's own keys (`/v1/keys`); an admin key of the operator tenant also manages tenants'
  quotas. `admin` includes `read` and `write`: a key that can mint keys of any scope is no weaker than they are,
  so it is not pretended to be.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from enum import StrEnum


class Scope(StrEnum):
    """One permission an API key carries."""

    READ = "read"
    WRITE = "write"
    ADMIN = "admin"


# What `selfsup keys create` and `POST /v1/keys` give a key when no scope is named; also what keys made before
# scopes existed were given by migration 0009 (they could do exactly this).
DEFAULT_SCOPES = (Scope.READ, Scope.WRITE)

# A scope on the left grants those on the right as well.
_IMPLIES: dict[Scope, frozenset[Scope]] = {
    Scope.READ: frozenset({Scope.READ}),
    Scope.WRITE: frozenset({Scope.READ, Scope.WRITE}),
    Scope.ADMIN: frozenset({Scope.READ, Scope.WRITE, Scope.ADMIN}),
}
SCOPE_NAMES = tuple(scope.value for scope in Scope)


def parse_scopes(values: Iterable[str]) -> list[Scope]:
    """Scope names (each may be a comma-separated list) as scopes, once each in a fixed order; ValueError
    naming the unknown ones."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in SCOPE_NAMES]
    if unknown:
        raise ValueError(f"unknown scope {', '.join(map(repr, unknown))}: choose from read, write, admin")
    given = set(names)
    return [scope for scope in Scope if scope.value in given]


def grants(scopes: Iterable[str], needed: Scope) -> bool:
    """Whether a key with `scopes` may do what needs `needed` (unknown names grant nothing)."""
    return any(needed in _IMPLIES.get(Scope(s), frozenset()) for s in scopes if s in SCOPE_NAMES)


def scope_for_method(method: str) -> Scope:
    """The scope an HTTP request method needs on the API: `read` for GET and HEAD, `write` for the rest."""
    return Scope.READ if method.upper() in ("GET", "HEAD") else Scope.WRITE


_DURATION = re.compile(r"\s*(\d+)\s*([smhdw]?)\s*")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> timedelta:
    """`90`, `90s`, `15m`, `12h`, `30d`, `2w` as a positive duration; ValueError saying the form otherwise."""
    match = _DURATION.fullmatch(text)
    if match is None or int(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a duration: write a positive number with s, m, h, d or w (e.g. 30d)")
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])
