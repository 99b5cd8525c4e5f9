"""The local blob store through the `BlobStore` protocol, and the key layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import keys
from storage.blobs import BlobStore, LocalBlobStore


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def test_keys_keep_the_layout_on_disk() -> None:
    assert keys.corpus_upload_key("cor_1") == "corpora/cor_1/upload"
    assert keys.corpus_split_key("cor_1", "train") == "corpora/cor_1/train.jsonl"
    assert keys.dataset_prefix("abc") == "datasets/abc"
    assert keys.job_checkpoints_prefix("job_1") == "checkpoints/job_1"
    assert keys.checkpoint_prefix("job_1", 7).startswith("checkpoints/job_1/v000007-")
    assert keys.join_key("datasets/abc/", "tokenizer", "vocab.json") == "datasets/abc/tokenizer/vocab.json"


def test_ranges_children_and_local_copies(store: BlobStore) -> None:
    with store.writer("a/b/file.bin") as out:
        out.write(b"0123456789")
    assert b"".join(store.open_range("a/b/file.bin")) == b"0123456789"
    assert list(store.open_range("a/b/file.bin", 2, 7, chunk_size=2)) == [b"23", b"45", b"6"]
    assert b"".join(store.open_range("a/b/file.bin", 8, 100)) == b"89"
    with pytest.raises(FileNotFoundError):
        store.open_range("a/b/missing.bin")
    with store.staging_dir("a/c") as staging:
        (staging / "x.txt").write_text("x")
    assert store.list_children("a") == ["a/b", "a/c"]
    assert store.list_children("nothing/here") == []
    assert (store.local_copy("a/c") / "x.txt").read_text() == "x"
    store.delete_prefix("a/b")
    assert store.list_children("a") == ["a/c"] and not store.exists("a/b/file.bin")
