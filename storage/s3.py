"""The blob store on S3-compatible object storage (AWS S3, MinIO, R2, Ceph, GCS interop), through boto3.

Chosen by `SELFSUP_BLOB_URL=s3://bucket/prefix`; the endpoint, credentials and region come from the standard AWS
variables (`AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`),
which boto3 reads itself. What each operation means here:

- `writer(key)`: the bytes stream into a multipart upload (parts of `part_size`; one PUT when they fit in one
  part). The object appears only when the upload completes; an exception aborts it, so nothing is left behind.
  Should the process die mid-upload, the unfinished multipart upload is invisible to readers and
  `sweep_orphans` aborts it once it is `older_than`.
- `staging_dir(prefix)`: a local scratch folder; on success every file is uploaded under its final key.
  S3 has no rename of a folder, so "the files appear together" means: each object appears whole, files in
  subfolders and large files go first, and the folder's completion markers (`meta.json`, `report.json`,
  which readers test for) go last. What makes a staged folder *exist* for selfsup is the database row the
  caller writes after the block (a checkpoint, a tokenized dataset), or that marker: a writer killed halfway
  leaves objects that no row names, which the next writer of the same prefix overwrites (datasets, held-out
  sets, curations: their content is a function of the key) or the resume removes (checkpoints). A failed
  upload removes what it had uploaded. Two writers of one prefix both upload equal bytes; the last one wins.
- `local_copy(prefix)`: a download into the machine's cache (`SELFSUP_CACHE_DIR`, `storage/cache.py`), fetched
  once per machine, verified, then reused; bounded by `SELFSUP_CACHE_MAX_BYTES`.
- Every file a staged folder uploads carries the sha256 computed before the upload (object metadata); its size
  and that sha256 are checked with a HEAD before the next file (and the completion markers) go up, so the
  caller records the folder (a checkpoint's row) only once the store verifiably holds all of it.
- `open_range`: a GET with a `Range` header, streamed.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from storage.blobs import BlobStoreUnavailable
from storage.cache import BlobCache

# boto3 says at INFO where it found credentials and the endpoint, once per client: noise in a worker's log.
logging.getLogger("botocore.credentials").setLevel(logging.WARNING)
logging.getLogger("botocore.configprovider").setLevel(logging.WARNING)
log = logging.getLogger("selfsup.storage")

CHUNK_SIZE = 1024 * 1024
PART_SIZE = 8 * 1024 * 1024  # S3's smallest part is 5 MiB (except the last)
# Uploaded last by `staging_dir`: readers take their presence to mean the folder is complete.
COMPLETION_MARKERS = ("meta.json", "report.json")
_MISSING = {"404", "NoSuchKey", "NotFound"}


def _is_missing(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _MISSING


def _check_key(key: str) -> str:
    if not key or key.startswith("/") or ".." in key.split("/"):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


class _MultipartWriter:
    """A write-only file whose bytes go to one object: parts as they fill, then complete (or abort).

    A full part is sent by a background thread while the caller goes on writing (the API writes from its event
    loop, which must not wait on S3 for every part); at most `IN_FLIGHT` parts wait, so memory stays bounded.
    """

    IN_FLIGHT = 2

    def __init__(self, client: Any, bucket: str, key: str, part_size: int) -> None:
        self.client, self.bucket, self.key, self.part_size = client, bucket, key, part_size
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.pending: list[Future[dict[str, Any]]] = []
        self.sender: ThreadPoolExecutor | None = None
        self.position = 0

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.buffer += data
        self.position += len(data)
        while len(self.buffer) >= self.part_size:
            self._send_part(bytes(self.buffer[: self.part_size]))
            del self.buffer[: self.part_size]
        return len(data)

    def tell(self) -> int:
        return self.position

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing to do: parts go out when full, the rest when the writer completes."""

    def _send_part(self, body: bytes) -> None:
        if self.upload_id is None:
            self.upload_id = self.client.create_multipart_upload(Bucket=self.bucket, Key=self.key)["UploadId"]
            self.sender = ThreadPoolExecutor(max_workers=self.IN_FLIGHT, thread_name_prefix="s3-part")
        assert self.sender is not None
        in_flight = [f for f in self.pending if not f.done()]
        if len(in_flight) >= self.IN_FLIGHT:
            in_flight[0].result()  # back-pressure: wait for the oldest part (and raise its error)
        number = len(self.pending) + 1
        self.pending.append(self.sender.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": answer["ETag"]}

    def complete(self) -> None:
        if self.upload_id is None:  # it fitted in one part: a single PUT
            self.client.put_object(Bucket=self.bucket, Key=self.key, Body=bytes(self.buffer))
            return
        if self.buffer:
            self._send_part(bytes(self.buffer))
        parts = [f.result() for f in self.pending]
        self._stop_sender()
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": parts}
        )

    def abort(self) -> None:
        self._stop_sender()
        if self.upload_id is not None:
            try:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
            except ClientError as exc:
                # Already gone (completed or aborted by a retried request): nothing is left to abort. Any other
                # refusal leaves the parts to the sweeper, which aborts stale multipart uploads.
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    log.warning("could not abort the multipart upload of %s: %s", self.key, exc)
            except BotoCoreError as exc:
                log.warning("could not abort the multipart upload of %s: %s", self.key, exc)

    def _stop_sender(self) -> None:
        if self.sender is not None:
            self.sender.shutdown(wait=True, cancel_futures=True)
            self.sender = None


