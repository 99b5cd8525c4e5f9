"""Live job streams (`GET /v1/jobs/{id}/stream`): one shared database feed per streamed job, fanned out.

How a stream is fed. Each API process keeps at most one `JobFeed` per job that someone streams: a task
that every `SELFSUP_STREAM_POLL_SECONDS` reads, in one short transaction inside one of the process's
database slots, the job's row and its events and metrics written since its last read (ids above its
position), and hands that batch to every client streaming the job. So the database sees one small read
per streamed job per interval, however many clients follow it, and no connection is held between reads.
A client that connects (or reconnects with `Last-Event-ID`) first joins the feed, then catches up from
its own position with reads of its own (one, unless it is thousands of rows behind), and from then on
takes the feed's batches, skipping what its catch-up already sent. The feed stops when its last client
leaves or the job ends.

Why the database and not a Redis channel: the rows are the truth and already carry ids in write order
(events' ids; metrics' ids since migration 0004), so a reconnecting client's catch-up and the live feed
read the same thing and cannot disagree; publishing would add a second path that every writer (the
trainer, the API's cancel and pause, the reconciler) must remember, and a message published while no API
process listens is lost anyway, so a reconnect would still need the database. The price is up to one poll
interval of latency.

Message ids. An id is `<metric id>.<event id>.<status count>.<status>`: the last metric and event the
client has been sent, how many status (and end) messages it has been sent, and the status it last saw.
Each message raises exactly one of the three numbers, so ids strictly increase (as tuples of the three
numbers) in delivery order, and an id is all a reconnect needs: metrics and events after its ids, and a
status message only if the job's status now differs from the one it names. Clients treat ids as opaque.

Limits, documented rather than hidden. A status that changes and changes back between two reads (or
while a client is away) is not seen as a change. A metric value rewritten by a resumed job (steps
replayed after a crash) has a new id and is sent again with its new value: key metrics by (step, name).
On PostgreSQL two transactions writing events of one job at the same moment can commit out of id order;
a read between the two commits then moves past the earlier id. On SQLite writes are serialized, so this
cannot happen there.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from types import FrameType
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from fastapi.sse import ServerSentEvent
from pydantic import BaseModel
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from api.presenters import job_public
from api.schemas import EventPublic, JobPublic, MetricPoint
from selfsup.settings import get_settings
from storage import crud
from storage.db import session_scope
from storage.status import FINISHED_JOB_STATUSES, JobStatus

log = logging.getLogger("selfsup.api.streams")

T = TypeVar("T")

# Rows one read takes from each of the events and metrics tables; a client further behind reads again.
BATCH_ROWS = 2000
# Batches a client may have waiting; one that falls further behind is dropped and reconnects to catch up.
INBOX_BATCHES = 256

_ID = re.compile(r"(\d{1,18})\.(\d{1,18})\.(\d{1,9})\.([a-z]{1,16})")


class StreamIdError(ValueError):
    """A `Last-Event-ID` that this stream did not send."""


@dataclass(frozen=True)
class StreamPosition:
    """What a client has been sent; encoded, it is the id of the message that brought it there."""

    metric_id: int = 0
    event_id: int = 0
    status_count: int = 0
    status: JobStatus | None = None

    def encode(self) -> str:
        """The message id for this position."""
        return f"{self.metric_id}.{self.event_id}.{self.status_count}.{self.status}"

    @classmethod
    def decode(cls, text: str) -> StreamPosition:
        """The position an id names; `StreamIdError` if it is not an id this stream sends."""
        match = _ID.fullmatch(text.strip())
        if match is None or match[4] not in set(JobStatus):
            raise StreamIdError(
                f"{text[:100]!r} is not an id this stream sent: send the `id:` of the last message you "
                "received, or no Last-Event-ID to start from the beginning"
            )
        return cls(int(match[1]), int(match[2]), int(match[3]), JobStatus(match[4]))


@dataclass
class Batch:
    """One read of a job: its resource, then its events and metrics above a position, in id order."""

    job: JobPublic
    events: list[EventPublic]
    metrics: list[tuple[int, MetricPoint]]

    @property
    def complete(self) -> bool:
        """Whether the read took every row there was (none was left for a next read)."""
        return len(self.events) < BATCH_ROWS and len(self.metrics) < BATCH_ROWS

    def advance(self, metric_id: int, event_id: int) -> tuple[int, int]:
        """The (metric id, event id) position after this batch's rows, from the position it was read at."""
        return (self.metrics[-1][0] if self.metrics else metric_id, self.events[-1].id if self.events else event_id)


