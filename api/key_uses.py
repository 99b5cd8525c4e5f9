"""When each API key was last used, kept in memory and written in batches: no database write per request.

Every authenticated request notes its key's id and the time here (a dictionary assignment under a lock). The
API's lifespan writes what was noted every `SELFSUP_KEY_LAST_USED_FLUSH_SECONDS` in one statement, and once
more when the API stops, so `last_used_at` is late by at most that interval (or lost for the last interval if
the process is killed). Each API process keeps its own; the statement never moves a time back.
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime

import anyio
from starlette.concurrency import run_in_threadpool

from storage import crud
from storage.db import session_scope

log = logging.getLogger("selfsup.api")


class KeyUses:
    """Key ids used since the last flush, each with its latest use."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._uses: dict[str, datetime] = {}

    def note(self, key_id: str, at: datetime) -> None:
        """Remember that `key_id` was used at `at` (called from request threads)."""
        with self._lock:
            previous = self._uses.get(key_id)
            if previous is None or previous < at:
                self._uses[key_id] = at

    def _take(self) -> dict[str, datetime]:
        with self._lock:
            uses, self._uses = self._uses, {}
        return uses

    def _put_back(self, uses: dict[str, datetime]) -> None:
        for key_id, at in uses.items():
            self.note(key_id, at)

    def flush(self) -> None:
        """Write the noted uses in one statement; kept for the next flush if the database refuses."""
        uses = self._take()
        if not uses:
            return
        try:
            with session_scope() as session:
                crud.record_api_key_uses(session=session, uses=uses)
        except Exception:  # noqa: BLE001 - a busy or restarting database: the times are kept and retried
            log.warning("could not record when %d API keys were last used; retrying next flush", len(uses))
            self._put_back(uses)

    async def flush_every(self, seconds: float, slots: anyio.Semaphore) -> None:
        """Flush every `seconds` until cancelled, each time inside a database slot (see api/deps.py)."""
        while True:
            await anyio.sleep(seconds)
            if self._uses:  # nothing used: no slot taken, no thread, no statement
                async with slots:
                    await run_in_threadpool(self.flush)
