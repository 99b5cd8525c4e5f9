"""The synchronous client: `Client`, with `corpora`, `jobs`, `checkpoints` and `labelled_sets`."""

from __future__ import annotations

import builtins
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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


class Client:
    """The selfsup API. `url` and `api_key` default to `SELFSUP_URL` and `SELFSUP_API_KEY`.

    Transient failures (connection refused, 429, 502/503/504) are retried `max_retries` times with
    backoff, honouring `Retry-After`; a request that may have done its work is retried only when
    repeating it is safe. `transport` is passed to httpx (a proxy, a test's wrapper).
    """

    def __init__(
        self,
        url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        max_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.api_key = resolve_settings(url, api_key)
        self.retry = RetryPolicy(max_retries=max_retries)
        self._http = httpx.Client(
            base_url=self.url, headers=default_headers(self.api_key), timeout=timeout, transport=transport
        )
        self.corpora = Corpora(self)
        self.jobs = Jobs(self)
        self.checkpoints = Checkpoints(self)
        self.labelled_sets = LabelledSets(self)

    def request(
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
                response = self._http.request(
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
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.is_success:
                return response
            if retry and self.retry.retry_response(attempt, response, idempotent=idempotent):
                time.sleep(self.retry.delay(attempt, response))
                attempt += 1
                continue
            raise error_from_response(response)

    @contextmanager
    def stream(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Iterator[httpx.Response]:
        """A response whose body is read as it arrives; connecting is retried like `request`."""
        attempt = 0
        while True:
            try:
                response = self._http.send(
                    self._http.build_request(method, path, headers=headers, params=params), stream=True
                )
            except httpx.TransportError as exc:
                if not self.retry.retry_exception(attempt, exc, idempotent=True):
                    raise connection_failed(self.url, exc) from exc
                time.sleep(self.retry.delay(attempt))
                attempt += 1
                continue
            if response.is_success:
                break
            response.read()
            response.close()
            if not self.retry.retry_response(attempt, response, idempotent=True):
                raise error_from_response(response)
            time.sleep(self.retry.delay(attempt, response))
            attempt += 1
        try:
            yield response
        finally:
            response.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Corpora:
    """`/v1/corpora`: upload, list, read, wait for and delete corpora."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        name: str | None = None,
        content_type: str | None = None,
        progress: bool = False,
        wait: bool = False,
    ) -> Corpus:
        """Upload a `.txt` or `.jsonl` file (maybe gzipped), from a path or an open binary file.

        The format comes from `content_type`, else from the file's name. With `wait`, returns once ingest
        finished (`ready` or `failed`). Only a try that never reached the server is repeated, so a retry
        cannot create two corpora.
        """
        source = UploadSource.of(file)
        headers = {"Content-Type": content_type or content_type_for(source.name, name)}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        with TransferBar(progress, f"uploading {source.name or 'corpus'}", source.size) as bar:
            response = self._client.request(
                "POST",
                "/v1/corpora",
                params={"name": name or source.name},
                content=lambda: source.chunks(bar.set),
                headers=headers,
                idempotent=False,
                retry=source.rewindable,
            )
        corpus = Corpus.model_validate(response.json())
        return self.wait(corpus.id) if wait else corpus

    def list(self, *, limit: int = 50) -> Iterator[Corpus]:
        """Every corpus, newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self._client.request("GET", "/v1/corpora", params={"limit": limit, "cursor": cursor})
            items, cursor = parse_page(page, Corpus)
            yield from items
            if not cursor:
                return

    def get(self, corpus_id: str) -> Corpus:
        """One corpus."""
        return Corpus.model_validate(self._client.request("GET", f"/v1/corpora/{path_segment(corpus_id)}").json())

    def delete(self, corpus_id: str) -> None:
        """Delete a corpus (409 `Conflict` while a queued or running job uses it)."""
        self._client.request("DELETE", f"/v1/corpora/{path_segment(corpus_id)}")

    def wait(self, corpus_id: str, *, timeout: float | None = None, poll_interval: float = 1.0) -> Corpus:
        """Poll until ingest finished (`ready` or `failed`); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            corpus = self.get(corpus_id)
            if corpus.status != "processing":
                return corpus
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"corpus {corpus_id} is still processing after {timeout} s")
            time.sleep(poll_interval)


class Jobs:
    """`/v1/jobs`: submit, list, follow, control jobs and read their metrics, events and checkpoints."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def create(self, spec: Mapping[str, Any], *, idempotency_key: str | None = None) -> Job:
        """Submit a job spec. Retried safely: the SDK sends an `Idempotency-Key` (one of its own if none given)."""
        key = idempotency_key or new_idempotency_key()
        response = self._client.request("POST", "/v1/jobs", json=dict(spec), headers={"Idempotency-Key": key})
        return Job.model_validate(response.json())

    def estimate(self, spec: Mapping[str, Any]) -> JobEstimate:
        """Parameters, tokens, FLOPs, tokens per parameter and an ETA for a spec, validated as `create` does;
        nothing is created."""
        response = self._client.request("POST", "/v1/jobs:estimate", json=dict(spec))
        return JobEstimate.model_validate(response.json())

    def list(self, *, status: str | None = None, limit: int = 50) -> Iterator[Job]:
        """Every job (with `status`, if given), newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self._client.request("GET", "/v1/jobs", params={"status": status, "limit": limit, "cursor": cursor})
            items, cursor = parse_page(page, Job)
            yield from items
            if not cursor:
                return

    def get(self, job_id: str) -> Job:
        """One job: status, step, latest metrics, ETA."""
        return Job.model_validate(self._client.request("GET", self._path(job_id)).json())

    def cancel(self, job_id: str) -> Job:
        """Cancel (a running job stops at its next step boundary); `Conflict` if it already finished."""
        return Job.model_validate(self._client.request("POST", self._path(job_id, "cancel")).json())

    def pause(self, job_id: str) -> Job:
        """Pause a queued or running job (it checkpoints and frees its worker)."""
        return Job.model_validate(self._client.request("POST", self._path(job_id, "pause")).json())

    def resume(self, job_id: str, *, devices: int | None = None) -> Job:
        """Resume a paused job (on `devices` devices from here on, if given: a job paused on N resumes on M)."""
        body = {"resources": {"devices": devices}} if devices is not None else None
        return Job.model_validate(self._client.request("POST", self._path(job_id, "resume"), json=body).json())

    def events(self, job_id: str, *, after_id: int | None = None) -> builtins.list[Event]:
        """The job's history, oldest first (after event `after_id`, if given)."""
        response = self._client.request("GET", self._path(job_id, "events"), params={"after_id": after_id})
        return [Event.model_validate(e) for e in response.json()["data"]]

    def metrics(
        self, job_id: str, *, name: str | None = None, after_step: int | None = None, limit: int | None = None
    ) -> builtins.list[MetricPoint]:
        """Recorded metric values, by step (only metric `name`, after step `after_step`, if given)."""
        params = {"name": name, "after_step": after_step, "limit": limit}
        response = self._client.request("GET", self._path(job_id, "metrics"), params=params)
        return [MetricPoint.model_validate(m) for m in response.json()["data"]]

    def probes(self, job_id: str) -> builtins.list[ProbeRun]:
        """The job's probe runs: each checkpoint's, and the random-init baseline's at step 0."""
        response = self._client.request("GET", self._path(job_id, "probes"))
        return [ProbeRun.model_validate(r) for r in response.json()["data"]]

    def checkpoints(self, job_id: str) -> builtins.list[Checkpoint]:
        """The job's checkpoints, oldest first."""
        response = self._client.request("GET", self._path(job_id, "checkpoints"))
        return [Checkpoint.model_validate(c) for c in response.json()["data"]]

    def wait(
        self, job_id: str, *, progress: bool = False, timeout: float | None = None, poll_interval: float = 1.0
    ) -> Job:
        """Poll until the job finished (succeeded, failed or cancelled) and return it; it does not raise on failure.

        `progress` shows a bar on stderr; TimeoutError after `timeout` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with JobProgress(enabled=progress) as bar:
            while True:
                job = self.get(job_id)
                bar.show_job(job)
                if job.finished:
                    return job
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"job {job_id} is still {job.status} after {timeout} s")
                time.sleep(poll_interval)

    def stream(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[StreamMessage]:
        """The job's live stream: `status`, `event`, `metric` messages, then `end` once it finished.

        A dropped connection is resumed with `Last-Event-ID`, so nothing is missed or repeated; gives up
        (`ConnectionFailed`) after the client's `max_retries` failures in a row.
        """
        policy, failures = self._client.retry, 0
        while True:
            try:
                with self._client.stream(
                    "GET", self._path(job_id, "stream"), headers=stream_headers(last_event_id)
                ) as response:
                    for sse in EventSource(response).iter_sse():
                        message = parse_message(sse)
                        if message is None:
                            continue
                        last_event_id, failures = message.id or last_event_id, 0
                        yield message
                        if message.event == "end":
                            return
            except httpx.TransportError as exc:  # the connection broke mid-stream
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, exc) from exc
            else:  # the server closed the stream before `end`
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, ConnectionError("the stream kept closing early"))
            time.sleep(policy.delay(failures))
            failures += 1

    @staticmethod
    def _path(job_id: str, *rest: str) -> str:
        return "/".join([f"/v1/jobs/{path_segment(job_id)}", *rest])


class Checkpoints:
    """`/v1/checkpoints`: read a checkpoint and download it, verified."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def get(self, checkpoint_id: str) -> Checkpoint:
        """One checkpoint: its step, version, aliases, metrics and files with their sha256."""
        response = self._client.request("GET", f"/v1/checkpoints/{path_segment(checkpoint_id)}")
        return Checkpoint.model_validate(response.json())

    def probe(
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
        response = self._client.request("POST", path, json={"probes": [dict(p) for p in probes]}, idempotent=False)
        return [ProbeRun.model_validate(r) for r in response.json()["data"]]

    def download(self, checkpoint_id: str, *, to: str | os.PathLike[str] | None = None, progress: bool = False) -> Path:
        """Download the checkpoint's Hugging Face folder to `to` (default `<job id>-v<version>`) and return it.

        Files are fetched one by one into a hidden folder next to `to`; a broken transfer resumes with
        `Range` where it stopped, in this call (retries) or in the next one. Every file's sha256 is
        checked; a file that does not match (a corrupt partial file) is fetched again from the start, and
        `ChecksumMismatch` is raised if it still does not. The folder appears at `to` only when complete.
        """
        checkpoint = self.get(checkpoint_id)
        target = Path(to) if to is not None else default_target(checkpoint)
        staging = prepare_staging(target, checkpoint)
        total = sum(f.size_bytes for f in checkpoint.files)
        with TransferBar(progress, f"downloading {checkpoint.id}", total) as bar:
            done = 0
            for entry in checkpoint.files:

                def report(n: int, offset: int = done) -> None:
                    bar.set(offset + n)

                self._fetch_verified(checkpoint, entry, local_path(staging, entry.name), report)
                done += entry.size_bytes
        finish_download(staging, target, checkpoint)
        return target

    def _fetch_verified(
        self, checkpoint: Checkpoint, entry: CheckpointFile, path: Path, on_progress: Callable[[int], None]
    ) -> None:
        for fresh in (False, True):
            if fresh or (path.exists() and (not path.is_file() or path.stat().st_size > entry.size_bytes)):
                remove_partial(path)
            self._fetch(checkpoint, entry, path, on_progress)
            if sha256_file(path) == entry.sha256:
                return
        raise ChecksumMismatch(
            f"{entry.name} of checkpoint {checkpoint.id} does not match its sha256 {entry.sha256} even when "
            "fetched whole; the stored checkpoint may be damaged"
        )

    def _fetch(
        self, checkpoint: Checkpoint, entry: CheckpointFile, path: Path, on_progress: Callable[[int], None]
    ) -> None:
        """Bring `path` to the file's full size, resuming from what is there, retrying broken transfers."""
        url = f"/v1/checkpoints/{path_segment(checkpoint.id)}/files/{path_segment(entry.name).replace('%2F', '/')}"
        path.parent.mkdir(parents=True, exist_ok=True)
        policy, failures = self._client.retry, 0
        while True:
            have = path.stat().st_size if path.exists() else 0
            on_progress(have)
            if have >= entry.size_bytes:
                return
            try:
                with self._client.stream("GET", url, headers=range_headers(have, entry.sha256)) as response:
                    start = resumed_from(response)
                    if start not in (0, have):  # not the range asked for: start over without one
                        remove_partial(path)
                        continue
                    with open(path, "r+b" if start else "wb") as out:
                        out.seek(start)
                        out.truncate()
                        for chunk in response.iter_bytes():
                            out.write(chunk)
                            on_progress(out.tell())
            except httpx.TransportError as exc:
                if failures >= policy.max_retries:
                    raise connection_failed(self._client.url, exc) from exc
                time.sleep(policy.delay(failures))
                failures += 1


class LabelledSets:
    """`/v1/labelled-sets`: upload, list, read and delete the labelled sets probes are fitted on."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def upload(self, file: str | os.PathLike[str] | BinaryIO, *, name: str | None = None) -> LabelledSet:
        """Upload a JSONL file of `{"text", "label"}` lines, from a path or an open binary file; it is validated
        at once (a bad line is a 422 that names it). Only a try that never reached the server is repeated."""
        source = UploadSource.of(file)
        headers = {"Content-Type": "application/jsonl"}
        if source.size is not None:
            headers["Content-Length"] = str(source.size)
        response = self._client.request(
            "POST",
            "/v1/labelled-sets",
            params={"name": name or source.name},
            content=lambda: source.chunks(lambda _: None),
            headers=headers,
            idempotent=False,
            retry=source.rewindable,
        )
        return LabelledSet.model_validate(response.json())

    def list(self, *, limit: int = 50) -> Iterator[LabelledSet]:
        """Every labelled set, newest first, fetched `limit` per page as the iteration goes."""
        cursor: str | None = None
        while True:
            page = self._client.request("GET", "/v1/labelled-sets", params={"limit": limit, "cursor": cursor})
            items, cursor = parse_page(page, LabelledSet)
            yield from items
            if not cursor:
                return

    def get(self, labelled_set_id: str) -> LabelledSet:
        """One labelled set: its examples and how many of each label."""
        response = self._client.request("GET", f"/v1/labelled-sets/{path_segment(labelled_set_id)}")
        return LabelledSet.model_validate(response.json())

    def delete(self, labelled_set_id: str) -> None:
        """Delete a labelled set."""
        self._client.request("DELETE", f"/v1/labelled-sets/{path_segment(labelled_set_id)}")
