"""The worker-side blob cache: bounded, least recently used evicted, verified, safe for several processes."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from storage.cache import BlobCache, CacheError, entry_name


def writes(data: bytes, calls: list[str]):  # type: ignore[no-untyped-def]
    """A download that writes `data` as a one-file folder and records that it ran."""

    def download(target: Path) -> None:
        calls.append(target.name)
        target.mkdir()
        (target / "blob.bin").write_bytes(data)

    return download


def sha_check(data: bytes):  # type: ignore[no-untyped-def]
    """A verify hook: the folder's file must have `data`'s sha256."""
    expected = hashlib.sha256(data).hexdigest()

    def verify(folder: Path) -> str | None:
        actual = hashlib.sha256((folder / "blob.bin").read_bytes()).hexdigest()
        return None if actual == expected else "blob.bin does not match its sha256"

    return verify


def cached_names(cache: BlobCache) -> set[str]:
    return {e.name for e in cache.list_entries()}


def test_a_copy_is_downloaded_once_and_served_from_the_cache(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1000)
    calls: list[str] = []
    first = cache.get("datasets/a", writes(b"x" * 10, calls))
    second = BlobCache(tmp_path / "cache", max_bytes=1000).get("datasets/a", writes(b"y" * 10, calls))
    assert first == second and (first / "blob.bin").read_bytes() == b"x" * 10
    assert len(calls) == 1


def test_least_recently_used_entries_are_evicted_first_and_the_bound_holds(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=300)
    calls: list[str] = []
    for name in ("a", "b", "c"):
        cache.get(name, writes(b"x" * 100, calls))
        time.sleep(0.01)  # distinct use times
    cache.release()  # nothing in use: everything may be evicted
    cache.get("a", writes(b"x" * 100, calls))  # a is now the most recently used; b the least
    cache.release()
    cache.get("d", writes(b"x" * 100, calls))
    assert cached_names(cache) == {entry_name(n) for n in ("a", "c", "d")}
    cache.release()
    cache.get("e", writes(b"x" * 150, calls))  # needs two slots: c, then a go
    assert cached_names(cache) == {entry_name(n) for n in ("d", "e")}
    assert cache.total_bytes() <= 300
    assert len(calls) == 5  # the second "a" was a hit


def test_entries_in_use_are_never_evicted(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=200)
    cache.get("in-use", writes(b"x" * 100, []))  # pinned by this process until release()
    cache.get("old", writes(b"x" * 100, []))
    # A store may build a cache object per call: the pins belong to the process, not to the object.
    BlobCache(tmp_path / "cache", max_bytes=200).get("new", writes(b"x" * 100, []))
    assert cached_names(cache) == {entry_name(n) for n in ("in-use", "old", "new")}
    cache.release()
    cache.get("newer", writes(b"x" * 100, []))
    assert cached_names(cache) == {entry_name(n) for n in ("new", "newer")}


def _hold(root: str, ready: multiprocessing.synchronize.Event, done: multiprocessing.synchronize.Event) -> None:
    BlobCache(Path(root), max_bytes=100).get("held", writes(b"x" * 100, []))
    ready.set()
    done.wait(30)


def test_an_entry_another_live_process_uses_is_kept_until_it_exits(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready, done = context.Event(), context.Event()
    holder = context.Process(target=_hold, args=(str(tmp_path / "cache"), ready, done))
    holder.start()
    try:
        assert ready.wait(60)
        cache = BlobCache(tmp_path / "cache", max_bytes=100)
        cache.get("other", writes(b"y" * 100, []))  # over the bound: the held entry may not go
        assert cached_names(cache) == {entry_name("held"), entry_name("other")}
        done.set()
        holder.join(30)
        cache.release()
        cache.get("third", writes(b"z" * 100, []))  # the holder is gone: its pin went with it
        assert cached_names(cache) == {entry_name("third")}
    finally:
        done.set()
        holder.join(30)
        if holder.is_alive():
            holder.kill()


def test_a_corrupt_copy_is_downloaded_again(tmp_path: Path) -> None:
    data = os.urandom(64)
    cache = BlobCache(tmp_path / "cache", max_bytes=1000)
    calls: list[str] = []
    folder = cache.get("checkpoints/j/v1", writes(data, calls), verify=sha_check(data))
    cache.release()
    (folder / "blob.bin").write_bytes(b"bit rot" + data[7:])
    fresh = BlobCache(tmp_path / "cache", max_bytes=1000)  # a new process verifies on its first use
    folder = fresh.get("checkpoints/j/v1", writes(data, calls), verify=sha_check(data))
    assert (folder / "blob.bin").read_bytes() == data
    assert len(calls) == 2


def test_a_blob_corrupt_in_the_store_is_an_error_not_a_loop(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1000)
    calls: list[str] = []
    with pytest.raises(CacheError, match="corrupt in the blob store"):
        cache.get("datasets/bad", writes(b"bad", calls), verify=sha_check(b"good"))
    assert len(calls) == 2 and cached_names(cache) == set()


def test_a_blob_larger_than_the_cache_is_refused_naming_the_setting(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=10)
    with pytest.raises(CacheError, match="SELFSUP_CACHE_MAX_BYTES"):
        cache.get("datasets/huge", writes(b"x" * 11, []))
    assert cached_names(cache) == set() and not list((tmp_path / "cache").glob(".tmp-*"))


def test_a_failed_download_leaves_nothing(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache", max_bytes=1000)

    def broken(target: Path) -> None:
        target.mkdir()
        (target / "half").write_bytes(b"x")
        raise ConnectionError("reset by peer")

    with pytest.raises(ConnectionError):
        cache.get("datasets/a", broken)
    assert cached_names(cache) == set() and not list((tmp_path / "cache").glob(".tmp-*"))
    assert (cache.get("datasets/a", writes(b"ok", [])) / "blob.bin").read_bytes() == b"ok"


def _fetch_slowly(root: str, counter: str) -> None:
    def download(target: Path) -> None:
        with open(counter, "a") as fh:
            fh.write("x")
        time.sleep(0.5)
        target.write_bytes(b"shared")

    path = BlobCache(Path(root), max_bytes=1000).get("datasets/shared", download)
    assert path.read_bytes() == b"shared"


def test_processes_that_want_the_same_blob_download_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    counter = tmp_path / "downloads"
    procs = [context.Process(target=_fetch_slowly, args=(str(tmp_path / "cache"), str(counter))) for _ in range(3)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert counter.read_text() == "x"
