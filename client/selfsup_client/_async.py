"""The asynchronous client: `AsyncClient`, the same resources as `Client` with `async` methods."""

from __future__ import annotations

import asyncio
import builtins
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import httpx
from httpx_sse import EventSource

from selfsup_client._base import (
    connection_failed,
    default_headers,
    new_idempotency_key,
    parse_message,
    parse_page,
    path_segment,
    range_headers,
    resolve_settings,
    resumed_from,
    stream_headers,
)
from selfsup_client._files import (
    UploadSource,
    content_type_for,
    default_target,
    finish_download,
    local_path,
    prepare_staging,
    remove_partial,
    sha256_file,
)
from selfsup_client._progress import JobProgress, TransferBar
from selfsup_client._retry import RetryPolicy
from selfsup_client.errors import ChecksumMismatch, error_from_response
from selfsup_client.models import (
    Checkpoint,
    CheckpointFile,
    Corpus,
    Event,
    Job,
    JobEstimate,
    LabelledSet,
    MetricPoint,
    ProbeRun,
    StreamMessage,
)

Content = Callable[[], Any]


class AsyncClient:
    """The selfsup API for asyncio code; see `Client` for the settings and the retry rules."""

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_settings(url, api_key)
        self.retry = RetryPolicy(max_retries=max_retries)
        self._http = httpx.AsyncClient(
            base_url=self.url, headers=default_headers(self.api_key), timeout=timeout, transport=transport
        )
        self.corpora = AsyncCorpora(self)
        self.jobs = AsyncJobs(self)
        self.checkpoints = AsyncCheckpoints(self)
        self.labelled_sets = AsyncLabelledSets(self)

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json: Any = None,
        content: Content | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool = True,
        retry: bool = True,
    ) -> httpx.Response:
        """Send a request, retrying what is transient; an error answer raises its `APIError`."""
        attempt = 0
        while True:
            try:
                response = await self._http.request(
                    method,
                    path,
                    params={k: v for k, v in (params or {}).items() if v is not None},
                    json=json,
                    content=content() if content is not None else None,
                    headers=headers,
                )
            except httpx.TransportError as exc:
                if not (retry and self.retry.retry_exception(attempt, exc, idempotent=idempotent)):
                    raise connection_failed(self.url, exc) from exc
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.is_success:
                return response
            if retry and self.retry.retry_response(attempt, response, idempotent=idempotent):
                await asyncio.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            raise error_from_response(response)

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A response whose body is read as it arrives; connecting is retried like `request`."""
        attempt = 0
        while True:
            try:
                request = self._http.build_request(method, path, headers=headers, params=params)
                response = await self._http.send(request, stream=True)
            except httpx.TransportError as exc:
                if not self.retry.retry_exception(attempt, exc, idempotent=True):
                    raise connection_failed(self.url, exc) from exc
                await asyncio.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.is_success:
                break
            await response.aread()
            await response.aclose()
            if not self.retry.retry_response(attempt, response, idempotent=True):
                raise error_from_response(response)
            await asyncio.sleep(self.retry.delay(attempt, response))
            attempt += 1
        try:
            yield response
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def _aiter_chunks(source: UploadSource, on_progress: Callable[[int], None]) -> AsyncIterator[bytes]:
    for chunk in source.chunks(on_progress):
        yield chunk


class AsyncCorpora:
    """`/v1/corpora`: upload, list, read, wait for and delete corpora."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def upload(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: bool = False,
        wait: bool = False,
    ) -> Corpus:
        """Upload a `.txt` or `.jsonl` file (maybe gzipped); see `Corpora.upload`."""
        source = UploadSource.of(file)
        headers = {"Content-Type": content_type or content_type_for(source.name, name)}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        with TransferBar(progress, f"uploading {source.name or 'corpus'}", source.size) as bar:
            response = await self._client.request(
                "POST",
                "/v1/corpora",
                params={"name": name or source.name},
                content=lambda: _aiter_chunks(source, bar.set),
                headers=headers,
                idempotent=False,
                retry=source.rewindable,
            )
        corpus = Corpus.model_validate(response.json())
        return await self.wait(corpus.id) if wait else corpus

    async def list(self, *, limit: int = 50) -> AsyncIterator[Corpus]:
        """Every corpus, newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = await self._client.request("GET", "/v1/corpora", params={"limit": limit, "cursor": cursor})
            items, cursor = parse_page(page, Corpus)
            for item in items:
                yield item
            if not cursor:
                return

    async def get(self, corpus_id: str) -> Corpus:
        """One corpus."""
        response = await self._client.request("GET", f"/v1/corpora/{path_segment(corpus_id)}")
        return Corpus.model_validate(response.json())

    async def delete(self, corpus_id: str) -> None:
        """Delete a corpus (409 `Conflict` while a queued or running job uses it)."""
        await self._client.request("DELETE", f"/v1/corpora/{path_segment(corpus_id)}")

    async def wait(self, corpus_id: str, *, timeout: float | None = None, poll_interval: float = 1.0) -> Corpus:
        """Poll until ingest finished (`ready` or `failed`); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            corpus = await self.get(corpus_id)
            if corpus.status != "processing":
                return corpus
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"corpus {corpus_id} is still processing after {timeout} s")
            await asyncio.sleep(poll_interval)


