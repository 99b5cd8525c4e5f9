"""Blob throughput, local folder and S3: upload through the API, read back, a fresh machine's checkpoint fetch.

    .venv/bin/python bench/blobs.py                 # a 1 GiB corpus, a 512 MiB checkpoint, both stores
    .venv/bin/python bench/blobs.py --mb 64 --checkpoint-mb 32 --stores local   # a quick run

For each store (`local`: a folder on this disk; `s3`: moto's S3 server started here on the loopback, its objects
spilled to the same disk):

- **cp**: `cp` of the corpus file to the same disk (the yardstick; the API must reach half of it on `local`).
- **upload**: `POST /v1/corpora` of the corpus through a real `selfsup api` process (SQLite, this machine's Redis),
  streamed by httpx in 1 MiB chunks; MB/s, and the API process's peak RSS (`VmHWM`, must stay under 300 MB).
- **download**: the stored upload read back through the store's `open_range` in 1 MiB chunks, as the API streams a
  download; MB/s.
- **resume fetch**: a checkpoint folder (`model.safetensors` and `resume/trainer_state.pt` of random bytes) is
  written through `staging_dir`; then, with an empty cache (a fresh machine), `local_copy` with the sha256 check a
  resume does (`verify_files`); seconds. On `local` nothing is copied: it is the sha256 check alone.

Results: bench/results/blobs-<time>.json and a summary on stdout (with `uptime`: the machine is shared).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
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


def timed_cp(source: Path, folder: Path) -> float:
    """Seconds `cp` takes to copy `source` into `folder` (same disk), fsynced like the store's writes."""
    target = folder / "cp-copy"
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


def bench_store(kind: str, corpus: Path, checkpoint_mb: int, work: Path, redis_url: str) -> dict[str, Any]:
    """Upload, download and resume fetch on one store (see the module docstring)."""
    home = work / f"{kind}-api"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SELFSUP_", "AWS_"))}
    env.update(
        {
            "SELFSUP_HOME": str(home),
            "SELFSUP_REDIS_URL": redis_url,
            "SELFSUP_MAX_UPLOAD_BYTES": str(corpus.stat().st_size + MB),
            "SELFSUP_RATE_LIMIT_PER_SECOND": "0",
            "SELFSUP_LOG_FORMAT": "json",
            "PYTHONUNBUFFERED": "1",
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
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "text/plain"}
        start = time.perf_counter()
        answer = httpx.post(
            f"{base}/v1/corpora", params={"name": "bench"}, content=file_chunks(corpus), headers=headers, timeout=3600
        )
        upload_s = time.perf_counter() - start
        if answer.status_code != 201:
            log = _tail(work / f"{kind}-api.log")
            raise RuntimeError(f"upload answered {answer.status_code}: {answer.text}\n{log}")
        corpus_id = answer.json()["id"]
        api_peak = peak_rss_mb(api.pid)
    finally:
        if api is not None:
            api.terminate()
            api.wait(30)
    # The store as the workers (and the API's downloads) see it, in this process.
    os.environ.update({k: v for k, v in env.items() if k.startswith(("SELFSUP_", "AWS_"))})
    try:
        result = {
            "upload_seconds": upload_s,
            "upload_mb_per_s": corpus.stat().st_size / MB / upload_s,
            "api_idle_rss_mb": idle_rss,
            "api_peak_rss_mb": api_peak,
            **_download_and_resume(corpus_id, corpus.stat().st_size, checkpoint_mb, work / f"{kind}-worker"),
        }
    finally:
        for name in list(os.environ):
            if name.startswith(("SELFSUP_", "AWS_")):
                del os.environ[name]
        if moto is not None:
            moto.terminate()
            moto.wait(30)
    return result


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="corpus size in MiB (1024: the issue's 1 GiB)")
    parser.add_argument("--checkpoint-mb", type=int, default=512, help="checkpoint size in MiB for the resume fetch")
    parser.add_argument("--stores", default="local,s3", help="local, s3 or both")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="selfsup-bench-blobs-", dir=REPO / "bench" / "results"))
    corpus = work / "corpus.txt"
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "uptime_before": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
        "corpus_mb": args.mb,
        "stores": {},
    }
    try:
        make_corpus(corpus, args.mb)
        cp_s = timed_cp(corpus, work)
        report["cp_seconds"] = cp_s
        report["cp_mb_per_s"] = args.mb / cp_s
        for kind in args.stores.split(","):
            try:
                report["stores"][kind] = bench_store(kind, corpus, args.checkpoint_mb, work, args.redis_url)
            except Exception as exc:  # noqa: BLE001 - reported, and the other store still runs
                report["stores"][kind] = {"error": f"{type(exc).__name__}: {exc}"}
            print(kind, json.dumps(report["stores"][kind], indent=1), flush=True)
    finally:
        report["uptime_after"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        shutil.rmtree(work, ignore_errors=True)
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
    out = args.out or REPO / "bench" / "results" / f"blobs-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "stores"}, indent=1))
    local = report["stores"].get("local")
    if local and "error" not in local:
        print(
            f"local: API upload {local['upload_mb_per_s']:.0f} MB/s vs cp {report['cp_mb_per_s']:.0f} MB/s "
            f"(ratio {local['upload_mb_per_s'] / report['cp_mb_per_s']:.2f}, must be >= 0.5); "
            f"API peak RSS {local['api_peak_rss_mb']:.0f} MB (must be < 300)"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
