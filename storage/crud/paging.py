"""Keyset paging, newest first, with opaque cursors."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from storage.tables import (
    Corpus,
    Dataset,
    Job,
    LabelledSet,
    Model,
    WebhookDelivery,
)

Row = TypeVar("Row", Corpus, Dataset, Job, LabelledSet, Model, WebhookDelivery)


# A cursor is `<created_at in microseconds since the epoch>.<row id>`. Every string of this pattern names a
# position (the schema says so, and a fuzzer holds the API to it), so a cursor is refused only by its shape.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[A-Za-z0-9_-]{1,64}$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(row: Corpus | Dataset | Job | LabelledSet | Model | WebhookDelivery) -> str:
    """An opaque cursor pointing just after `row` in newest-first order."""
    return f"{(row.created_at - _EPOCH) // _MICROSECOND}.{row.id}"


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError when it is not one of ours."""
    if not re.fullmatch(CURSOR_PATTERN, cursor):
        raise ValueError("cursor is not valid: pass the next_cursor value of a previous page")
    micros, row_id = cursor.split(".", 1)
    return _EPOCH + int(micros) * _MICROSECOND, row_id


def page(
    session: Session, model: type[Row], filters: Sequence[Any], *, limit: int, cursor: str | None
) -> tuple[list[Row], str | None]:
    """A page of `model` rows matching `filters`, newest first, and the cursor of the next page."""
    query = select(model).where(*filters)
    if cursor:
        created, row_id = decode_cursor(cursor)
        query = query.where(or_(model.created_at < created, and_(model.created_at == created, model.id < row_id)))
    rows = list(session.scalars(query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor
