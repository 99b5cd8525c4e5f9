"""`/v1/models`: upload a Hugging Face model folder as an archive, validated before it is ready; unsafe or unusable
archives end `failed` with an error that says what to fix, and leave nothing stored."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.factories import (
    api_error,
    ready_corpus,
    save_tiny_hf_model,
    shakespeare_slice,
    small_job_spec,
    submit_job,
    tar_folder,
    upload_model,
    wait_for_job,
    wait_for_model,
    zip_folder,
)
from tests.service import Service

pytestmark = pytest.mark.integration

TAR_GZ, ZIP = "application/gzip", "application/zip"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny GPT-2 and BERT saved by transformers, and a GPT-2 twice as wide (for mismatched weights)."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "gpt2": save_tiny_hf_model(root / "gpt2", "gpt2"),
        "bert": save_tiny_hf_model(root / "bert", "bert"),
        "gpt2-wide": save_tiny_hf_model(root / "gpt2-wide", "gpt2", width=64),
        "gpt2-padded": save_tiny_hf_model(root / "gpt2-padded", "gpt2", vocab_padding=37),
    }


def _model_blobs(service: Service, model_id: str) -> list[str]:
    folder = service.home / "blobs" / "models" / model_id
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")) if folder.exists() else []


def _tar_with(folder: Path, extra: Callable[[tarfile.TarFile], None]) -> bytes:
    """A tar.gz of the folder's files at its top, plus whatever `extra` adds."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
        extra(tar)
    return buffer.getvalue()


def _add_file(name: str, data: bytes = b"hello") -> Callable[[tarfile.TarFile], None]:
    def add(tar: tarfile.TarFile) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    return add


def _add_symlink(tar: tarfile.TarFile) -> None:
    info = tarfile.TarInfo("vocab.txt")
    info.type = tarfile.SYMTYPE
    info.linkname = "/etc/passwd"
    tar.addfile(info)


def test_gpt2_and_bert_made_by_transformers_upload_and_become_ready(
    embedded_service: Service, tiny_models: dict[str, Path]
) -> None:
    client = embedded_service.client("alice")
    # A tar.gz with the folder under one top-level directory (as `tar -czf m.tgz my-model` makes it) ...
    gpt2 = upload_model(
        client, tar_folder(tiny_models["gpt2"], arcname="tiny-gpt2"), name="tiny-gpt2", content_type=TAR_GZ
    )
    # ... and a zip with the files at its top.
    bert = upload_model(client, zip_folder(tiny_models["bert"]), name="tiny-bert", content_type=ZIP)
    assert gpt2["id"].startswith("mdl_") and gpt2["status"] == "processing" and gpt2["archive_format"] == "tar"
    assert bert["archive_format"] == "zip" and len(bert["archive_sha256"]) == 64

    for uploaded, folder, family in ((gpt2, tiny_models["gpt2"], "gpt2"), (bert, tiny_models["bert"], "bert")):
        model = wait_for_model(client, uploaded["id"])
        assert model["status"] == "ready", model
        assert model["family"] == family and model["error"] is None and model["parameters"] > 10_000
        files = {f["name"]: f for f in model["files"]}
        expected = sorted(p.name for p in folder.iterdir())
        assert sorted(files) == expected  # the top-level folder of the tar was unwrapped
        assert files["model.safetensors"]["size_bytes"] == (folder / "model.safetensors").stat().st_size
        # The extracted folder is stored, the archive is not kept once extracted.
        assert _model_blobs(embedded_service, model["id"]) == ["hf", *(f"hf/{name}" for name in expected)]

    listed = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert gpt2["id"] in listed and bert["id"] in listed


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("pickled weights", "pickled files are refused (pytorch_model.bin)"),
        ("dot-dot member", "`..` in a path is not allowed"),
        ("absolute member", "absolute paths are not allowed"),
        ("symlink member", "links are not allowed"),
        ("zip bomb", "decompression bomb"),
        ("too many files", "more than the 256 entries allowed (SELFSUP_MODEL_MAX_FILES)"),
        ("unknown architecture", "unknown architecture 'gpt_neox'"),
        ("mismatched shapes", "the weights do not match config.json"),
        ("no tokenizer", "the tokenizer does not load"),
    ],
)
def test_refused_models_fail_with_a_clear_error_and_keep_nothing(
    embedded_service: Service, tiny_models: dict[str, Path], tmp_path: Path, case: str, expected: str
) -> None:
    gpt2 = tiny_models["gpt2"]
    content_type = TAR_GZ
    if case == "pickled weights":
        archive = tar_folder(save_tiny_hf_model(tmp_path / "pickled", "gpt2", safetensors=False))
    elif case == "dot-dot member":
        archive = _tar_with(gpt2, _add_file("../../escaped.txt"))
    elif case == "absolute member":
        archive = _tar_with(gpt2, _add_file("/tmp/escaped.txt"))
    elif case == "symlink member":
        archive = _tar_with(gpt2, _add_symlink)
    elif case == "zip bomb":  # 50 MB of zeros deflate to about 50 kB: a ratio near 1000
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
            zf.writestr("model.safetensors", bytes(50 * 1024 * 1024))
        archive, content_type = buffer.getvalue(), ZIP
    elif case == "too many files":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as zf:
            for i in range(300):
                zf.writestr(f"notes/{i}.txt", b"")
        archive, content_type = buffer.getvalue(), ZIP
    elif case == "unknown architecture":
        folder = shutil.copytree(gpt2, tmp_path / "neox")
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "gpt_neox"}))
        archive = tar_folder(folder)
    elif case == "mismatched shapes":  # config.json of the narrow GPT-2, weights of the wide one
        folder = shutil.copytree(gpt2, tmp_path / "mismatched")
        shutil.copy(tiny_models["gpt2-wide"] / "model.safetensors", folder / "model.safetensors")
        archive = tar_folder(folder)
    else:
        folder = shutil.copytree(gpt2, tmp_path / "no-tokenizer")
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
        archive = tar_folder(folder)

    client = embedded_service.client("alice")
    uploaded = upload_model(client, archive, name=case, content_type=content_type)
    model = wait_for_model(client, uploaded["id"])
    assert model["status"] == "failed", model
    assert expected in model["error"], model["error"]
    assert model["files"] == [] and model["family"] is None
    assert _model_blobs(embedded_service, model["id"]) == []  # neither the archive nor anything extracted
    assert not (Path("/tmp") / "escaped.txt").exists()


