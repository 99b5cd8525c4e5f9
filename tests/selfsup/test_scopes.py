"""Scope names, what each grants, and the durations `selfsup keys create --expires-in` takes."""

from __future__ import annotations

from datetime import timedelta

import pytest

from selfsup.scopes import Scope, grants, parse_duration, parse_scopes, scope_for_method


def test_scopes_are_parsed_once_each_in_order_from_repeats_and_lists() -> None:
    assert parse_scopes(["write", "read,write", " admin "]) == [Scope.READ, Scope.WRITE, Scope.ADMIN]
    assert parse_scopes([]) == []
    with pytest.raises(ValueError, match="unknown scope 'root', 'Read'"):
        parse_scopes(["root,Read"])


def test_admin_includes_write_which_includes_read() -> None:
    assert grants(["admin"], Scope.READ) and grants(["admin"], Scope.WRITE) and grants(["admin"], Scope.ADMIN)
    assert grants(["read"], Scope.READ) and not grants(["read"], Scope.WRITE) and not grants(["read"], Scope.ADMIN)
    assert grants(["write"], Scope.READ) and grants(["write"], Scope.WRITE) and not grants(["write"], Scope.ADMIN)
    assert not grants(["read", "write"], Scope.ADMIN)
    assert not grants(["root"], Scope.READ) and not grants([], Scope.READ)
    assert [scope_for_method(m) for m in ("GET", "head", "POST", "PUT", "PATCH", "DELETE")] == [
        Scope.READ,
        Scope.READ,
        *[Scope.WRITE] * 4,
    ]


def test_durations() -> None:
    assert parse_duration("90") == parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("15m") == timedelta(minutes=15) and parse_duration("12h") == timedelta(hours=12)
    assert parse_duration("30d") == timedelta(days=30) and parse_duration("2w") == timedelta(weeks=2)
    for bad in ("", "0d", "-1d", "soon", "1y", "1.5h"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
