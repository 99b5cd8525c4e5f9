"""Safe archive extraction: every refusal names the entry and the rule, and byte limits hold whatever headers say."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from workers.archives import ArchiveLimits, ArchiveRefused, extract_archive, iter_members, safe_member_name

LIMITS = ArchiveLimits(max_files=16, max_bytes=1_000_000, max_ratio=100)


def _tar(path: Path, *entries: tarfile.TarInfo | tuple[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tar.addfile(entry)
            else:
                info = tarfile.TarInfo(entry[0])
                info.size = len(entry[1])
                tar.addfile(info, io.BytesIO(entry[1]))
    return path


def _entry(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("../x", "`..` in a path"),
        ("a/../../x", "`..` in a path"),
        ("/etc/passwd", "absolute paths"),
        ("C:/Windows/x", "absolute paths"),
        ("a\\..\\x", "backslashes"),
    ],
)
def test_unsafe_names_are_refused(name: str, expected: str) -> None:
    with pytest.raises(ArchiveRefused, match=expected):
        safe_member_name(name)


def test_safe_names_are_normalised() -> None:
    assert safe_member_name("./model/config.json") == "model/config.json"
    assert safe_member_name("./") == ""


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (_entry("vocab.txt", tarfile.SYMTYPE, "/etc/passwd"), "links are not allowed"),
        (_entry("vocab.txt", tarfile.LNKTYPE, "config.json"), "links are not allowed"),
        (_entry("dev", tarfile.CHRTYPE), "only regular files and folders"),
        (_entry("fifo", tarfile.FIFOTYPE), "only regular files and folders"),
    ],
)
def test_links_and_special_tar_entries_are_refused(tmp_path: Path, entry: tarfile.TarInfo, expected: str) -> None:
    archive = _tar(tmp_path / "a.tar", ("config.json", b"{}"), entry)
    with pytest.raises(ArchiveRefused, match=expected):
        extract_archive(archive, "tar", tmp_path / "out", limits=LIMITS)


def test_a_repeated_entry_is_refused_rather_than_overwriting(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", ("config.json", b"{}"), ("./config.json", b"evil"))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveRefused, match="appears twice"):
        extract_archive(archive, "tar", tmp_path / "out", limits=LIMITS)
    assert (tmp_path / "out" / "config.json").read_bytes() == b"{}"


def test_a_zip_symlink_is_refused(tmp_path: Path) -> None:
    info = zipfile.ZipInfo("vocab.txt")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ArchiveRefused, match="links are not allowed"):
        extract_archive(tmp_path / "a.zip", "zip", tmp_path / "out", limits=LIMITS)


def _bomb(path: Path, make: Callable[[zipfile.ZipFile], None]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        make(zf)
    return path


def test_the_ratio_and_size_limits_count_written_bytes(tmp_path: Path) -> None:
    archive = _bomb(tmp_path / "bomb.zip", lambda zf: zf.writestr("zeros", bytes(2_000_000)))
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveRefused, match="decompression bomb"):
        extract_archive(archive, "zip", tmp_path / "out", limits=LIMITS)
    # Never more than the limit reached the disk.
    assert (tmp_path / "out" / "zeros").stat().st_size <= LIMITS.max_ratio * archive.stat().st_size
    roomy = ArchiveLimits(max_files=16, max_bytes=1_000_000, max_ratio=10_000)
    with pytest.raises(ArchiveRefused, match="SELFSUP_MODEL_MAX_BYTES"):
        extract_archive(archive, "zip", tmp_path / "out2", limits=roomy)


def test_too_many_entries_are_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", *((f"f{i}", b"") for i in range(20)))
    with pytest.raises(ArchiveRefused, match="SELFSUP_MODEL_MAX_FILES"):
        extract_archive(archive, "tar", tmp_path / "out", limits=LIMITS)


def test_a_single_top_folder_is_unwrapped_and_files_are_hashed(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", ("my-model/config.json", b"{}"), ("my-model/sub/x", b"abc"))
    (tmp_path / "out").mkdir()
    files = extract_archive(archive, "tar", tmp_path / "out", limits=LIMITS)
    assert [(f.name, f.bytes) for f in files] == [("config.json", 2), ("sub/x", 3)]
    assert files[1].sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_a_damaged_archive_is_refused(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "a.tar", ("config.json", b"{}" * 1000))
    archive.write_bytes(archive.read_bytes()[:700])
    (tmp_path / "out").mkdir()
    with pytest.raises(ArchiveRefused, match="damaged or truncated"):
        extract_archive(archive, "tar", tmp_path / "out", limits=LIMITS)


def test_a_tar_bomb_counts_the_members_nobody_reads(tmp_path: Path) -> None:
    """A compressed tar is inflated whatever the reader keeps: skipped members count against the limits too."""
    with tarfile.open(tmp_path / "bomb.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("zeros")
        info.size = 5_000_000
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    with pytest.raises(ArchiveRefused, match="decompression bomb"):
        for _member in iter_members(tmp_path / "bomb.tar.gz", "tar", limits=LIMITS):
            pass  # read nothing


@pytest.mark.parametrize("method", [zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_zip_entries_other_than_stored_or_deflated_are_refused(tmp_path: Path, method: int) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w", compression=method) as zf:
        zf.writestr("notes.txt", b"hello")
    with pytest.raises(ArchiveRefused, match="only stored and deflated"):
        list(iter_members(tmp_path / "a.zip", "zip", limits=LIMITS))


def test_a_zip_declaring_too_many_entries_is_refused_before_its_directory_is_read(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for i in range(20):
            zf.writestr(f"f{i}", b"")
    with pytest.raises(ArchiveRefused, match="holds 20 entries, more than the 16"):
        list(iter_members(tmp_path / "a.zip", "zip", limits=LIMITS))