class AsyncJobs:
    """`/v1/jobs`: submit, list, follow, control jobs and read their metrics, events and checkpoints."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec, retried safely through an `Idempotency-Key` (the SDK's own if none given)."""
        key = idempotency_key or new_idempotency_key()
        response = await self._client.request("POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": key})
        return Job.model_validate(response.json())

    async def estimate(self, spec: Mapping[str, Any]) -> JobEstimate:
        """Parameters, tokens, FLOPs, tokens per parameter and an ETA for a spec, validated as `create` does;
        nothing is created."""
        response = await self._client.request("POST", "/v1/jobs:estimate", json=dict(spec))
        return JobEstimate.model_validate(response.json())

    async def list(self, *, status: str | None = None, limit: int = 50) -> AsyncIterator[Job]:
        """Every job (with `status`, if given), newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            params = {"status": status, "limit": limit, "cursor": cursor}
            page = await self._client.request("GET", "/v1/jobs", params=params)
            items, cursor = parse_page(page, Job)
            for item in items:
                yield item
            if not cursor:
                return

    async def get(self, job_id: str) -> Job:
        """One job: status, step, latest metrics, ETA."""
        return Job.model_validate((await self._client.request("GET", self._path(job_id))).json())

    async def cancel(self, job_id: str) -> Job:
        """Cancel (a running job stops at its next step boundary); `Conflict` if it already finished."""
        return Job.model_validate((await self._client.request("POST", self._path(job_id, "cancel"))).json())

    async def pause(self, job_id: str) -> Job:
        """Pause a queued or running job (it checkpoints and frees its worker)."""
        return Job.model_validate((await self._client.request("POST", self._path(job_id, "pause"))).json())

    async def resume(self, job_id: str, *, devices: int | None = None) -> Job:
        """Resume a paused job (on `devices` devices from here on, if given: a job paused on N resumes on M)."""
        body = {"resources": {"devices": devices}} if devices is not None else None
        return Job.model_validate((await self._client.request("POST", self._path(job_id, "resume"), json=body)).json())

    async def events(self, job_id: str, *, after_id: int | None = None) -> builtins.list[Event]:
        """The job's history, oldest first (after event `after_id`, if given)."""
        response = await self._client.request("GET", self._path(job_id, "events"), params={"after_id": after_id})
        return [Event.model_validate(e) for e in response.json()["data"]]

    async def metrics(
        self, job_id: str, *, name: str | None = None, after_step: int | None = None, limit: int | None = None
    ) -> builtins.list[MetricPoint]:
        """Recorded metric values, by step (only metric `name`, after step `after_step`, if given)."""
        params = {"name": name, "after_step": after_step, "limit": limit}
        response = await self._client.request("GET", self._path(job_id, "metrics"), params=params)
        return [MetricPoint.model_validate(m) for m in response.json()["data"]]

    async def probes(self, job_id: str) -> builtins.list[ProbeRun]:
        """The job's probe runs: each checkpoint's, and the random-init baseline's at step 0."""
        response = await self._client.request("GET", self._path(job_id, "probes"))
        return [ProbeRun.model_validate(r) for r in response.json()["data"]]

    async def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The job's checkpoints, oldest first."""
        response = await self._client.request("GET", self._path(job_id, "checkpoints"))
        return [Checkpoint.model_validate(c) for c in response.json()["data"]]

    async def wait(
        self, job_id: str, *, progress: bool = False, timeout: float | None = None, poll_interval: float = 1.0
    ) -> Job:
        """Poll until the job finished and return it (it does not raise on failure); see `Jobs.wait`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobProgress(enabled=progress) as bar:
            while True:
                job = await self.get(job_id)
                bar.show_job(job)
                if job.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
                await asyncio.sleep(poll_interval)

    async def stream(self, job_id: str, *, last_event_id: str | None = None) -> AsyncIterator[StreamMessage]:
        """The job's live stream, reconnecting with `Last-Event-ID`; see `Jobs.stream`."""
        policy, failures = self._client.retry, 0
        while True:
            try:
                async with self._client.stream(
                    "GET", self._path(job_id, "stream"), headers=stream_headers(last_event_id)
                ) as response:
                    async for sse in EventSource(response).aiter_sse():
                        message = parse_message(sse)
                        if message is None:
                            continue
                        last_event_id, failures = message.id or last_event_id, 0
                        yield message
                        if message.event == "end":
                            return
            except httpx.TransportError as exc:
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, exc) from exc
            else:
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, ConnectionError("the stream kept closing early"))
            await asyncio.sleep(policy.delay(failures))
            failures += 1

    @staticmethod
    def _path(job_id: str, *rest: str) -> str:
        return "/".join([f"/v1/jobs/{path_segment(job_id)}", *rest])


