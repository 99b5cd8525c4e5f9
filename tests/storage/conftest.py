"""A fresh SQLite database with every table, for the storage tests that work on rows directly."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session

from storage.db import make_engine
from storage.tables import Base


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    """A session on a new SQLite file (tables made from the models, not the migrations)."""
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    Base.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        yield session
    engine.dispose()
