"""Tokenized datasets, recorded once per key."""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.tables import (
    TokenizedDataset,
)


def get_dataset(*, session: Session, key: str) -> TokenizedDataset | None:
    """A stored tokenization, if this (corpora, tokenizer) pair was tokenized before."""
    return session.get(TokenizedDataset, key)


def add_dataset(*, session: Session, dataset: TokenizedDataset) -> TokenizedDataset:
    """Record a tokenization; if another worker recorded the same key first, return theirs."""
    try:
        with session.begin_nested():
            session.add(dataset)
        return dataset
    except IntegrityError:
        existing = session.get(TokenizedDataset, dataset.key)
        assert existing is not None
        return existing
