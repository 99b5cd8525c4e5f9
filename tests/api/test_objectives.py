"""Every objective through HTTP on the embedded default: submit, train, download, load with the stock class.

Each job gives only the objective, a small shape and a short budget: the family, the tokenizer and its
special tokens come from the objective's defaults, as a client who names nothing else gets them.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from tests.factories import ready_corpus, submit_job, wait_for_job
from tests.service import Service

pytestmark = pytest.mark.integration

ENCODER_WEIGHT = "encoder.layer.0.attention.self.query.weight"


@pytest.fixture(scope="module")
def corpus(embedded_service: Service) -> dict[str, Any]:
    """One tiny Shakespeare corpus for every job here (its tokenized arrays are shared per tokenizer)."""
    return ready_corpus(embedded_service.client("alice"))


def _job(corpus_id: str, objective: dict[str, Any], **sections: Any) -> dict[str, Any]:
    return {
        "corpus_ids": [corpus_id],
        "objective": objective,
        "model": {"layers": 2, "heads": 2, "width": 64, "context_length": 32, **sections.get("model", {})},
        "training": {"max_steps": 30, "batch_size": 16, "learning_rate": 3e-3, "warmup_steps": 3},
        "evaluation": {"every_steps": 30, "batches": 4},
        "checkpointing": {"every_steps": 30},
    }


def _train(client: httpx.Client, spec: dict[str, Any], service: Service) -> dict[str, Any]:
    job = submit_job(client, spec)
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", (done, service.log())
    return done


def _falls(client: httpx.Client, job_id: str, metric: str = "train_loss") -> list[float]:
    values = [m["value"] for m in client.get(f"/v1/jobs/{job_id}/metrics", params={"name": metric}).json()["data"]]
    assert len(values) >= 3 and values[-1] < values[0], (metric, values)
    return values


def _download(client: httpx.Client, job_id: str, folder: Path) -> tuple[Path, dict[str, Any]]:
    final = client.get(f"/v1/jobs/{job_id}/checkpoints").json()["data"][-1]
    response = client.get(f"/v1/checkpoints/{final['id']}/archive")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(response.content)) as archive:
        archive.extractall(folder, filter="data")
    assert not (folder / "resume").exists()
    return folder, final


def _classifier_starts_from_the_encoder(folder: Path, prefix: str, new: set[str]) -> None:
    """`AutoModelForSequenceClassification(num_labels=2)` finds every pretrained encoder weight."""
    from transformers import AutoModelForSequenceClassification

    classifier, info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=2, local_files_only=True, output_loading_info=True
    )
    assert set(info["missing_keys"]) == new, info["missing_keys"]
    assert not info["mismatched_keys"]
    saved = load_file(folder / "model.safetensors")
    key = next(k for k in saved if k.endswith(ENCODER_WEIGHT))
    assert torch.equal(classifier.state_dict()[f"{prefix}.{ENCODER_WEIGHT}"], saved[key])
    logits = classifier(**_tokens(folder, ["Before we proceed any further, hear me speak."])).logits
    assert logits.shape == (1, 2)


def _tokens(folder: Path, texts: list[str]) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True)(texts, return_tensors="pt", padding=True)


def test_masked_lm_fills_masks_and_starts_a_classifier(
    embedded_service: Service, corpus: dict[str, Any], tmp_path: Path
) -> None:
    client = embedded_service.client("alice")
    done = _train(client, _job(corpus["id"], {"type": "masked_lm"}), embedded_service)
    spec = done["spec"]
    assert spec["model"]["family"] == "bert" and spec["tokenizer"]["type"] == "wordpiece"
    assert {"masked_accuracy", "val_masked_accuracy", "val_loss"} <= set(done["metrics"])
    assert 0.0 <= done["metrics"]["masked_accuracy"] <= 1.0
    _falls(client, done["id"])

    folder, _ = _download(client, done["id"], tmp_path / "ckpt")
    card = (folder / "README.md").read_text()
    assert "AutoModelForMaskedLM" in card and "masked language modelling" in card and "15%" in card
    from transformers import AutoModelForMaskedLM, AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForMaskedLM.from_pretrained(folder, local_files_only=True)
    assert tokenizer.mask_token == "[MASK]" and tokenizer.cls_token == "[CLS]"
    filled = pipeline("fill-mask", model=model, tokenizer=tokenizer)(
        f"Before we proceed any {tokenizer.mask_token}, hear me speak.", top_k=3
    )
    assert len(filled) == 3 and all(f["sequence"].startswith("Before we proceed any") for f in filled)
    # BERT's pooler is trained by next-sentence prediction, which masked LM does not do: it is new too.
    _classifier_starts_from_the_encoder(
        folder,
        "bert",
        {"classifier.weight", "classifier.bias", "bert.pooler.dense.weight", "bert.pooler.dense.bias"},
    )


def test_span_corruption_trains_a_t5_that_stock_code_loads(
    embedded_service: Service, corpus: dict[str, Any], tmp_path: Path
) -> None:
    client = embedded_service.client("alice")
    done = _train(client, _job(corpus["id"], {"type": "span_corruption"}), embedded_service)
    assert done["spec"]["model"]["family"] == "t5" and done["spec"]["tokenizer"]["type"] == "unigram"
    _falls(client, done["id"])

    folder, _ = _download(client, done["id"], tmp_path / "ckpt")
    assert "AutoModelForSeq2SeqLM" in (folder / "README.md").read_text()
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForSeq2SeqLM.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "T5ForConditionalGeneration"
    inputs = tokenizer("Before we <extra_id_0> any further, hear me speak.", return_tensors="pt")
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") in inputs["input_ids"][0].tolist()
    generated = model.generate(**inputs, max_new_tokens=8)
    assert generated.shape[1] > 1 and tokenizer.decode(generated[0]).startswith("<pad>")
    # What a fine-tuning script does: sources and targets through the tokenizer, the loss from the model.
    batch = tokenizer(["hear me speak"], text_target=["<extra_id_0> speak"], return_tensors="pt")
    assert torch.isfinite(model(**batch).loss)


def test_contrastive_embeddings_load_as_sentence_transformers(
    embedded_service: Service, corpus: dict[str, Any], tmp_path: Path
) -> None:
    client = embedded_service.client("alice")
    done = _train(client, _job(corpus["id"], {"type": "contrastive"}), embedded_service)
    spec = done["spec"]
    assert spec["model"]["family"] == "bert" and spec["model"]["dropout"] == 0.1
    assert {"retrieval_accuracy", "val_retrieval_accuracy"} <= set(done["metrics"])
    _falls(client, done["id"])

    folder, final = _download(client, done["id"], tmp_path / "ckpt")
    names = {f["name"] for f in final["files"]}
    assert {"modules.json", "sentence_bert_config.json", "1_Pooling/config.json"} <= names
    assert "SentenceTransformer" in (folder / "README.md").read_text()
    from transformers import AutoModel

    model = AutoModel.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "BertModel"
    _classifier_starts_from_the_encoder(folder, "bert", {"classifier.weight", "classifier.bias"})

    sentence_transformers = pytest.importorskip("sentence_transformers", reason="the test extras install it")
    embedder = sentence_transformers.SentenceTransformer(str(folder), local_files_only=True)
    embeddings = embedder.encode(["Before we proceed any further, hear me speak.", "Speak, speak."])
    assert embeddings.shape == (2, 64)


def test_llama_is_a_causal_lm_family(embedded_service: Service, corpus: dict[str, Any], tmp_path: Path) -> None:
    client = embedded_service.client("alice")
    spec = _job(corpus["id"], {"type": "causal_lm"}, model={"family": "llama"})
    spec["tokenizer"] = {"type": "char"}
    done = _train(client, spec, embedded_service)
    _falls(client, done["id"])

    folder, _ = _download(client, done["id"], tmp_path / "ckpt")
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True)
    assert type(model).__name__ == "LlamaForCausalLM"
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    generated = pipeline("text-generation", model=model, tokenizer=tokenizer)(
        "ROMEO:\n", max_new_tokens=10, do_sample=False
    )
    assert generated[0]["generated_text"].startswith("ROMEO:\n")


@pytest.mark.parametrize(
    ("objective", "sections", "field", "words"),
    [
        ({"type": "masked_lm"}, {"model": {"family": "gpt2"}}, "model.family", "trains the families bert or roberta"),
        ({"type": "span_corruption", "noise_density": 0.9}, {}, "objective.noise_density", "0.5"),
        ({"type": "contrastive"}, {"training": {"batch_size": 1}}, "training.batch_size", "at least 2"),
    ],
)
def test_an_objective_refuses_a_spec_it_cannot_train(
    embedded_service: Service,
    corpus: dict[str, Any],
    objective: dict[str, Any],
    sections: dict[str, Any],
    field: str,
    words: str,
) -> None:
    response = embedded_service.client("alice").post(
        "/v1/jobs", json={"corpus_ids": [corpus["id"]], "objective": objective, **sections}
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["details"][0]["field"] == field and words in error["details"][0]["message"], error
    assert error["message"].startswith(f"{field}: ")
