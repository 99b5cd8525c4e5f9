"""Scope names, what each grants, the durations `selfsup keys create --expires-in` takes, and the bootstrap key's
setting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from selfsup.scopes import Scope, grants, parse_duration, parse_scopes, scope_for_method
from selfsup.settings import Settings


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


def test_a_bootstrap_key_too_short_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValidationError, match="SELFSUP_BOOTSTRAP_ADMIN_KEY must be at least 32 characters") as error:
        Settings(bootstrap_admin_key="hunter2hunter2")
    assert "hunter2" not in str(error.value)
    assert Settings(bootstrap_admin_key="ss_" + "x" * 40).bootstrap_admin_key is not None