def read_batch(session: Session, job_id: str, *, after_metric_id: int, after_event_id: int) -> Batch:
    """Read a job and its rows after a position. The job is read first, so that when it has ended, every
    event and metric written before its ending is among the rows read after it."""
    job = crud.get_job_by_id(session=session, job_id=job_id)
    if job is None:  # deleted while streamed (its tenant went away); nothing more will come
        raise LookupError(job_id)
    resource = job_public(job)
    events = crud.events_after(session=session, job_id=job_id, after_id=after_event_id, limit=BATCH_ROWS)
    metrics = crud.metrics_after(session=session, job_id=job_id, after_id=after_metric_id, limit=BATCH_ROWS)
    return Batch(
        job=resource,
        events=[EventPublic(id=e.id, time=e.time, type=e.type, message=e.message) for e in events],
        metrics=[(m.id, MetricPoint(step=m.step, name=m.name, value=m.value, time=m.time)) for m in metrics],
    )


def _message(event: str, data: BaseModel, position: StreamPosition) -> ServerSentEvent:
    return ServerSentEvent(event=event, raw_data=data.model_dump_json(), id=position.encode())


@dataclass
class Delivery:
    """One client's side of a stream: turns batches into messages, skipping what it was already sent."""

    position: StreamPosition
    ended: bool = False

    def messages(self, batch: Batch) -> list[ServerSentEvent]:
        """The messages `batch` holds for this client, in order; `end` last once the job has ended."""
        out = []
        if self.position.status is None:  # a new client hears the job's status first
            out.append(self._status("status", batch.job))
        # Events and metrics interleaved by time; each table stays in id order, which is all ids need.
        rows: Iterator[tuple[Any, str, int, BaseModel]] = heapq.merge(
            ((m.time, "metric", i, m) for i, m in batch.metrics if i > self.position.metric_id),
            ((e.time, "event", e.id, e) for e in batch.events if e.id > self.position.event_id),
            key=lambda row: row[0],
        )
        for _, kind, row_id, data in rows:
            if kind == "metric":
                self.position = replace(self.position, metric_id=row_id)
            else:
                self.position = replace(self.position, event_id=row_id)
            out.append(_message(kind, data, self.position))
        if batch.job.status != self.position.status:
            out.append(self._status("status", batch.job))
        if batch.job.status in FINISHED_JOB_STATUSES and batch.complete:
            out.append(self._status("end", batch.job))
            self.ended = True
        return out

    def _status(self, event: str, job: JobPublic) -> ServerSentEvent:
        self.position = replace(
            self.position, status_count=self.position.status_count + 1, status=JobStatus(job.status)
        )
        return _message(event, job, self.position)


@dataclass(eq=False)
class JobFeed:
    """The one reader of a streamed job in this process, and the inboxes of the clients following it."""

    job_id: str
    inboxes: set[MemoryObjectSendStream[Batch]] = field(default_factory=set)
    ready: anyio.Event = field(default_factory=anyio.Event)
    closed: bool = False

    def close(self) -> None:
        """Stop handing out batches: every client's inbox ends (a client then ends its stream)."""
        self.closed = True
        self.ready.set()
        for inbox in self.inboxes:
            inbox.close()
        self.inboxes.clear()

    def hand_out(self, batch: Batch) -> None:
        """Give a batch to every client; a client too far behind loses its inbox (it reconnects)."""
        for inbox in list(self.inboxes):
            try:
                inbox.send_nowait(batch)
            except anyio.WouldBlock:
                log.warning("a client of %s fell %d batches behind; closing its stream", self.job_id, INBOX_BATCHES)
                inbox.close()
                self.inboxes.discard(inbox)
            except anyio.BrokenResourceError:  # the client left between two reads
                self.inboxes.discard(inbox)


