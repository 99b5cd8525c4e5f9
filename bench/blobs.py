"""Blob throughput, local folder and S3: upload through the API, read back, a fresh machine's checkpoint fetch.

    .venv/bin/python bench/blobs.py                 # a 1 GiB corpus, a 512 MiB checkpoint, both stores, 3 times
    .venv/bin/python bench/blobs.py --mb 64 --checkpoint-mb 32 --stores local --repeat 1   # a quick run

Each repetition runs every store once, odd repetitions in `--stores` order and even ones the other way round (a
drift of the machine's speed favours neither). For each store (`local`: a folder on this disk; `s3`: moto's S3
server started here on the loopback, its objects spilled to the same disk):

- **cp**: `cp` of the corpus file to the same disk and `sync` of the copy, timed right before this store's upload,
  after a `sync` of whatever was dirty (the yardstick; the API must reach half of it on `local`). This disk's `cp`
  rate swings from about 300 to 1,400 MB/s from one minute to the next, so each upload is compared with the `cp`
  next to it.
- **upload**: `POST /v1/corpora` of the corpus through a real `selfsup api` process (SQLite, this machine's Redis),
  streamed by `curl -T` (the README's way; `--client httpx`: httpx in 1 MiB chunks, a Python client that takes
  a good part of two cores itself); MB/s, the API process's CPU seconds for it (user + system, all its threads:
  what the load of other processes cannot change), and its peak RSS (`VmHWM`, must stay under 300 MB).
- **download**: the stored upload read back through the store's `open_range` in 1 MiB chunks, as the API streams a
  download; MB/s.
- **resume fetch**: a checkpoint folder (`model.safetensors` and `resume/trainer_state.pt` of random bytes) is
  written through `staging_dir`; then, with an empty cache (a fresh machine), `local_copy` with the sha256 check a
  resume does (`verify_files`); seconds. On `local` nothing is copied: it is the sha256 check alone.

Results: bench/results/blobs-<time>.json (every repetition, and per store the median, lowest and highest) and a
summary on stdout, with the load average before and after each repetition (the machine is shared).
"""

from __future__ import annotations

import argparse
import functools
import http.client
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.service import SELFSUP, free_port, wait_until  # noqa: E402

MB = 1024 * 1024
CHUNK = MB
S3_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1"}


