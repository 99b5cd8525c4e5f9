"""Unit tests of compressed and archived corpora: limits counted while streaming, one document per text file."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from workers.archives import ArchiveLimits, ArchiveRefused
from workers.data import documents
from workers.data.documents import IngestError, read_jsonl_texts, split_archive, split_corpus

LIMITS = ArchiveLimits(
    max_files=16,
    max_bytes=10_000_000,
    max_ratio=100,
    files_setting="SELFSUP_ARCHIVE_MAX_FILES",
    bytes_setting="SELFSUP_MAX_DECOMPRESSED_BYTES",
)


class _Counting(io.BytesIO):
    """A split that remembers how many bytes were written to it."""

    written = 0

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self.written += len(data)
        return super().write(data)


def _split_gzip(data: bytes, limits: ArchiveLimits) -> tuple[_Counting, _Counting]:
    train, validation = _Counting(), _Counting()
    split_corpus(
        io.BytesIO(data), fmt="txt", validation_fraction=0.1, train_out=train, validation_out=validation, limits=limits
    )
    return train, validation


def test_a_gzip_bomb_stops_at_the_ratio_having_read_little() -> None:
    text = b"All work and no play makes Jack a dull boy.\n\n" * 100_000  # 4.5 MB, about 5 kB gzipped
    data = gzip.compress(text)
    train, validation = _Counting(), _Counting()
    with pytest.raises(ArchiveRefused, match=r"more than 100 times its own size .*SELFSUP_ARCHIVE_MAX_RATIO"):
        split_corpus(
            io.BytesIO(data),
            fmt="txt",
            validation_fraction=0.1,
            train_out=train,
            validation_out=validation,
            limits=LIMITS,
        )
    # Stopped within the allowance (plus one read), long before the whole text.
    assert train.written + validation.written <= 100 * len(data) + 1024 * 1024 < len(text)


def test_the_absolute_limit_holds_whatever_the_ratio() -> None:
    data = gzip.compress(b"word " * 1_000_000)
    roomy = ArchiveLimits(
        max_files=16, max_bytes=2_000_000, max_ratio=10_000, bytes_setting="SELFSUP_MAX_DECOMPRESSED_BYTES"
    )
    with pytest.raises(ArchiveRefused, match=r"more than 2,000,000 bytes \(SELFSUP_MAX_DECOMPRESSED_BYTES\)"):
        _split_gzip(data, roomy)


def test_a_gzip_within_the_limits_and_a_tiny_one_below_the_floor_ingest() -> None:
    train, validation = _split_gzip(gzip.compress(b"one\n\ntwo\n"), LIMITS)
    assert sorted(read_jsonl_texts(io.BytesIO(train.getvalue() + validation.getvalue()))) == ["one", "two"]
    tiny = gzip.compress(b"\n" * 100_000 + b"word\n")  # a ratio near 1000, but 100 kB: under a 1 MiB floor
    floored = ArchiveLimits(max_files=16, max_bytes=10**9, max_ratio=100, ratio_floor_bytes=1024 * 1024)
    train, validation = _split_gzip(tiny, floored)
    assert train.written + validation.written > 0


def test_a_line_past_the_bound_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_LINE_CHARS", 1000)
    with pytest.raises(IngestError, match="a line is longer than 1,000 characters"):
        _split_gzip(b"x" * 5000, LIMITS)  # never ends: the pending line grows chunk by chunk


def _archive(path: Path, entries: dict[str, bytes]) -> Path:
    if path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            for name, data in entries.items():
                zf.writestr(name, data)
    else:
        with tarfile.open(path, "w:gz") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".zip", ".tar.gz"])
def test_each_text_file_is_a_document_and_the_rest_is_counted(tmp_path: Path, suffix: str) -> None:
    entries = {
        "a.txt": b"alpha\r\nbeta\r\n",
        "dir/b.py": b"print('b')\n\n\nprint('c')\n",
        "bin/nul.dat": b"abc\x00def",
        "bin/latin1.txt": "caf\xe9".encode("latin-1"),
        "big.txt": b"y" * 2000,
        "blank.txt": b"  \n\n",
    }
    archive = _archive(tmp_path / f"a{suffix}", entries)
    train, validation = io.BytesIO(), io.BytesIO()
    stats = split_archive(
        archive,
        "zip" if suffix == ".zip" else "tar",
        limits=LIMITS,
        max_file_bytes=1000,
        validation_fraction=0.1,
        train_out=train,
        validation_out=validation,
    )
    docs = list(read_jsonl_texts(io.BytesIO(train.getvalue() + validation.getvalue())))
    # A whole file is one document, blank lines included (code is not cut at blank lines).
    assert sorted(docs) == ["alpha\nbeta\n", "print('b')\n\n\nprint('c')\n"]
    assert stats.archive is not None
    assert stats.report()["archive"] == {
        "type": "zip" if suffix == ".zip" else "tar",
        "files": 6,
        "text_files": 2,
        "skipped_binary": 2,
        "skipped_too_large": 1,
        "skipped_empty": 1,
    }


def test_an_archive_without_text_fails_with_its_counts(tmp_path: Path) -> None:
    archive = _archive(tmp_path / "a.zip", {"x.bin": b"\x00\x01", "y.bin": b"\xff\xfe"})
    with pytest.raises(IngestError, match="of its 2 files, 2 are binary"):
        split_archive(
            archive,
            "zip",
            limits=LIMITS,
            max_file_bytes=1000,
            validation_fraction=0.1,
            train_out=io.BytesIO(),
            validation_out=io.BytesIO(),
        )


def test_a_file_longer_than_a_document_is_cut_at_line_ends(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "MAX_DOCUMENT_CHARS", 25)
    archive = _archive(tmp_path / "a.zip", {"long.txt": b"line one\nline two\nline three\nline four\n"})
    train, validation = io.BytesIO(), io.BytesIO()
    stats = split_archive(
        archive,
        "zip",
        limits=LIMITS,
        max_file_bytes=1000,
        validation_fraction=0.1,
        train_out=train,
        validation_out=validation,
    )
    docs = list(read_jsonl_texts(io.BytesIO(train.getvalue() + validation.getvalue())))
    assert sorted(docs) == sorted(["line one\nline two", "line three\nline four\n"])
    assert stats.archive is not None and stats.archive.text_files == 1 and stats.documents == 2
