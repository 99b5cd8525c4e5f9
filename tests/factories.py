"""Test data: corpus slices of the shared sample, job specs, and helpers that drive the API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sqlalchemy.orm import Session

from models.build import SpecialTokenIds
from tests.service import wait_until
from workers.data.token_arrays import TokenArrays

SHARED_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
SHAKESPEARE = SHARED_DATA / "tinyshakespeare.txt"


def shakespeare_slice(n_bytes: int = 120_000) -> bytes:
    """The first `n_bytes` of tiny Shakespeare, cut at a line end."""
    data = SHAKESPEARE.read_bytes()[:n_bytes]
    return data[: data.rfind(b"\n") + 1]


def small_job_spec(corpus_id: str, **overrides: Any) -> dict[str, Any]:
    """A job that trains a tiny GPT-2 for a few dozen steps with two checkpoints."""
    spec: dict[str, Any] = {
        "name": "tiny-char",
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": {"family": "gpt2", "layers": 2, "heads": 2, "width": 64, "context_length": 32},
        "training": {"max_steps": 40, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5},
        "evaluation": {"every_steps": 20, "batches": 4},
        "checkpointing": {"every_steps": 20, "keep_last": 3},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and isinstance(spec.get(section), dict):
            spec[section] = {**spec[section], **values}
        else:
            spec[section] = values
    return spec


def upload_corpus(
    client: httpx.Client, data: bytes, *, name: str = "shakespeare.txt", content_type: str = "text/plain"
) -> dict[str, Any]:
    """POST the bytes as a corpus and return the 201 body."""
    response = client.post("/v1/corpora", params={"name": name}, content=data, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_corpus(client: httpx.Client, corpus_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll a corpus until ingest finished (ready or failed)."""

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/corpora/{corpus_id}").json()
        return body if body["status"] != "processing" else None

    return wait_until(finished, timeout=timeout, what=f"corpus {corpus_id} ingest")  # type: ignore[no-any-return]


def ready_corpus(
    client: httpx.Client,
    data: bytes | None = None,
    *,
    name: str = "shakespeare.txt",
    content_type: str = "text/plain",
    timeout: float = 120,
) -> dict[str, Any]:
    """Upload a corpus and wait until it is ready (an AssertionError naming the corpus if its ingest failed)."""
    corpus = upload_corpus(
        client, data if data is not None else shakespeare_slice(), name=name, content_type=content_type
    )
    corpus = wait_for_corpus(client, corpus["id"], timeout=timeout)
    assert corpus["status"] == "ready", f"corpus ingest failed: {corpus}"
    return corpus


def submit_job(client: httpx.Client, spec: dict[str, Any]) -> dict[str, Any]:
    """POST a job spec and return the 201 body."""
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_job(
    client: httpx.Client,
    job_id: str,
    *,
    statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled"),
    timeout: float = 300,
) -> dict[str, Any]:
    """Poll a job until it reaches one of `statuses`."""

    def reached() -> dict[str, Any] | None:
        body = client.get(f"/v1/jobs/{job_id}").json()
        return body if body["status"] in statuses else None

    return wait_until(reached, timeout=timeout, interval=0.3, what=f"job {job_id} to reach {statuses}")  # type: ignore[no-any-return]


def shakespeare_documents(n_bytes: int = 60_000, *, offset: int = 0) -> dict[str, list[str]]:
    """The documents of a tiny Shakespeare slice, split as ingest splits them (blank lines; sha256 fraction)."""
    from workers.data.documents import is_validation

    data = SHAKESPEARE.read_text()[offset : offset + n_bytes]
    documents = [d.strip("\n") for d in data[: data.rfind("\n") + 1].split("\n\n") if d.strip()]
    return {
        "train": [d for d in documents if not is_validation(d, 0.1)],
        "validation": [d for d in documents if is_validation(d, 0.1)],
    }


def write_shakespeare_dataset(folder: Path, tokenizer_spec: Any, n_bytes: int = 60_000) -> Any:
    """A dataset folder (tokenizer, token arrays, sentences) of a Shakespeare slice; returns its `TokenArrays`."""
    from workers.data.datasets import open_dataset, write_dataset

    splits = shakespeare_documents(n_bytes)
    write_dataset(folder, tokenizer_spec, {"shakespeare": lambda split: splits[split]})
    return open_dataset(folder)