class AsyncCheckpoints:
    """`/v1/checkpoints`: read a checkpoint and download it, verified."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def get(self, checkpoint_id: str) -> Checkpoint:
        """One checkpoint: its step, version, aliases, metrics and files with their sha256."""
        response = await self._client.request("GET", f"/v1/checkpoints/{path_segment(checkpoint_id)}")
        return Checkpoint.model_validate(response.json())

    async def probe(
        self,
        checkpoint_id: str,
        labelled_set_id: str | None = None,
        *,
        name: str | None = None,
        probes: Sequence[Mapping[str, Any]] | None = None,
    ) -> builtins.list[ProbeRun]:
        """Queue a linear probe of this checkpoint on a labelled set (its metric `probe_accuracy/<name>`), or
        several as the job spec's `probes` list; returns the queued runs (with the random-init baseline's at
        step 0 if the job has none of that name yet). Follow them with `jobs.probes(job_id)`."""
        if probes is None:
            if labelled_set_id is None or name is None:
                raise ValueError("give labelled_set_id and name, or probes")
            probes = [{"labelled_set_id": labelled_set_id, "name": name}]
        path = f"/v1/checkpoints/{path_segment(checkpoint_id)}/probes"
        response = await self._client.request(
            "POST", path, json={"probes": [dict(p) for p in probes]}, idempotent=False
        )
        return [ProbeRun.model_validate(r) for r in response.json()["data"]]

    async def download(
        self, checkpoint_id: str, *, to: str | os.PathLike[str] | None = None, progress: bool = False
    ) -> Path:
        """Download, resume and verify the checkpoint's folder; see `Checkpoints.download`."""
        checkpoint = await self.get(checkpoint_id)
        target = Path(to) if to is not None else default_target(checkpoint)
        staging = prepare_staging(target, checkpoint)
        total = sum(f.size_bytes for f in checkpoint.files)
        with TransferBar(progress, f"downloading {checkpoint.id}", total) as bar:
            done = 0
            for entry in checkpoint.files:
                path = local_path(staging, entry.name)

                def report(n: int, offset: int = done) -> None:
                    bar.set(offset + n)

                await self._fetch_verified(checkpoint, entry, path, report)
                done += entry.size_bytes
        finish_download(staging, target, checkpoint)
        return target

    async def _fetch_verified(
        self, checkpoint: Checkpoint, entry: CheckpointFile, path: Path, on_progress: Callable[[int], None]
    ) -> None:
        for fresh in (False, True):
            if fresh or (path.exists() and (not path.is_file() or path.stat().st_size > entry.size_bytes)):
                remove_partial(path)
            await self._fetch(checkpoint, entry, path, on_progress)
            if await asyncio.to_thread(sha256_file, path) == entry.sha256:
                return
        raise ChecksumMismatch(
            f"{entry.name} of checkpoint {checkpoint.id} does not match its sha256 {entry.sha256} even when "
            "fetched whole; the stored checkpoint may be damaged"
        )

    async def _fetch(
        self, checkpoint: Checkpoint, entry: CheckpointFile, path: Path, on_progress: Callable[[int], None]
    ) -> None:
        url = f"/v1/checkpoints/{path_segment(checkpoint.id)}/files/{path_segment(entry.name).replace('%2F', '/')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        policy, failures = self._client.retry, 0
        while True:
            have = path.stat().st_size if path.exists() else 0
            on_progress(have)
            if have >= entry.size_bytes:
                return
            try:
                async with self._client.stream("GET", url, headers=range_headers(have, entry.sha256)) as response:
                    start = resumed_from(response)
                    if start not in (0, have):
                        remove_partial(path)
                        continue
                    with open(path, "r+b" if start else "wb") as out:
                        out.seek(start)
                        out.truncate()
                        async for chunk in response.aiter_bytes():
                            out.write(chunk)
                            on_progress(out.tell())
            except httpx.TransportError as exc:
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, exc) from exc
                await asyncio.sleep(policy.delay(failures))
                failures += 1