def make_corpus(path: Path, mb: int) -> None:
    """`mb` MiB of text lines (random hex words: nothing for a filesystem or transport to compress away)."""
    with open(path, "wb") as fh:
        for _ in range(mb):
            block = os.urandom(CHUNK // 2).hex().encode()
            fh.write(b"\n".join(block[i : i + 64] for i in range(0, len(block), 65))[:CHUNK])


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (`VmHWM`), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


def cpu_seconds(pid: int) -> float:
    """A live process's CPU time so far (user + system, all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def timed_cp(source: Path, folder: Path) -> float:
    """Seconds `cp` takes to copy `source` into `folder` (same disk), fsynced like the store's writes; whatever was
    dirty before (the corpus just made, the last run's files) is synced first, outside the timing."""
    target = folder / "cp-copy"
    subprocess.run(["sync"], check=True)
    start = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    subprocess.run(["sync", str(target)], check=True)
    seconds = time.perf_counter() - start
    target.unlink()
    return seconds


def start_moto(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """moto's S3 server on the loopback, its spilled objects in `folder` (same disk); its URL."""
    port = free_port()
    env = {**os.environ, "TMPDIR": str(folder)}
    log = open(folder / "moto.log", "wb")  # noqa: SIM115 - open for the server's life
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log, env=env
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code < 500
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what="moto's S3 server")
    return process, url


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            yield block


def post_corpus(client: str, base: str, key: str, corpus: Path) -> tuple[int, str]:
    """POST `corpus` to /v1/corpora with `client` (curl or httpx); the status code and the answer's body."""
    url = f"{base}/v1/corpora?name=bench"
    if client == "curl":
        # -T streams the file (--data-binary @file would read all of it into curl's memory first).
        answer = subprocess.run(
            ["curl", "-sS", "-X", "POST", "-T", str(corpus), "-H", "Content-Type: text/plain"]
            + ["-H", f"Authorization: Bearer {key}", "-w", "\\n%{http_code}", url],
            capture_output=True,
            text=True,
            check=True,
        )
        body, _, code = answer.stdout.rpartition("\n")
        return int(code), body
    if client == "sendfile":
        return _post_with_sendfile(url, key, corpus)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}
    response = httpx.post(url, content=file_chunks(corpus), headers=headers, timeout=3600)
    return response.status_code, response.text


def _post_with_sendfile(url: str, key: str, corpus: Path) -> tuple[int, str]:
    """POST `corpus` over one HTTP/1.1 connection, the body sent by the kernel (`socket.sendfile`), as Go's net/http
    sends an `*os.File` body: a client that costs next to no CPU, so the figure is the API's receiving."""
    parts = urllib.parse.urlsplit(url)
    size = corpus.stat().st_size
    head = (
        f"POST {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection((parts.hostname, parts.port)) as sock, open(corpus, "rb") as fh:
        sock.sendall(head.encode())
        sock.sendfile(fh)
        response = http.client.HTTPResponse(sock, method="POST")
        response.begin()
        return response.status, response.read().decode()


def bench_store(
    kind: str, corpus: Path, checkpoint_mb: int, work: Path, redis_url: str, client: str, settings: dict[str, str]
) -> dict[str, Any]:
    """cp, upload, download and resume fetch on one store (see the module docstring); `settings` are the API's
    (and the reading worker's) SELFSUP_* variables the options set."""
    home = Path(tempfile.mkdtemp(prefix=f"{kind}-api-", dir=work))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFSUP_", "AWS_"))}
    env.update(
        {
            "SELFSUP_HOME": str(home),
            "SELFSUP_REDIS_URL": redis_url,
            "SELFSUP_MAX_UPLOAD_BYTES": str(corpus.stat().st_size + MB),
            "SELFSUP_RATE_LIMIT_PER_SECOND": "0",
            "SELFSUP_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
            **settings,
        }
    )
    moto = None
    if kind == "local":  # one machine: the API and the worker share the folder
        env["SELFSUP_BLOB_DIR"] = str(home / "blobs")
    if kind == "s3":
        moto, endpoint = start_moto(work)
        env.update({**S3_ENV, "AWS_ENDPOINT_URL": endpoint, "SELFSUP_BLOB_URL": "s3://bench/selfsup"})
        import boto3

        boto3.client("s3", endpoint_url=endpoint, **_boto_credentials()).create_bucket(Bucket="bench")
    api = None
    try:
        subprocess.run([*SELFSUP, "migrate"], env=env, cwd=REPO, check=True, capture_output=True)
        key = (
            subprocess.run(
                [*SELFSUP, "keys", "create", "--tenant", "bench"], env=env, cwd=REPO, check=True, capture_output=True
            )
            .stdout.decode()
            .strip()
        )
        port = free_port()
        with open(work / f"{kind}-api.log", "wb") as log:
            api = subprocess.Popen(
                [*SELFSUP, "api", "--port", str(port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ready(base), timeout=120, what="the API")
        idle_rss = peak_rss_mb(api.pid)
        cp_s = timed_cp(corpus, work)
        load_before = load_average()
        cpu_before = cpu_seconds(api.pid)
        start = time.perf_counter()
        status, text = post_corpus(client, base, key, corpus)
        upload_s = time.perf_counter() - start
        api_cpu = cpu_seconds(api.pid) - cpu_before
        if status != 201:
            raise RuntimeError(f"upload answered {status}: {text}\n{_tail(work / f'{kind}-api.log')}")
        corpus_id = json.loads(text)["id"]
        api_peak = peak_rss_mb(api.pid)
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
    # The store as the workers (and the API's downloads) see it, in this process.
    os.environ.update({k: v for k, v in env.items() if k.startswith(("SELFSUP_", "AWS_"))})
    try:
        size_mb = corpus.stat().st_size / MB
        result = {
            "load_average_at_upload": load_before,
            "cp_seconds": cp_s,
            "cp_mb_per_s": size_mb / cp_s,
            "upload_seconds": upload_s,
            "upload_mb_per_s": size_mb / upload_s,
            "upload_to_cp": cp_s / upload_s,
            "api_cpu_seconds": api_cpu,
            "api_cpu_seconds_per_gib": api_cpu / (size_mb / 1024),
            "api_idle_rss_mb": idle_rss,
            "api_peak_rss_mb": api_peak,
            **_download_and_resume(corpus_id, corpus.stat().st_size, checkpoint_mb, home / "worker"),
        }
    finally:
        for name in list(os.environ):
            if name.startswith(("SELFSUP_", "AWS_")):
                del os.environ[name]
        if moto is not None:
            moto.terminate()
            moto.wait(30)
        shutil.rmtree(home, ignore_errors=True)
    return result


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.is_file() else ""


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": S3_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": S3_ENV["AWS_SECRET_ACCESS_KEY"],
        "region_name": S3_ENV["AWS_REGION"],
    }


def _ready(base: str) -> bool:
    try:
        return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _download_and_resume(corpus_id: str, size: int, checkpoint_mb: int, worker_home: Path) -> dict[str, Any]:
    from selfsup.settings import get_settings
    from storage.blobs import get_blob_store
    from storage.checkpoints import file_manifest, verify_files
    from storage.keys import checkpoint_prefix, corpus_upload_key

    get_settings.cache_clear()
    os.environ["SELFSUP_HOME"] = str(worker_home)  # the worker's own machine: its own (empty) cache
    store = get_blob_store()
    start = time.perf_counter()
    read = sum(len(block) for block in store.open_range(corpus_upload_key(corpus_id), chunk_size=CHUNK))
    download_s = time.perf_counter() - start
    assert read == size, (read, size)

    prefix = checkpoint_prefix("job_bench", 1)
    with store.staging_dir(prefix) as staging:
        (staging / "resume").mkdir()
        with open(staging / "model.safetensors", "wb") as fh:
            for _ in range(checkpoint_mb // 3 or 1):
                fh.write(os.urandom(MB))
        with open(staging / "resume" / "trainer_state.pt", "wb") as fh:
            for _ in range(checkpoint_mb - (checkpoint_mb // 3 or 1)):
                fh.write(os.urandom(MB))
        manifest = file_manifest(staging, staging)
    get_settings.cache_clear()
    os.environ["SELFSUP_HOME"] = str(worker_home.with_name(worker_home.name + "-fresh"))  # a fresh machine
    fresh = get_blob_store()
    start = time.perf_counter()
    folder = fresh.local_copy(prefix, verify=functools.partial(verify_files, manifest=manifest))
    resume_s = time.perf_counter() - start
    assert verify_files(folder, manifest) is None
    return {
        "download_seconds": download_s,
        "download_mb_per_s": size / MB / download_s,
        "checkpoint_mb": checkpoint_mb,
        "resume_fetch_seconds": resume_s,
    }


_SUMMARISED = (
    "upload_mb_per_s",
    "cp_mb_per_s",
    "upload_to_cp",
    "api_cpu_seconds_per_gib",
    "api_peak_rss_mb",
    "download_mb_per_s",
    "resume_fetch_seconds",
)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, lowest and highest of each figure over a store's successful runs."""
    good = [r for r in runs if "error" not in r]
    return {
        name: {
            "median": statistics.median(r[name] for r in good),
            "lowest": min(r[name] for r in good),
            "highest": max(r[name] for r in good),
        }
        for name in _SUMMARISED
        if good
    } | {"runs": len(good), "failed": len(runs) - len(good)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="corpus size in MiB (1024: the issue's 1 GiB)")
    parser.add_argument("--checkpoint-mb", type=int, default=512, help="checkpoint size in MiB for the resume fetch")
    parser.add_argument("--stores", default="local,s3", help="local, s3 or both")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions, alternating the order of the stores")
    parser.add_argument(
        "--client", choices=("curl", "httpx", "sendfile"), default="curl" if shutil.which("curl") else "httpx"
    )
    parser.add_argument(
        "--read-ahead",
        type=int,
        default=None,
        help="the API's SELFSUP_API_RECEIVE_BUFFER_BYTES (default: the setting's; 65536 = uvicorn's own)",
    )
    parser.add_argument(
        "--buffered-writes",
        action="store_true",
        help="SELFSUP_BLOB_DIRECT_WRITES=false: the blob folder written through the page cache (the default writes "
        "past it with O_DIRECT, storage/direct_io.py)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=REPO / "bench" / "results",
        help="where the corpus, cp's copy and the stores live (a tmpfs such as /dev/shm leaves the disk out: what is "
        "left is the API's own receiving)",
    )
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    settings = {"SELFSUP_API_RECEIVE_BUFFER_BYTES": str(args.read_ahead)} if args.read_ahead else {}
    if args.buffered_writes:
        settings["SELFSUP_BLOB_DIRECT_WRITES"] = "false"
    work = Path(tempfile.mkdtemp(prefix="selfsup-bench-blobs-", dir=args.work_dir))
    corpus = work / "corpus.txt"
    stores = args.stores.split(",")
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
        },
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "corpus_mb": args.mb,
        "checkpoint_mb": args.checkpoint_mb,
        "client": args.client,
        "read_ahead": args.read_ahead,
        "direct_writes": not args.buffered_writes,
        "work_dir": str(args.work_dir),
        "repetitions": [],
        "stores": {},
    }
    try:
        make_corpus(corpus, args.mb)
        for rep in range(args.repeat):
            order = stores if rep % 2 == 0 else stores[::-1]
            repetition: dict[str, Any] = {"order": order, "load_average_before": load_average()}
            for kind in order:
                try:
                    repetition[kind] = bench_store(
                        kind, corpus, args.checkpoint_mb, work, args.redis_url, args.client, settings
                    )
                except Exception as exc:  # noqa: BLE001 - reported, and the other store still runs
                    repetition[kind] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"repetition {rep + 1} {kind}", json.dumps(repetition[kind], indent=1), flush=True)
            repetition["load_average_after"] = load_average()
            report["repetitions"].append(repetition)
        for kind in stores:
            report["stores"][kind] = summarise([r[kind] for r in report["repetitions"]])
    finally:
        report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        shutil.rmtree(work, ignore_errors=True)
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
    out = args.out or REPO / "bench" / "results" / f"blobs-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    for kind, summary in report["stores"].items():
        if not summary["runs"]:
            print(f"{kind}: every run failed")
            continue
        up, ratio, rss = summary["upload_mb_per_s"], summary["upload_to_cp"], summary["api_peak_rss_mb"]
        print(
            f"{kind}: {summary['runs']} runs; upload {up['median']:.0f} MB/s ({up['lowest']:.0f}-{up['highest']:.0f}), "
            f"upload/cp {ratio['median']:.2f} ({ratio['lowest']:.2f}-{ratio['highest']:.2f}; must be >= 0.5 on "
            f"local), API peak RSS at most {rss['highest']:.0f} MB (must be < 300), API CPU "
            f"{summary['api_cpu_seconds_per_gib']['median']:.2f} s/GiB"
        )
    print(f"load average: {report['uptime_before']} -> {report['uptime_after']}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