def create_dataset(client: httpx.Client, request: dict[str, Any]) -> dict[str, Any]:
    """POST a dataset request and return the 201 body."""
    response = client.post("/v1/datasets", json=request)
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_dataset(client: httpx.Client, dataset_id: str, timeout: float = 300) -> dict[str, Any]:
    """Poll a dataset until curation finished (ready or failed)."""

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/datasets/{dataset_id}").json()
        return body if body["status"] != "processing" else None

    return wait_until(finished, timeout=timeout, what=f"dataset {dataset_id} curation")  # type: ignore[no-any-return]


def pending_corpus(service: Any, tenant: str = "alice") -> str:
    """A corpus whose upload is recorded but whose ingest has not run (its wake-up was lost): it stays
    `processing` until the reconciler's next look at it (`SELFSUP_LEASE_SECONDS` later), then fails, as its
    bytes were never stored. Recorded through `storage.crud` in the service's own database."""
    from storage import crud
    from storage.db import make_engine
    from storage.tables import new_id

    url = service.env.get("SELFSUP_DATABASE_URL") or f"sqlite:///{service.home / 'selfsup.db'}"
    engine = make_engine(url)
    try:
        with Session(engine) as session, session.begin():
            corpus = crud.create_corpus(
                session=session,
                tenant=crud.get_or_create_tenant(session=session, name=tenant),
                corpus_id=new_id("cor"),
                name="pending.txt",
                fmt="txt",
                compression=None,
                size_bytes=1,
                sha256=new_id("sha"),
            )
            return corpus.id
    finally:
        engine.dispose()


def api_error(response: httpx.Response, status: int) -> dict[str, Any]:
    """The `error` object of a response that must have `status`, with a code and a message."""
    assert response.status_code == status, (response.status_code, response.text)
    body: dict[str, Any] = response.json()["error"]
    assert body["code"] and body["message"], body
    return body


# Speakers of two plays in tiny Shakespeare, for a labelled task that is learnable from the text: which play
# a speech (its speaker's name left out) comes from.
PLAY_SPEAKERS = {
    "romeo_and_juliet": {"ROMEO", "JULIET", "Nurse", "BENVOLIO", "MERCUTIO", "TYBALT", "CAPULET", "LADY CAPULET"},
    "taming_of_the_shrew": {
        "PETRUCHIO",
        "KATHARINA",
        "TRANIO",
        "HORTENSIO",
        "BAPTISTA",
        "GRUMIO",
        "LUCENTIO",
        "GREMIO",
    },
}


def play_speeches(per_play: int = 100, *, min_chars: int = 80, max_chars: int = 400) -> list[dict[str, str]]:
    """`{"text", "label"}` examples: speeches of Romeo and Juliet and of The Taming of the Shrew, in file order."""
    examples: list[dict[str, str]] = []
    counts = dict.fromkeys(PLAY_SPEAKERS, 0)
    for block in SHAKESPEARE.read_text().split("\n\n"):
        speaker, _, speech = block.strip("\n").partition("\n")
        label = next((play for play, names in PLAY_SPEAKERS.items() if speaker.rstrip(":") in names), None)
        text = " ".join(speech.split())
        if label is None or len(text) < min_chars or counts[label] >= per_play:
            continue
        counts[label] += 1
        examples.append({"text": text[:max_chars], "label": label})
    return examples


def plays_corpus(n_bytes_each: int = 100_000) -> bytes:
    """Text of both plays (Romeo and Juliet, then The Taming of the Shrew), to pretrain on before probing."""
    text = SHAKESPEARE.read_text()
    parts = []
    for start in (text.index("ROMEO:\n"), text.index("PETRUCHIO:\n")):
        part = text[start : start + n_bytes_each]
        parts.append(part[: part.rfind("\n\n") + 1])
    return "\n".join(parts).encode()


def labelled_set_jsonl(examples: list[dict[str, Any]]) -> bytes:
    """JSONL bytes of labelled examples."""
    import json

    return "".join(json.dumps(e) + "\n" for e in examples).encode()


def upload_labelled_set(client: httpx.Client, data: bytes, *, name: str = "plays") -> httpx.Response:
    """POST a labelled set (JSONL) and return the response."""
    return client.post(
        "/v1/labelled-sets", params={"name": name}, content=data, headers={"Content-Type": "application/jsonl"}
    )


def _tokenizer_lines() -> list[str]:
    """Lines a tiny tokenizer is trained on, offline, for the base models the tests upload."""
    return [line for line in shakespeare_slice(20_000).decode("utf-8").splitlines() if line.strip()]


