"""Compressed and archived corpora: a decompression bomb fails while streaming with a reason that names the
setting, hostile archives (zip-slip, links) fail whole, and archives of text files become one document per file
with binary files skipped and counted. The service stays healthy and keeps no partial output."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.factories import api_error, upload_corpus, wait_for_corpus
from tests.service import Service

pytestmark = pytest.mark.integration

# About 9 MB of text (under the 10 MiB per-file limit) that gzip and deflate shrink about 340 times: far past
# the 100x ratio limit.
BOMB_TEXT = b"All work and no play makes Jack a dull boy.\n" * 200_000
TEXT_FILES = {
    "docs/readme.md": b"# Notes\n\nA small project.\n",
    "src/main.py": b"def main() -> None:\n    print('hello')\n",
    "docs/caf\xc3\xa9.txt": "Caf\u00e9 cr\u00e8me, \u00e0 la carte.\n".encode(),
}
BINARY_FILE = ("assets/logo.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64))


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _tar_gz(entries: dict[str, bytes], *extra: tarfile.TarInfo) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return buffer.getvalue()


def _special(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _corpus_blobs(service: Service, corpus_id: str) -> list[str]:
    folder = service.home / "blobs" / "corpora" / corpus_id
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _upload_and_wait(service: Service, data: bytes, name: str, content_type: str = "") -> dict[str, object]:
    client = service.client()
    return wait_for_corpus(client, upload_corpus(client, data, name=name, content_type=content_type)["id"])


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("bomb.txt.gz", lambda: gzip.compress(BOMB_TEXT)),
        ("bomb.zip", lambda: _zip({"bomb.txt": BOMB_TEXT})),
        ("bomb.tar.gz", lambda: _tar_gz({"bomb.txt": BOMB_TEXT})),
    ],
)
def test_a_decompression_bomb_fails_with_the_ratio_and_keeps_nothing(
    embedded_service: Service, name: str, make: object
) -> None:
    data = make()  # type: ignore[operator]
    assert len(BOMB_TEXT) > 300 * len(data)  # far past the 100x limit
    corpus = _upload_and_wait(embedded_service, data, name)
    assert corpus["status"] == "failed", corpus
    error = str(corpus["error"])
    assert "SELFSUP_ARCHIVE_MAX_RATIO" in error and "decompression bomb" in error, error
    # Nothing inflated was kept: no split, no temporary file; only the upload as it arrived.
    assert _corpus_blobs(embedded_service, str(corpus["id"])) == ["upload"]
    # The service stays healthy: it answers, and the next upload ingests.
    assert embedded_service.client().get("/healthz").status_code == 200
    after = _upload_and_wait(embedded_service, b"Still working.\n\nAnd another document.\n", "after.txt")
    assert after["status"] == "ready" and after["documents"] == 2, after


@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("slip.zip", _zip({"ok.txt": b"fine\n", "../evil.txt": b"escaped\n"}), "`..` in a path is not allowed"),
        ("abs.tar.gz", _tar_gz({"/tmp/evil.txt": b"escaped\n"}), "absolute paths are not allowed"),
        (
            "link.tar.gz",
            _tar_gz(
                {"ok.txt": b"fine\n"},
                _special("passwd.txt", tarfile.SYMTYPE, "/etc/passwd"),
            ),
            "links are not allowed",
        ),
        (
            "device.tar.gz",
            _tar_gz({"ok.txt": b"fine\n"}, _special("null", tarfile.CHRTYPE)),
            "only regular files and folders",
        ),
    ],
)
def test_a_hostile_archive_is_refused_whole(embedded_service: Service, name: str, data: bytes, expected: str) -> None:
    corpus = _upload_and_wait(embedded_service, data, name)
    assert corpus["status"] == "failed" and corpus["format"] == "archive", corpus
    assert expected in str(corpus["error"]), corpus["error"]
    assert _corpus_blobs(embedded_service, str(corpus["id"])) == ["upload"]
    assert not Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize(
    ("name", "data", "compression"),
    [
        ("project.zip", _zip({**TEXT_FILES, BINARY_FILE[0]: BINARY_FILE[1]}), None),
        ("project.tar.gz", _tar_gz({**TEXT_FILES, BINARY_FILE[0]: BINARY_FILE[1]}), "gzip"),
    ],
)
def test_an_archive_of_text_files_is_one_document_per_file(
    embedded_service: Service, name: str, data: bytes, compression: str | None
) -> None:
    # Sent as an opaque file: the bytes say it is an archive.
    corpus = _upload_and_wait(embedded_service, data, name, content_type="application/octet-stream")
    assert corpus["status"] == "ready", corpus
    assert corpus["format"] == "archive" and corpus["compression"] == compression
    assert corpus["documents"] == len(TEXT_FILES)
    assert corpus["archive"] == {
        "type": "zip" if name.endswith(".zip") else "tar",
        "files": len(TEXT_FILES) + 1,
        "text_files": len(TEXT_FILES),
        "skipped_binary": 1,
        "skipped_too_large": 0,
        "skipped_empty": 0,
    }
    assert corpus["characters"] == sum(len(text.decode()) for text in TEXT_FILES.values())


def test_format_archive_must_be_an_archive(embedded_service: Service) -> None:
    client = embedded_service.client()
    response = client.post("/v1/corpora", params={"name": "x.txt", "format": "archive"}, content=b"plain text\n")
    assert "neither a zip nor a tar archive" in api_error(response, 415)["message"]
    api_error(client.post("/v1/corpora", params={"name": "x.txt", "format": "rar"}, content=b"plain text\n"), 422)
