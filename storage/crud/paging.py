"""Keyset paging, newest first, with opaque cursors."""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from datetime import datetime
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


def encode_cursor(row: Corpus | Dataset | Job | LabelledSet | Model | WebhookDelivery) -> str:
    """An opaque cursor pointing just after `row` in newest-first order."""
    raw = json.dumps([row.created_at.isoformat(), row.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The position a cursor names; ValueError when it is not one of ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, row_id = json.loads(raw)
        return datetime.fromisoformat(created), str(row_id)
    except (ValueError, TypeError) as exc:
        raise ValueError("cursor is not valid: pass the next_cursor value of a previous page") from exc


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