def save_tiny_hf_model(
    folder: Path, family: str, *, width: int = 32, safetensors: bool = True, vocab_padding: int = 0
) -> Path:
    """Save a tiny, randomly initialised GPT-2 (`gpt2`) or BERT (`bert`) and a tokenizer trained here into `folder`,
    as `save_pretrained` writes them (what a user archives and uploads to `POST /v1/models`). `vocab_padding`
    embedding rows past the tokenizer's length, as released models pad their vocabulary."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertForMaskedLM, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    if family == "gpt2":
        raw = Tokenizer(models.BPE())
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        raw.train_from_iterator(_tokenizer_lines(), trainer)
        eos = "<|endoftext|>"
        tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token=eos, eos_token=eos, unk_token=eos)
        vocab = len(tokenizer) + vocab_padding
        model: Any = GPT2LMHeadModel(
            GPT2Config(
                vocab_size=vocab,
                n_positions=64,
                n_embd=width,
                n_layer=2,
                n_head=2,
                bos_token_id=tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        )
    elif family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        raw = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        raw.decoder = decoders.WordPiece()
        raw.train_from_iterator(_tokenizer_lines(), trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_object=raw,
            pad_token="[PAD]",
            unk_token="[UNK]",
            cls_token="[CLS]",
            sep_token="[SEP]",
            mask_token="[MASK]",
        )
        vocab = len(tokenizer) + vocab_padding
        model = BertForMaskedLM(
            BertConfig(
                vocab_size=vocab,
                hidden_size=width,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=4 * width,
                max_position_embeddings=64,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    else:
        raise ValueError(f"no tiny {family} model to make")
    if safetensors:
        model.save_pretrained(folder)
    else:  # what older transformers wrote by default: a pickle
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), folder / "pytorch_model.bin")
    tokenizer.save_pretrained(folder)
    return folder


def tar_folder(folder: Path, *, arcname: str = "model") -> bytes:
    """`tar -czf - -C folder/.. folder` as bytes: the folder's files under one top-level folder `arcname`."""
    import io
    import tarfile

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname=arcname)
    return buffer.getvalue()


def zip_folder(folder: Path) -> bytes:
    """`cd folder && zip -r - .` as bytes: the folder's files at the top of a deflated zip."""
    import io
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def upload_model(client: httpx.Client, archive: bytes, *, name: str, content_type: str) -> dict[str, Any]:
    """POST an archive as a base model and return the 201 body."""
    response = client.post("/v1/models", params={"name": name}, content=archive, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    return response.json()


def wait_for_model(client: httpx.Client, model_id: str, timeout: float = 120) -> dict[str, Any]:
    """Poll an uploaded model until validation finished (ready or failed)."""

    def finished() -> dict[str, Any] | None:
        body = client.get(f"/v1/models/{model_id}").json()
        return body if body["status"] != "processing" else None

    return wait_until(finished, timeout=timeout, what=f"model {model_id} validation")  # type: ignore[no-any-return]


# Each objective's default family, and the special ids of a small vocabulary of that family's convention.
OBJECTIVE_FAMILIES = {"causal_lm": "gpt2", "masked_lm": "bert", "span_corruption": "t5", "contrastive": "bert"}
FAMILY_SPECIAL_IDS = {
    "gpt2": SpecialTokenIds(eos=0, unk=1, all=(0, 1)),
    "bert": SpecialTokenIds(eos=3, pad=0, unk=1, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4)),
    "t5": SpecialTokenIds(eos=1, pad=0, unk=2, sentinels=tuple(range(3, 103)), all=tuple(range(103))),
}


def random_token_arrays(family: str, context_length: int, *, text_ids: int = 40) -> TokenArrays:
    """Random text tokens in a vocabulary of `family`'s special tokens and `text_ids` others, with sentences (for
    contrastive) that all fill the context, so a contrastive batch has no padding."""
    special = FAMILY_SPECIAL_IDS[family]
    first = max(special.every) + 1
    rng = np.random.default_rng(0)
    train, validation = (rng.integers(first, first + text_ids, size=4000, dtype=np.int64) for _ in range(2))
    sentences = np.array([[start, start + 2 * context_length] for start in range(0, 3000, 100)], dtype=np.int64)
    return TokenArrays(
        train=train,
        validation=validation,
        vocab_size=first + text_ids,
        special=special,
        train_sentences=sentences,
        validation_sentences=sentences,
    )
