"""Helpers the crud modules share."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import Session


def rowcount(session: Session, statement: Any) -> int:
    """Execute an UPDATE or DELETE and return how many rows it touched."""
    result: CursorResult[Any] = session.execute(statement)  # type: ignore[assignment]
    return result.rowcount