class AsyncLabelledSets:
    """`/v1/labelled-sets`: upload, list, read and delete the labelled sets probes are fitted on."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client

    async def upload(self, file: str | os.PathLike[str] | BinaryIO, *, name: str | None = None) -> LabelledSet:
        """Upload a JSONL file of `{"text", "label"}` lines; see `LabelledSets.upload`."""
        source = UploadSource.of(file)
        headers = {"Content-Type": "application/jsonl"}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        response = await self._client.request(
            "POST",
            "/v1/labelled-sets",
            params={"name": name or source.name},
            content=lambda: _aiter_chunks(source, lambda _: None),
            headers=headers,
            idempotent=False,
            retry=source.rewindable,
        )
        return LabelledSet.model_validate(response.json())

    async def list(self, *, limit: int = 50) -> AsyncIterator[LabelledSet]:
        """Every labelled set, newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = await self._client.request("GET", "/v1/labelled-sets", params={"limit": limit, "cursor": cursor})
            items, cursor = parse_page(page, LabelledSet)
            for item in items:
                yield item
            if not cursor:
                return

    async def get(self, labelled_set_id: str) -> LabelledSet:
        """One labelled set: its examples and how many of each label."""
        response = await self._client.request("GET", f"/v1/labelled-sets/{path_segment(labelled_set_id)}")
        return LabelledSet.model_validate(response.json())

    async def delete(self, labelled_set_id: str) -> None:
        """Delete a labelled set."""
        await self._client.request("DELETE", f"/v1/labelled-sets/{path_segment(labelled_set_id)}")
