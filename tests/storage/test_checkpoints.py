"""Checkpoint files: atomic writes, sha256 verification, the streamed tar, aliases and pruning."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from storage.blobs import LocalBlobStore
from storage.checkpoints import iter_tar, load_resume_state, tar_size, verify_files, write_checkpoint
from storage.crud import aliases_by_score, prunable_checkpoints_among
from storage.tables import Checkpoint


def _write(store: LocalBlobStore, tmp_path: Path, version: int = 1):  # type: ignore[no-untyped-def]
    tokenizer = tmp_path / "tok"
    tokenizer.mkdir(exist_ok=True)
    (tokenizer / "tokenizer.json").write_text("{}")

    def save_model(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"w" * 1000)
        (folder / "config.json").write_text('{"model_type": "gpt2"}')

    return write_checkpoint(
        store=store,
        job_id="job_1",
        version=version,
        save_model=save_model,
        tokenizer_dir=tokenizer,
        text_files={"README.md": "# card"},
        resume_state={"step": 3, "tokens_seen": 99},
    )


def test_checkpoint_is_written_whole_and_verifies(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    written = _write(store, tmp_path)
    folder = store.path(written.prefix)
    assert sorted(f["name"] for f in written.files) == [
        "README.md",
        "config.json",
        "model.safetensors",
        "tokenizer.json",
    ]
    assert [f["name"] for f in written.resume_files] == ["resume/trainer_state.pt"]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]
    assert verify_files(folder, written.files + written.resume_files) is None
    assert load_resume_state(folder) == {"step": 3, "tokens_seen": 99}

    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:10] + b"x" + data[11:])
    assert "does not match its recorded sha256" in (verify_files(folder, written.files) or "")
    (folder / "model.safetensors").write_bytes(data[:500])
    assert "has 500 bytes, expected 1000" in (verify_files(folder, written.files) or "")


def test_a_failed_write_leaves_nothing(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")

    def broken(folder: Path) -> None:
        (folder / "model.safetensors").write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_checkpoint(
            store=store,
            job_id="job_1",
            version=1,
            save_model=broken,
            tokenizer_dir=tmp_path,
            text_files={},
            resume_state={},
        )
    assert list((tmp_path / "blobs" / "checkpoints" / "job_1").iterdir()) == []


def test_streamed_tar_has_the_announced_length_and_contents(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    written = _write(store, tmp_path)
    blob = b"".join(iter_tar(store, written.prefix, written.files, chunk=7))
    assert len(blob) == tar_size(written.files)
    with tarfile.open(fileobj=io.BytesIO(blob)) as archive:
        assert sorted(archive.getnames()) == sorted(f["name"] for f in written.files)
        assert archive.extractfile("model.safetensors").read() == b"w" * 1000  # type: ignore[union-attr]


def _ckpt(version: int, val_loss: float | None, final: bool = False) -> Checkpoint:
    return Checkpoint(
        id=f"c{version}",
        job_id="j",
        step=version * 10,
        version=version,
        val_loss=val_loss,
        is_final=final,
        blob_prefix="x",
    )


def test_aliases_and_pruning_keep_best_and_final() -> None:
    checkpoints = [_ckpt(1, 2.0), _ckpt(2, 1.0), _ckpt(3, 1.5), _ckpt(4, 1.6), _ckpt(5, 1.7, final=True)]
    scores = {c.id: c.val_loss for c in checkpoints if c.val_loss is not None}
    aliases = aliases_by_score(checkpoints, scores, mode="min")
    assert aliases == {"c1": [], "c2": ["best"], "c3": [], "c4": [], "c5": ["latest", "final"]}
    prunable = prunable_checkpoints_among(checkpoints, aliases, keep_last=2, keep=set())
    assert [c.id for c in prunable] == ["c1", "c3"]
    assert prunable_checkpoints_among(checkpoints, aliases, keep_last=10, keep=set()) == []
    # A checkpoint still waiting for its score (a probe runs after it is saved) is kept too.
    assert [c.id for c in prunable_checkpoints_among(checkpoints, aliases, keep_last=2, keep={"c1"})] == ["c3"]


def test_best_follows_the_metric_in_its_direction_newest_on_a_tie() -> None:
    checkpoints = [_ckpt(1, None), _ckpt(2, None), _ckpt(3, None)]
    accuracy = {"c1": 0.5, "c2": 0.75, "c3": 0.75}
    assert "best" in aliases_by_score(checkpoints, accuracy, mode="max")["c3"]
    assert "best" in aliases_by_score(checkpoints, accuracy, mode="min")["c1"]
    assert all("best" not in names for names in aliases_by_score(checkpoints, {}, mode="min").values())
