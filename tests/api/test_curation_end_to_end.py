"""Curation end to end on the embedded default: planted duplicates, near duplicates, boilerplate, PII and an
evaluation passage are removed and counted; a job on the 0.7/0.3 mixture draws its sources by weight; the
checkpoint's lineage names the dataset, its curation spec and its report's totals."""

from __future__ import annotations

import json
import random

import httpx
import pytest

from tests.factories import create_dataset, submit_job, upload_corpus, wait_for_corpus, wait_for_dataset, wait_for_job
from tests.service import Service

pytestmark = pytest.mark.integration

STOP = ["the", "and", "of", "to", "with", "that", "be", "have"]
WORDS = [
    f"{a}{b}"
    for a in ("river", "stone", "garden", "winter", "silver", "market", "harbor", "forest", "candle", "meadow")
    for b in ("s", "ed", "ing", "er", "ly", "ness", "ward", "side", "light", "field", "stone", "work")
]
BOILERPLATE = "Subscribe to our weekly letter for more updates."


def _document(rng: random.Random, sentences: int = 14) -> str:
    """Prose that every rule's defaults keep: 14 sentences of 8-14 words, stop words among them, one line."""
    out = []
    for _ in range(sentences):
        words = [rng.choice(STOP) if rng.random() < 0.25 else rng.choice(WORDS) for _ in range(rng.randint(8, 14))]
        out.append(" ".join(words).capitalize() + ".")
    return " ".join(out)


def _near_copy(document: str) -> str:
    """The document with two words changed (about 1%): well past the LSH threshold of 14 bands x 8 rows."""
    words = document.split(" ")
    for i in (len(words) // 3, 2 * len(words) // 3):
        words[i] = "lanternfish" if not words[i].endswith(".") else "lanternfish."
    return " ".join(words)


def _jsonl(documents: list[str]) -> bytes:
    return "".join(json.dumps({"text": d}) + "\n" for d in documents).encode()


def _ready(client: httpx.Client, documents: list[str], name: str) -> dict:
    corpus = wait_for_corpus(
        client, upload_corpus(client, _jsonl(documents), name=name, content_type="application/jsonl")["id"]
    )
    assert corpus["status"] == "ready", corpus
    return corpus


def test_curated_mixture_trains_by_weight_and_names_its_lineage(embedded_service: Service) -> None:
    client = embedded_service.client()
    rng = random.Random(12)
    evaluation = [_document(rng) for _ in range(12)]
    passage = " ".join(evaluation[0].split(" ")[20:40])  # 20 words: shares 13-grams with the evaluation text

    web = [_document(rng) for _ in range(60)]
    planted = {"exact_dedup": 0, "near_dedup": 0, "decontamination": 0, "line_dedup_lines": 0, "pii": 0}
    for i in range(5):  # exact duplicates of documents 0-4
        web.append(web[i])
        planted["exact_dedup"] += 1
    for i in range(5, 8):  # near duplicates of documents 5-7
        web.append(_near_copy(web[i]))
        planted["near_dedup"] += 1
    for i in range(10, 16):  # one boilerplate line in six documents (more than line_dedup.max_repeats = 3)
        web[i] = web[i] + "\n" + BOILERPLATE
        planted["line_dedup_lines"] += 1
    for i in (20, 21):  # the evaluation passage inside two training documents
        web[i] = web[i] + " " + passage.rstrip(".") + "."
        planted["decontamination"] += 1
    web[30] += " Write to alice@example.com or bob@example.org for a copy."
    web[31] += " The server at 93.184.216.34 answers."  # public: FineWeb leaves private addresses alone
    planted["pii"] += 3
    books = [_document(rng) for _ in range(40)] + [web[40]]  # one duplicate across sources
    planted["exact_dedup"] += 1

    web_corpus = _ready(client, web, "web.jsonl")
    books_corpus = _ready(client, books, "books.jsonl")
    eval_corpus = _ready(client, evaluation, "evaluation.jsonl")
    # "curation": {} is every rule with its defaults; the documents above are long enough (≈150 words, 14
    # sentences) for Gopher's and C4's defaults, so no threshold is adjusted.
    created = create_dataset(
        client,
        {
            "name": "web-and-books",
            "sources": [
                {"corpus_id": web_corpus["id"], "weight": 0.7},
                {"corpus_id": books_corpus["id"], "weight": 0.3},
            ],
            "curation": {},
            "decontaminate_against": [eval_corpus["id"]],
        },
    )
    dataset = wait_for_dataset(client, created["id"])
    assert dataset["status"] == "ready", dataset
    report = client.get(f"/v1/datasets/{dataset['id']}/report").json()
    rules = report["rules"]
    removed = {rule: rules[rule]["documents_removed"] for rule in rules}
    assert removed["exact_dedup"] == planted["exact_dedup"], rules["exact_dedup"]
    assert removed["near_dedup"] == planted["near_dedup"], rules["near_dedup"]
    assert removed["decontamination"] == planted["decontamination"], rules["decontamination"]
    assert rules["line_dedup"]["lines_removed"] == planted["line_dedup_lines"], rules["line_dedup"]
    assert rules["pii"]["replacements"] == planted["pii"], rules["pii"]
    for rule in ("line_dedup", "c4_lines", "gopher_repetition", "gopher_quality", "pii"):
        assert removed[rule] == 0, (rule, rules[rule])
    assert report["documents_in"] == len(web) + len(books)
    assert report["documents_out"] == len(web) + len(books) - sum(removed.values())
    assert dataset["totals"]["documents_out"] == report["documents_out"]

    job = submit_job(
        client,
        {
            "name": "curated-mixture",
            "dataset_id": dataset["id"],
            "objective": {"type": "causal_lm"},
            "tokenizer": {"type": "char"},
            "model": {"family": "gpt2", "layers": 1, "heads": 2, "width": 32, "context_length": 32},
            "training": {"max_steps": 60, "batch_size": 8, "learning_rate": 3e-3, "warmup_steps": 5},
            "evaluation": {"every_steps": 30, "batches": 2},
            "checkpointing": {"every_steps": 60, "keep_last": 1},
        },
    )
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", done

    # Tokens drawn per source (summed over the recorded points): 0.7 / 0.3 within 0.07, about three standard
    # deviations of 480 windows drawn by weight.
    drawn = {}
    for corpus in (web_corpus, books_corpus):
        points = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": f"tokens/{corpus['id']}"}).json()["data"]
        assert points, f"no tokens/{corpus['id']} metric"
        drawn[corpus["id"]] = sum(p["value"] for p in points)
    share = drawn[web_corpus["id"]] / sum(drawn.values())
    assert abs(share - 0.7) <= 0.07, drawn

    checkpoint = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"][-1]
    lineage = client.get(f"/v1/checkpoints/{checkpoint['id']}/files/selfsup.json").json()
    curated = lineage["curated_dataset"]
    assert curated["id"] == dataset["id"] and curated["curation"] == dataset["curation"]
    assert curated["report_totals"] == dataset["totals"]
    assert [(s["corpus_id"], s["share"]) for s in curated["sources"]] == [
        (web_corpus["id"], pytest.approx(0.7)),
        (books_corpus["id"], pytest.approx(0.3)),
    ]
    assert [c["corpus_id"] for c in curated["decontaminate_against"]] == [eval_corpus["id"]]
    card = client.get(f"/v1/checkpoints/{checkpoint['id']}/files/README.md").text
    assert dataset["id"] in card and "## Curated dataset" in card and "`near_dedup`" in card
    assert f"{report['documents_out']:,}" in card
