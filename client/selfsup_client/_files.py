"""What uploads and downloads share between the sync and async clients: file sources, paths, checksums."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from selfsup_client.errors import DownloadError
from selfsup_client.models import Checkpoint

CHUNK_BYTES = 1 << 20
_CONTENT_TYPES = {
    ".txt": "text/plain",
    ".text": "text/plain",
    ".jsonl": "application/jsonl",
    ".ndjson": "application/jsonl",
}


def content_type_for(*names: str | None) -> str:
    """The upload's `Content-Type` from the first of its names with a known extension (`.txt`, `.jsonl`,
    `.ndjson`, each maybe `.gz`): the file's own, then the corpus name given."""
    for name in names:
        stem = (name or "").lower().removesuffix(".gz")
        for ext, content_type in _CONTENT_TYPES.items():
            if stem.endswith(ext):
                return content_type
    return "application/octet-stream"


@dataclass
class UploadSource:
    """A file to upload, from a path or an open binary file; it can be read again for a retry if seekable."""

    name: str | None
    size: int | None
    rewindable: bool
    _path: Path | None = None
    _file: BinaryIO | None = None
    _start: int = 0

    @classmethod
    def of(cls, file: str | os.PathLike[str] | BinaryIO) -> UploadSource:
        """A source for a path or an open binary file."""
        if isinstance(file, str | os.PathLike):
            path = Path(file)
            if not path.is_file():
                raise FileNotFoundError(f"no file {path}")
            return cls(name=path.name, size=path.stat().st_size, rewindable=True, _path=path)
        name = getattr(file, "name", None)
        name = Path(name).name if isinstance(name, str) else None
        if file.seekable():
            start = file.tell()
            size = file.seek(0, os.SEEK_END) - start
            file.seek(start)
            return cls(name=name, size=size, rewindable=True, _file=file, _start=start)
        return cls(name=name, size=None, rewindable=False, _file=file)

    def chunks(self, on_progress: Callable[[int], None]) -> Iterator[bytes]:
        """The bytes from the start, calling `on_progress(bytes sent so far)` as they go."""
        if self._path is not None:
            fh: BinaryIO = open(self._path, "rb")  # noqa: SIM115 - closed below, when the generator ends
        else:
            assert self._file is not None
            fh = self._file
            if self.rewindable:
                fh.seek(self._start)
        sent = 0
        on_progress(0)
        try:
            while chunk := fh.read(CHUNK_BYTES):
                sent += len(chunk)
                on_progress(sent)
                yield chunk
        finally:
            if self._path is not None:
                fh.close()


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def default_target(checkpoint: Checkpoint) -> Path:
    """Where a download goes when no folder is given: `<job id>-v<version>` in the current folder."""
    return Path(f"{checkpoint.job_id}-v{checkpoint.version}")


def prepare_staging(target: Path, checkpoint: Checkpoint) -> Path:
    """The folder the files are fetched into, next to `target`; kept between calls so a download resumes."""
    if target.exists() and not (target.is_dir() and not any(target.iterdir())):
        raise DownloadError(f"{target} already exists and is not an empty folder; choose another one")
    for entry in checkpoint.files:
        local_path(target, entry.name)  # refuse a name that would leave the folder before fetching anything
    staging = target.parent / f".{target.name}.{checkpoint.id}.partial"
    staging.mkdir(parents=True, exist_ok=True)
    return staging


def local_path(folder: Path, name: str) -> Path:
    """Where the checkpoint file `name` (a relative POSIX path) lives under `folder`."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("..", ".", "") for p in parts):
        raise DownloadError(f"the server named a checkpoint file {name!r}, which is not a plain relative path")
    return folder.joinpath(*parts)


def finish_download(staging: Path, target: Path, checkpoint: Checkpoint) -> None:
    """Move the verified folder into place in one rename, dropping anything that is not one of its files."""
    wanted = {local_path(staging, f.name) for f in checkpoint.files}
    for path in sorted(staging.rglob("*"), reverse=True):
        if path.is_file() and path not in wanted:
            path.unlink()
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if target.is_dir():
        target.rmdir()  # empty, as checked before the download
    os.replace(staging, target)


def remove_partial(path: Path) -> None:
    """Forget a partial file (or folder in its way) so it is fetched from the start."""
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
