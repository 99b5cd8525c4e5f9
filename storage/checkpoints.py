"""Checkpoint files: a Hugging Face directory to download, plus the resume state kept beside it.

A checkpoint is staged in a temporary folder, every file fsynced, the folder renamed into place and
fsynced, and only then recorded in the database, so a row always names complete files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storage.blobs import BlobStore
from storage.keys import checkpoint_prefix, join_key

RESUME_DIR = "resume"
RESUME_STATE_FILE = "trainer_state.pt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


def sha256_file(path: Path) -> str:
    """The sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class WrittenCheckpoint:
    """Where a checkpoint landed and what it holds."""

    prefix: str
    files: list[dict[str, Any]]
    resume_files: list[dict[str, Any]]


def file_manifest(folder: Path, root: Path, *, exclude: str | None = None) -> list[dict[str, Any]]:
    """Each file under `folder` (but not under `root/exclude`): its name relative to `root`, size and sha256."""
    return [
        {"name": p.relative_to(root).as_posix(), "size_bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not (exclude and p.relative_to(root).parts[0] == exclude)
    ]


def write_checkpoint(
    *,
    store: BlobStore,
    job_id: str,
    version: int,
    save_model: Callable[[Path], None],
    tokenizer_dir: Path,
    text_files: dict[str, str],
    resume_state: dict[str, Any],
    tokenizer_settings: dict[str, Any] | None = None,
    before_rename: Callable[[], None] | None = None,
) -> WrittenCheckpoint:
    """Write one checkpoint atomically and return its manifest (record it in the database after this).

    `tokenizer_settings` go into the copied `tokenizer_config.json` (a dataset's tokenizer serves jobs of
    every context length; the checkpoint's says its own `model_max_length`)."""
    import torch  # here, not at the top: the API imports this module and never needs torch

    prefix = checkpoint_prefix(job_id, version)
    with store.staging_dir(prefix, before_rename=before_rename) as staging:
        save_model(staging)
        for item in tokenizer_dir.iterdir():
            if item.is_file():
                shutil.copyfile(item, staging / item.name)
        if tokenizer_settings:
            config_path = staging / TOKENIZER_CONFIG_FILE
            config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
            config.update(tokenizer_settings)
            config_path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        for name, text in text_files.items():
            (staging / name).write_text(text, encoding="utf-8")
        resume = staging / RESUME_DIR
        resume.mkdir()
        torch.save(resume_state, resume / RESUME_STATE_FILE)
        files = file_manifest(staging, staging, exclude=RESUME_DIR)
        resume_files = file_manifest(resume, staging)
    return WrittenCheckpoint(prefix=prefix, files=files, resume_files=resume_files)


def verify_files(folder: Path, manifest: list[dict[str, Any]]) -> str | None:
    """None if every listed file is present with its recorded sha256, else what is wrong."""
    for entry in manifest:
        path = folder / entry["name"]
        if not path.is_file():
            return f"{entry['name']} is missing"
        if path.stat().st_size != entry["size_bytes"]:
            return f"{entry['name']} has {path.stat().st_size} bytes, expected {entry['size_bytes']}"
        if sha256_file(path) != entry["sha256"]:
            return f"{entry['name']} does not match its recorded sha256"
    return None


def load_resume_state(folder: Path) -> dict[str, Any]:
    """The trainer state saved with a checkpoint (tensors and plain containers only: nothing is unpickled)."""
    import torch

    state: dict[str, Any] = torch.load(folder / RESUME_DIR / RESUME_STATE_FILE, map_location="cpu", weights_only=True)
    return state


def iter_tar(store: BlobStore, prefix: str, files: list[dict[str, Any]], chunk: int = 1024 * 1024) -> Iterator[bytes]:
    """A ustar archive of the listed files under `prefix`, streamed; its length is `tar_size(files)`."""
    for entry in files:
        info = tarfile.TarInfo(entry["name"])
        info.size = entry["size_bytes"]
        info.mode = 0o644
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        remaining = entry["size_bytes"]
        for block in store.open_range(join_key(prefix, entry["name"]), 0, remaining, chunk_size=chunk):
            remaining -= len(block)
            yield block
        if remaining > 0:
            raise OSError(f"{entry['name']} is shorter than recorded")
        pad = -entry["size_bytes"] % 512
        if pad:
            yield b"\0" * pad
    yield b"\0" * 1024


def tar_size(files: list[dict[str, Any]]) -> int:
    """The exact byte length of `iter_tar` over these files."""
    return sum(512 + entry["size_bytes"] + (-entry["size_bytes"] % 512) for entry in files) + 1024


def lineage_json(lineage: dict[str, Any]) -> str:
    """`selfsup.json`: where a checkpoint came from."""
    return json.dumps(lineage, indent=2, sort_keys=True) + "\n"
