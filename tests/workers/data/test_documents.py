"""Unit tests of ingest: decoding, the document rule, and the train/validation split."""

from __future__ import annotations

import gzip
import io
import json

import pytest

from workers.data.documents import IngestError, is_validation, read_jsonl_texts, rebalance_tiny_split, split_corpus


def _split(data: bytes, fmt: str = "txt", fraction: float = 0.1) -> tuple[list[str], list[str], object]:
    train, validation = io.BytesIO(), io.BytesIO()
    stats = split_corpus(
        io.BytesIO(data), fmt=fmt, validation_fraction=fraction, train_out=train, validation_out=validation
    )
    train.seek(0)
    validation.seek(0)
    return list(read_jsonl_texts(train)), list(read_jsonl_texts(validation)), stats


def test_text_documents_are_separated_by_blank_lines_with_newlines_normalised() -> None:
    data = b"First doc\r\nline two\r\n\r\n  \n\nSecond doc\rline b\n\n\n"
    train, validation, stats = _split(data, fraction=0.0001)
    assert sorted(train + validation) == ["First doc\nline two", "Second doc\nline b"]
    assert stats.documents == 2 and stats.characters == len("First doc\nline two") + len("Second doc\nline b")


def test_jsonl_takes_the_text_field_and_counts_empty_ones() -> None:
    lines = [{"text": "alpha"}, {"text": "   "}, {"text": "beta\r\ngamma", "meta": 1}]
    data = gzip.compress("\n".join(json.dumps(x) for x in lines).encode())
    train, validation, stats = _split(data, fmt="jsonl", fraction=0.0001)
    assert sorted(train + validation) == ["alpha", "beta\ngamma"]
    assert stats.dropped == {"empty text": 1}


@pytest.mark.parametrize(
    ("data", "fmt", "reason"),
    [
        (b"ab\x00cd", "txt", "NUL byte at offset 2"),
        (b"ok\n\xc3\x28", "txt", "not valid UTF-8 (byte offset 3"),
        (b"%PDF-1.7 ...", "txt", "a PDF document"),
        (gzip.compress(b"hello world")[:-6], "txt", "gzip stream is corrupt or truncated"),
        (b'{"text": 1}\n', "jsonl", '"text" must be a string'),
        (b"not json\n", "jsonl", "line 1 is not valid JSON"),
        (b"\n\n   \n", "txt", "holds no text"),
    ],
)
def test_unusable_uploads_fail_with_a_reason(data: bytes, fmt: str, reason: str) -> None:
    with pytest.raises(IngestError, match=reason.replace("(", r"\(")):
        _split(data, fmt=fmt)


def test_split_is_deterministic_and_never_overlaps(shakespeare: bytes) -> None:
    train, validation, stats = _split(shakespeare)
    again_train, again_validation, _ = _split(shakespeare)
    assert (train, validation) == (again_train, again_validation)
    assert not set(train) & set(validation)
    assert 0.05 < len(validation) / stats.documents < 0.15
    assert all(is_validation(doc, 0.1) for doc in validation)


def test_tiny_corpora_still_get_both_splits() -> None:
    assert rebalance_tiny_split(["a", "b", "c"], [], validation_fraction=0.1) == (["a", "b"], ["c"])
    train, validation = rebalance_tiny_split(["line one\nline two\nline three"], [], validation_fraction=0.1)
    assert train == ["line one\nline two"] and validation == ["line three"]


@pytest.fixture
def shakespeare() -> bytes:
    from tests.factories import shakespeare_slice

    return shakespeare_slice(200_000)