class StreamHub:
    """This API process's job feeds: created by the first client of a job, gone with its last."""

    def __init__(self, database_slots: anyio.Semaphore, task_group: TaskGroup) -> None:
        self._slots = database_slots
        self._tasks = task_group
        self._feeds: dict[str, JobFeed] = {}
        self.shutting_down = False
        self.reads = 0  # feed and catch-up reads so far (logged at shutdown)

    async def read(self, work: Callable[[Session], T]) -> T:
        """Run `work` in one transaction, in a worker thread, inside one of the process's database slots.

        No 503 here: a stream has already answered 200, so under load its reads wait their turn."""
        async with self._slots:
            self.reads += 1
            return await run_in_threadpool(_unit_of_work, work)

    def shut_down(self) -> None:
        """The server is stopping: end every stream now (clients reconnect with Last-Event-ID elsewhere)."""
        if not self.shutting_down:
            log.info("ending %d job streams for shutdown (%d database reads served them)", len(self._feeds), self.reads)
        self.shutting_down = True
        for feed in list(self._feeds.values()):
            feed.close()
        self._feeds.clear()

    async def follow(
        self, job_id: str, *, finished: bool, start: StreamPosition | None
    ) -> AsyncIterator[ServerSentEvent]:
        """Every message of one client's stream, from `start` (None: from the beginning) to `end`.

        A job that had already ended when the request was authorized is replayed from the database alone."""
        delivery = Delivery(start or StreamPosition())
        if finished or self.shutting_down:
            async for message in self._catch_up(job_id, delivery):
                yield message
            return
        with self._joined(job_id) as (feed, inbox):
            await feed.ready.wait()  # rows written after the feed's start position reach the inbox
            async for message in self._catch_up(job_id, delivery):
                yield message
            if delivery.ended:
                return
            async for batch in inbox:
                for message in delivery.messages(batch):
                    yield message
                if delivery.ended:
                    return
        # The inbox ended without the job ending: shutdown, or this client fell behind. The client reconnects.

    async def _read_batch(self, job_id: str, metric_id: int, event_id: int) -> Batch:
        return await self.read(partial(read_batch, job_id=job_id, after_metric_id=metric_id, after_event_id=event_id))

    async def _catch_up(self, job_id: str, delivery: Delivery) -> AsyncIterator[ServerSentEvent]:
        """Messages from the client's position to what the database holds now, read a batch at a time."""
        while True:
            position = delivery.position
            try:
                batch = await self._read_batch(job_id, position.metric_id, position.event_id)
            except LookupError:  # the job was deleted with its tenant: the stream just ends
                return
            for message in delivery.messages(batch):
                yield message
            if delivery.ended or batch.complete:
                return

    @contextmanager
    def _joined(self, job_id: str) -> Iterator[tuple[JobFeed, MemoryObjectReceiveStream[Batch]]]:
        """An inbox on the job's feed (started if none runs), removed again on the way out."""
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = JobFeed(job_id)
            self._tasks.start_soon(self._run, feed, name=f"stream feed {job_id}")
        send, receive = anyio.create_memory_object_stream[Batch](INBOX_BATCHES)
        feed.inboxes.add(send)
        if self.shutting_down:
            feed.close()
        try:
            with receive:
                yield feed, receive
        finally:
            send.close()
            feed.inboxes.discard(send)
            if not feed.inboxes and not feed.closed:
                self._stop(feed)

    def _stop(self, feed: JobFeed) -> None:
        feed.close()
        if self._feeds.get(feed.job_id) is feed:
            del self._feeds[feed.job_id]

    async def _run(self, feed: JobFeed) -> None:
        """Read the job every poll interval and hand each batch to its clients, until none is left or it ends.

        It never raises: a failed read is logged and retried at the next interval (the clients wait), and
        however the feed ends, its clients' inboxes end with it."""
        interval = get_settings().stream_poll_seconds
        try:
            while not feed.ready.is_set():
                try:
                    metric_id, event_id = await self.read(
                        lambda s: crud.last_metric_and_event_ids(session=s, job_id=feed.job_id)
                    )
                except Exception:  # noqa: BLE001 - a database hiccup: the clients wait, the next read retries
                    log.exception("starting the stream feed of %s failed; retrying", feed.job_id)
                    await anyio.sleep(interval)
                else:
                    feed.ready.set()
            complete = True
            while not feed.closed:
                if complete:
                    await anyio.sleep(interval)
                    if feed.closed:
                        return
                try:
                    batch = await self._read_batch(feed.job_id, metric_id, event_id)
                except LookupError:  # the job was deleted with its tenant
                    return
                except Exception:  # noqa: BLE001 - as above: logged, and the next read retries
                    log.exception("reading %s for its stream failed; retrying", feed.job_id)
                    complete = True
                    continue
                metric_id, event_id = batch.advance(metric_id, event_id)
                feed.hand_out(batch)
                complete = batch.complete
                if complete and batch.job.status in FINISHED_JOB_STATUSES:
                    return
        finally:
            self._stop(feed)


def _unit_of_work(work: Callable[[Session], T]) -> T:
    with session_scope() as session:
        return work(session)


@contextmanager
def ending_streams_on_exit_signals(hub: StreamHub) -> Iterator[None]:
    """Make SIGINT and SIGTERM end every stream at once, then do what they did before.

    uvicorn waits (up to its graceful-shutdown timeout) for open responses to finish before it stops,
    and tells the application nothing until then; an endless stream would hold shutdown for the whole
    timeout. So the signal handler that the server installed is wrapped, for the application's lifetime.
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach only the main thread; whoever runs the app elsewhere ends it otherwise
        return
    loop = asyncio.get_running_loop()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handle(sig: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.shut_down)
        before = previous[signal.Signals(sig)]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:  # no server caught it: do what the signal does by default
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handle:
                signal.signal(sig, before)
