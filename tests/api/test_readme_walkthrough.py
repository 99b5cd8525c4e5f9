"""The README's walkthrough stays true (issue 11): its job spec is valid, its sample ships with the repo, every
URL it calls is a route, and its Python snippet loads and generates from a checkpoint of its own job, fetched
by alias (`/v1/jobs/{id}/checkpoints/latest|best|final`)."""

from __future__ import annotations

import contextlib
import io
import json
import re
import tarfile
from pathlib import Path
from typing import Any

import pytest

from selfsup.spec import JobSpec
from tests.factories import api_error, submit_job, upload_corpus, wait_for_corpus, wait_for_job
from tests.service import Service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORPUS_PLACEHOLDER = "cor_from_the_upload"


def _walkthrough() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Walkthrough with curl") :]
    return section[section.index("```bash\n") + len("```bash\n") : section.index("\n```\n")]


def _job_spec(walkthrough: str) -> dict[str, Any]:
    body = re.search(r"-d '(\{\n.*?\n\})'", walkthrough, re.DOTALL)
    assert body, "the walkthrough's job body"
    spec: dict[str, Any] = json.loads(body.group(1).replace('"\'"$CORPUS"\'"', f'"{CORPUS_PLACEHOLDER}"'))
    return spec


def _python_snippet(walkthrough: str) -> str:
    snippet = re.search(r"^\.venv/bin/python -c '\n(.*?)'$", walkthrough, re.DOTALL | re.MULTILINE)
    assert snippet, "the walkthrough's Python snippet, run with .venv/bin/python (where transformers is)"
    return snippet.group(1)


def test_the_walkthrough_can_be_pasted_into_a_fresh_clone(embedded_service: Service) -> None:
    walkthrough = _walkthrough()
    assert "../shared" not in walkthrough and "\npython " not in walkthrough
    sample = re.search(r"--data-binary @(\S+)", walkthrough)
    assert sample and (ROOT / sample.group(1)).is_file(), "the sample text ships with the repository"
    assert re.search(r"Idempotency-Key: \$\(", walkthrough), "a fresh Idempotency-Key per run, not a fixed one"
    commands = [line for line in walkthrough.splitlines() if not line.lstrip().startswith("#")]
    assert not any("_…" in line for line in commands), "ids are captured, not copied by hand"

    spec = _job_spec(walkthrough)
    assert JobSpec.model_validate(spec).corpus_ids == [CORPUS_PLACEHOLDER]

    # Every URL the walkthrough calls is a route of the API.
    document = embedded_service.client().get("/openapi.json").json()
    routes = [re.sub(r"\{[^}]+\}", "[^/]+", path) for path in document["paths"]]
    for path in re.findall(r"\$SELFSUP(/[^\"?\s]*)", walkthrough):
        concrete = re.sub(r"\$\w+", "x", path)
        assert any(re.fullmatch(route, concrete) for route in routes), path


def test_checkpoint_aliases_and_the_readme_snippet_on_the_readme_job(
    embedded_service: Service, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = embedded_service.client()
    walkthrough = _walkthrough()
    sample = ROOT / re.search(r"--data-binary @(\S+)", walkthrough).group(1)  # type: ignore[union-attr]
    corpus = wait_for_corpus(client, upload_corpus(client, sample.read_bytes())["id"])
    assert corpus["status"] == "ready", corpus

    # The README's job (its tokenizer and context length), made tiny: three checkpoints, each evaluated.
    spec = _job_spec(walkthrough)
    spec["corpus_ids"] = [corpus["id"]]
    spec["model"] = {**spec["model"], "layers": 1, "heads": 2, "width": 32}
    spec["training"] = {**spec["training"], "max_steps": 6, "batch_size": 4, "warmup_steps": 1}
    spec["evaluation"] = {"every_steps": 2, "batches": 1}
    spec["checkpointing"] = {"every_steps": 2, "keep_last": 3}
    job = wait_for_job(client, submit_job(client, spec)["id"])
    assert job["status"] == "succeeded", (job, embedded_service.log())

    listing = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in listing] == [2, 4, 6]
    best = min(listing, key=lambda c: (c["metrics"]["val_loss"], -c["version"]))
    expected = {"latest": listing[-1]["id"], "final": listing[-1]["id"], "best": best["id"]}
    for alias, checkpoint_id in expected.items():
        response = client.get(f"/v1/jobs/{job['id']}/checkpoints/{alias}")
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["id"] == checkpoint_id, alias
        assert body == client.get(f"/v1/checkpoints/{checkpoint_id}").json()  # the same resource
        assert alias in body["aliases"]
    for checkpoint in listing:  # the listing's aliases agree
        assert sorted(checkpoint["aliases"]) == sorted(a for a, i in expected.items() if i == checkpoint["id"])

    assert api_error(client.get(f"/v1/jobs/{job['id']}/checkpoints/oldest"), 422)["details"][0]["field"] == "alias"
    api_error(client.get("/v1/jobs/job_nope/checkpoints/latest"), 404)
    api_error(embedded_service.client("bob").get(f"/v1/jobs/{job['id']}/checkpoints/best"), 404)
    unfinished = submit_job(client, {**spec, "training": {**spec["training"], "max_steps": 100_000}})
    assert client.post(f"/v1/jobs/{unfinished['id']}/cancel").status_code == 202
    wait_for_job(client, unfinished["id"])
    assert (
        "no final checkpoint" in api_error(client.get(f"/v1/jobs/{unfinished['id']}/checkpoints/final"), 404)["message"]
    )

    # The final checkpoint says its context length, and the README's snippet runs on it as written.
    archive = client.get(f"/v1/checkpoints/{expected['final']}/archive")
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        tar.extractall(tmp_path / "ckpt", filter="data")
    context = spec["model"]["context_length"]
    assert json.loads((tmp_path / "ckpt" / "tokenizer_config.json").read_text())["model_max_length"] == context
    assert json.loads((tmp_path / "ckpt" / "generation_config.json").read_text())["max_length"] == context
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_python_snippet(walkthrough), "README.md", "exec"), {})  # noqa: S102 - the README's own code
    lines = printed.getvalue()
    assert lines.startswith("ROMEO:") and "JULIET:" in lines, lines