def test_not_an_archive_is_refused_at_upload(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    response = client.post(
        "/v1/models", content=b'{"model_type": "gpt2"}', headers={"Content-Type": "application/json"}
    )
    assert "neither a tar archive" in api_error(response, 415)["message"]


def test_models_are_tenant_scoped_and_delete_removes_the_files(
    embedded_service: Service, tiny_models: dict[str, Path]
) -> None:
    alice, bob = embedded_service.client("alice"), embedded_service.client("bob")
    uploaded = upload_model(alice, zip_folder(tiny_models["bert"]), name="to-delete", content_type=ZIP)
    model = wait_for_model(alice, uploaded["id"])
    assert model["status"] == "ready", model
    assert _model_blobs(embedded_service, model["id"])

    assert "no model" in api_error(bob.get(f"/v1/models/{model['id']}"), 404)["message"]
    api_error(bob.delete(f"/v1/models/{model['id']}"), 404)
    assert model["id"] not in [m["id"] for m in bob.get("/v1/models").json()["data"]]

    assert alice.delete(f"/v1/models/{model['id']}").status_code == 204
    api_error(alice.get(f"/v1/models/{model['id']}"), 404)
    assert _model_blobs(embedded_service, model["id"]) == []


@pytest.mark.parametrize(
    ("family", "objective", "auto_class"),
    [("gpt2", "causal_lm", "AutoModelForCausalLM"), ("bert", "masked_lm", "AutoModelForMaskedLM")],
)
def test_continue_pretraining_an_uploaded_model_and_load_the_checkpoint_with_auto_classes(
    embedded_service: Service,
    tiny_models: dict[str, Path],
    tmp_path: Path,
    family: str,
    objective: str,
    auto_class: str,
) -> None:
    import transformers

    alice = embedded_service.client("alice")
    folder = tiny_models[family]
    uploaded = upload_model(alice, tar_folder(folder), name=f"base-{family}", content_type=TAR_GZ)
    model = wait_for_model(alice, uploaded["id"])
    assert model["status"] == "ready", model
    corpus = ready_corpus(alice, shakespeare_slice(30_000))
    spec = small_job_spec(
        corpus["id"],
        name=f"continued-{family}",
        objective={"type": objective},
        init_from={"model_id": model["id"]},
        training={"max_steps": 6, "batch_size": 4, "warmup_steps": 1},
        evaluation={"every_steps": 6, "batches": 1},
        checkpointing={"every_steps": 6},
    )
    del spec["model"], spec["tokenizer"]  # both come from the uploaded model
    job = submit_job(alice, spec)
    assert job["spec"]["model"]["family"] == family and job["spec"]["model"]["width"] == 32
    done = wait_for_job(alice, job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())
    started = [e for e in alice.get(f"/v1/jobs/{job['id']}/events").json()["data"] if e["type"] == "started"]
    assert f"from model {model['id']}" in started[0]["message"]

    # Download the final checkpoint and load it as a fine-tuning script would, offline.
    checkpoint = next(
        c for c in alice.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"] if "final" in c["aliases"]
    )
    downloaded = tmp_path / "checkpoint"
    downloaded.mkdir()
    for entry in checkpoint["files"]:
        response = alice.get(f"/v1/checkpoints/{checkpoint['id']}/files/{entry['name']}")
        assert response.status_code == 200, response.text
        (downloaded / entry["name"]).write_bytes(response.content)
    loaded = getattr(transformers, auto_class).from_pretrained(downloaded, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(downloaded, local_files_only=True)
    assert loaded.config.model_type == family
    logits = loaded(**tokenizer("To be, or not to be", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tokenizer)

    # It trained from the uploaded weights (a few small steps away from them, not a fresh random init) ...
    name = "transformer.wte.weight" if family == "gpt2" else "bert.embeddings.word_embeddings.weight"
    before = load_file(folder / "model.safetensors")[name]
    after = loaded.state_dict()[name]
    assert 0 < (after - before).abs().max().item() < 0.05
    # ... kept its tokenizer byte for byte, and the lineage names the model and its files.
    sha256s = {f["name"]: f["sha256"] for f in checkpoint["files"]}
    uploaded_sha256s = {f["name"]: f["sha256"] for f in model["files"]}
    assert sha256s["tokenizer.json"] == uploaded_sha256s["tokenizer.json"]
    lineage = json.loads(alice.get(f"/v1/checkpoints/{checkpoint['id']}/files/selfsup.json").text)
    assert lineage["init_from"]["type"] == "model" and lineage["init_from"]["id"] == model["id"]
    assert {f["name"]: f["sha256"] for f in lineage["init_from"]["files"]} == uploaded_sha256s

    assert alice.delete(f"/v1/models/{model['id']}").status_code == 204  # the job is done: it may go now


def test_a_model_whose_vocabulary_is_padded_past_its_tokenizer_continues_and_keeps_its_vocab_size(
    embedded_service: Service, tiny_models: dict[str, Path], tmp_path: Path
) -> None:
    # Released models often have more embedding rows than tokens (vocab_size rounded up): the job's model is
    # built from the uploaded config.json, not from the tokenizer's length, so the weights fit.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    alice = embedded_service.client("alice")
    folder = tiny_models["gpt2-padded"]
    padded = AutoConfig.from_pretrained(folder).vocab_size
    assert padded == len(AutoTokenizer.from_pretrained(folder)) + 37
    model = wait_for_model(alice, upload_model(alice, tar_folder(folder), name="padded", content_type=TAR_GZ)["id"])
    assert model["status"] == "ready", model
    corpus = ready_corpus(alice, shakespeare_slice(20_000))
    spec = small_job_spec(
        corpus["id"],
        name="continued-padded",
        objective={"type": "causal_lm"},
        init_from={"model_id": model["id"]},
        training={"max_steps": 3, "batch_size": 4, "warmup_steps": 1},
        evaluation={"every_steps": 3, "batches": 1},
        checkpointing={"every_steps": 3},
    )
    del spec["model"], spec["tokenizer"]
    done = wait_for_job(alice, submit_job(alice, spec)["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())

    checkpoint = next(
        c for c in alice.get(f"/v1/jobs/{done['id']}/checkpoints").json()["data"] if "final" in c["aliases"]
    )
    downloaded = tmp_path / "checkpoint"
    downloaded.mkdir()
    for entry in checkpoint["files"]:
        (downloaded / entry["name"]).write_bytes(
            alice.get(f"/v1/checkpoints/{checkpoint['id']}/files/{entry['name']}").content
        )
    loaded = AutoModelForCausalLM.from_pretrained(downloaded, local_files_only=True)
    assert loaded.config.vocab_size == padded
    assert loaded.get_input_embeddings().weight.shape[0] == padded
    # The padding rows came from the upload too (moved by a few small steps at most, not a fresh random init).
    before = load_file(folder / "model.safetensors")["transformer.wte.weight"]
    assert 0 <= (loaded.state_dict()["transformer.wte.weight"] - before).abs().max().item() < 0.05
    tokenizer = AutoTokenizer.from_pretrained(downloaded, local_files_only=True)
    assert loaded(**tokenizer("To be, or not to be", return_tensors="pt")).logits.shape[-1] == padded
    assert alice.delete(f"/v1/models/{model['id']}").status_code == 204


def test_a_model_a_job_starts_from_is_kept_until_the_job_ends(service: Service, tiny_models: dict[str, Path]) -> None:
    # On both backends: which jobs use a model is read from their specs' JSON in SQL.
    alice = service.client("alice")
    model = wait_for_model(
        alice, upload_model(alice, zip_folder(tiny_models["bert"]), name="in-use", content_type=ZIP)["id"]
    )
    assert model["status"] == "ready", model
    corpus = ready_corpus(alice, shakespeare_slice(20_000))
    spec = small_job_spec(
        corpus["id"],
        name="long",
        objective={"type": "masked_lm"},
        init_from={"model_id": model["id"]},
        training={"max_steps": 100_000},
    )
    del spec["model"], spec["tokenizer"]
    job = submit_job(alice, spec)
    body = api_error(alice.delete(f"/v1/models/{model['id']}"), 409)
    assert body["details"] == {"job_ids": [job["id"]]} and "cancel them first" in body["message"]
    assert alice.get(f"/v1/models/{model['id']}").json()["status"] == "ready"

    assert alice.post(f"/v1/jobs/{job['id']}/cancel").status_code in (200, 202)
    assert wait_for_job(alice, job["id"])["status"] == "cancelled"
    assert alice.delete(f"/v1/models/{model['id']}").status_code == 204