class _ObjectReader(io.RawIOBase):
    """One object as a seekable raw stream: reads continue the current GET; a seek drops it, and the next read
    sends a GET with `Range: bytes=<position>-`."""

    def __init__(self, client: Any, bucket: str, object_key: str, body: Any, size: int) -> None:
        super().__init__()
        self.client, self.bucket, self.object_key = client, bucket, object_key
        self.body: Any = body
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        if base + offset != self.position:
            self._drop()
            self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        if self.position >= self.size:
            return 0
        if self.body is None:
            self.body = self.client.get_object(
                Bucket=self.bucket, Key=self.object_key, Range=f"bytes={self.position}-"
            )["Body"]
        data = self.body.read(len(buffer))
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)

    def _drop(self) -> None:
        if self.body is not None:
            self.body.close()
            self.body = None

    def close(self) -> None:
        self._drop()
        super().close()


def _upload_order(folder: Path) -> tuple[list[Path], list[Path]]:
    """The staged files to upload in any order (subfolders', then top-level ones), and the markers to upload last."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    markers = sorted(p for p in files if p.parent == folder and p.name in COMPLETION_MARKERS)
    rest = sorted((p for p in files if p not in markers), key=lambda p: (p.parent == folder, p.as_posix()))
    return rest, markers


class S3BlobStore:
    """Blobs as objects under `prefix` in `bucket`; local copies (for memory maps, loaders) kept by `cache`."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        *,
        cache: BlobCache,
        staging_root: Path | None = None,
        part_size: int = PART_SIZE,
        page_size: int = 1000,
        client: Any = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.cache = cache
        self.staging_root = staging_root
        self.part_size = part_size
        self.page_size = page_size  # keys per listing page and per DeleteObjects call (S3's most: 1000)
        # boto3 reads AWS_ENDPOINT_URL(_S3), the credentials and AWS_DEFAULT_REGION itself; AWS_REGION is
        # honoured here too, as the other AWS SDKs do.
        self.client = client or boto3.client(
            "s3",
            region_name=os.environ.get("AWS_REGION") or None,
            # SigV4 everywhere (presigned URLs too): what S3 requires in new regions, and R2 and MinIO expect.
            config=Config(
                signature_version="s3v4", retries={"mode": "standard", "max_attempts": 5}, max_pool_connections=32
            ),
        )

    def object_key(self, key: str) -> str:
        """The object's key in the bucket (the store's prefix, then `key`)."""
        _check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _store_key(self, object_key: str) -> str:
        return object_key[len(self.prefix) + 1 :] if self.prefix else object_key

    @contextmanager
    def writer(self, key: str) -> Iterator[BinaryIO]:
        """Stream into `key`; the object appears when the block exits without error, else nothing is kept."""
        out = _MultipartWriter(self.client, self.bucket, self.object_key(key), self.part_size)
        try:
            yield cast(BinaryIO, out)
            out.complete()
        except (BotoCoreError, ClientError) as exc:
            out.abort()
            raise BlobStoreUnavailable(f"the object store refused writing {key}: {exc}") from exc
        except BaseException:
            out.abort()
            raise

    def open(self, key: str) -> BinaryIO:
        """Read `key` from its start, streamed from a GET, and seekable (a seek starts a ranged GET there: readers
        peek at magic bytes and rewind); FileNotFoundError if it is not stored."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            raise BlobStoreUnavailable(f"the object store refused reading {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"the object store did not answer reading {key}: {exc}") from exc
        raw = _ObjectReader(self.client, self.bucket, self.object_key(key), answer["Body"], answer["ContentLength"])
        return cast(BinaryIO, io.BufferedReader(raw, buffer_size=CHUNK_SIZE))

    def open_range(
        self, key: str, start: int = 0, end: int | None = None, *, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """The bytes of `key` in [`start`, `end`) from one ranged GET, sent before the first chunk is asked for
        (so a missing key raises FileNotFoundError here)."""
        if end is not None and end <= start:
            self.open(key).close()  # still say whether it exists
            return iter(())
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if start > 0 or end is not None:
            request["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        try:
            body = self.client.get_object(**request)["Body"]
        except ClientError as exc:
            if _is_missing(exc):
                raise FileNotFoundError(key) from exc
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":  # starts past the end: nothing
                return iter(())
            raise BlobStoreUnavailable(f"the object store refused reading {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"the object store did not answer reading {key}: {exc}") from exc
        return _chunks(body, chunk_size)

    def exists(self, key: str) -> bool:
        """Whether `key` is stored (a HEAD)."""
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.object_key(key))
        except ClientError as exc:
            if _is_missing(exc):
                return False
            raise
        return True

    def _list(self, prefix: str, **extra: Any) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        yield from paginator.paginate(
            Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": self.page_size}, **extra
        )

    def list_children(self, prefix: str) -> list[str]:
        """The keys and sub-prefixes one level below `prefix`."""
        folder = self.object_key(prefix.rstrip("/")) + "/"
        children: set[str] = set()
        for page in self._list(folder, Delimiter="/"):
            children.update(self._store_key(p["Prefix"].rstrip("/")) for p in page.get("CommonPrefixes", []))
            children.update(self._store_key(o["Key"]) for o in page.get("Contents", []))
        return sorted(children)

    def _download(self, prefix: str, target: Path) -> None:
        """Everything under `prefix` into the folder `target`, or the object `prefix` into the file `target`."""
        folder = self.object_key(prefix) + "/"
        found = [o["Key"] for page in self._list(folder) for o in page.get("Contents", [])]
        if not found:
            try:
                self.client.download_file(self.bucket, self.object_key(prefix), str(target))
            except ClientError as exc:
                if _is_missing(exc):
                    raise FileNotFoundError(prefix) from exc
                raise
            return
        target.mkdir(parents=True)

        def fetch(object_key: str) -> None:
            local = target / object_key[len(folder) :]
            local.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(self.bucket, object_key, str(local))

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(fetch, found))

    def local_copy(self, prefix: str, *, verify: Callable[[Path], str | None] | None = None) -> Path:
        """A local file or folder with what is stored under `prefix`, downloaded into the cache once, checked by
        `verify` (see `BlobStore.local_copy`)."""
        prefix = prefix.rstrip("/")
        _check_key(prefix)
        return self.cache.get(prefix, lambda tmp: self._download(prefix, tmp), verify=verify)

    def _delete_keys(self, object_keys: list[str]) -> None:
        for i in range(0, len(object_keys), self.page_size):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in object_keys[i : i + self.page_size]]
            answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if answer.get("Errors"):
                raise OSError(f"could not delete {len(answer['Errors'])} objects, e.g. {answer['Errors'][0]}")

    def delete_prefix(self, prefix: str) -> None:
        """Remove the object `prefix` and every object under `prefix/`, a page of 1000 at a time."""
        prefix = prefix.rstrip("/")
        base = self.object_key(prefix)
        for page in self._list(base + "/"):
            self._delete_keys([o["Key"] for o in page.get("Contents", [])])
        self._delete_keys([base])  # deleting a missing key is no error on S3
        self.cache.evict(prefix)

    @contextmanager
    def staging_dir(self, prefix: str, *, before_rename: Callable[[], None] | None = None) -> Iterator[Path]:
        """A local scratch folder uploaded under `prefix` when the block succeeds (see the module docstring for
        what "together" means on S3); `before_rename` runs just before the upload starts."""
        prefix = prefix.rstrip("/")
        self.object_key(prefix)
        root = self.staging_root or self.cache.root / "staging"
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".tmp-{uuid.uuid4().hex[:8]}-", dir=root))
        uploaded: list[str] = []
        try:
            yield folder
            if before_rename is not None:
                before_rename()
            rest, markers = _upload_order(folder)

            def upload(path: Path) -> None:
                object_key = self.object_key(f"{prefix}/{path.relative_to(folder).as_posix()}")
                uploaded.append(object_key)
                size, digest = path.stat().st_size, _sha256(path)
                if size < self.part_size:  # one PUT: no transfer manager set up for a small file
                    with open(path, "rb") as fh:
                        self.client.put_object(Bucket=self.bucket, Key=object_key, Body=fh, Metadata={"sha256": digest})
                else:
                    self.client.upload_file(
                        str(path), self.bucket, object_key, ExtraArgs={"Metadata": {"sha256": digest}}
                    )
                self.check_uploaded(object_key, size=size, sha256=digest)

            try:
                with ThreadPoolExecutor(max_workers=8) as pool:
                    list(pool.map(upload, rest))
                for path in markers:
                    upload(path)
            except BaseException:
                self._delete_keys(uploaded)
                raise
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def check_uploaded(self, object_key: str, *, size: int, sha256: str) -> None:
        """Raise unless the store holds `object_key` with this size and the sha256 computed before the upload.

        A staged folder (a checkpoint) is recorded in the database only after every file passed this: the object
        is there, whole (its `ContentLength`), and the one this writer sent (its `sha256` metadata; the bytes
        themselves were checked on the way by the SDK's default CRC32 checksum, which the server verifies)."""
        head = self.client.head_object(Bucket=self.bucket, Key=object_key)
        stored = head.get("Metadata", {}).get("sha256")
        if head["ContentLength"] != size or stored != sha256:
            raise OSError(
                f"{self._store_key(object_key)} is stored with {head['ContentLength']} bytes and sha256 {stored}, "
                f"written with {size} bytes and sha256 {sha256}"
            )

    def sweep_orphans(self, prefix: str, *, older_than: float) -> list[str]:
        """Abort multipart uploads under `prefix` started more than `older_than` seconds ago (a writer that died).

        Finished objects are never orphans here: what a killed staging upload left is named by no row and is
        overwritten or removed by the next writer of its prefix (see the module docstring)."""
        cutoff = datetime.fromtimestamp(time.time() - older_than, tz=UTC)
        removed = []
        paginator = self.client.get_paginator("list_multipart_uploads")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.object_key(prefix.rstrip("/")) + "/"):
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as exc:
                    if str(exc.response.get("Error", {}).get("Code")) != "NoSuchUpload":
                        raise
                removed.append(self._store_key(upload["Key"]))
        return removed

    def presigned_url(self, key: str, *, expires: int, content_disposition: str | None = None) -> str | None:
        """A URL that GETs `key` without credentials for `expires` seconds (answered with `content_disposition`)."""
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": self.object_key(key)}
        if content_disposition is not None:
            params["ResponseContentDisposition"] = content_disposition
        return cast(str, self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK_SIZE), b""):
            digest.update(block)
    return digest.hexdigest()


def _chunks(body: Any, chunk_size: int) -> Iterator[bytes]:
    with body:
        yield from body.iter_chunks(chunk_size)
