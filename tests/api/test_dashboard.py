"""The web dashboard at `/`, driven in headless Chromium as a person uses it: sign in with a key, watch a job's
loss curve gain points while it trains, read its events, checkpoints and spec, download a checkpoint, and read a
corpus's statistics and its curation report.

Chromium is Debian's `chromium` (`./dev test` installs it where it can), driven by Playwright. Where it is missing
the browser test skips, except in CI (`CI=true`), where it fails. A screenshot of the job page is kept in
`SELFSUP_TEST_ARTIFACTS` (default `test-artifacts/`, ignored by git); `docs/dashboard.png`, the README's picture,
is written when it is missing or when `SELFSUP_UPDATE_DOCS_SCREENSHOT=1`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI
from tests.factories import (
    create_dataset,
    shakespeare_slice,
    small_job_spec,
    submit_job,
    upload_corpus,
    wait_for_corpus,
    wait_for_dataset,
    wait_for_job,
)
from tests.service import REPO, Service

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("SELFSUP_TEST_CHROMIUM", "/usr/bin/chromium"))
# Offline and quiet: no first-run work, no update or sync traffic, no GPU in a container.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("SELFSUP_TEST_ARTIFACTS") or REPO / "test-artifacts")
DOCS_SCREENSHOT = REPO / "docs" / "dashboard.png"
# A corpus name a careless page would turn into markup.
HOSTILE_NAME = 'tiny <img src=x id="injected"> shakespeare'
# What a page shows where it printed a missing value instead of leaving it out.
MISSING = re.compile(r"\b(null|undefined|NaN)\b")


def _missing(what: str, why: str) -> None:
    """Skip here, fail in CI: a green CI run must have driven the dashboard in a browser."""
    message = f"{what} is not available ({why}); `./dev test` installs Debian's chromium where it runs as root"
    if IN_CI:
        pytest.fail(f"{message}; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium under Playwright, started once for this module."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        _missing("Playwright", str(exc))
    if not CHROMIUM.exists():
        _missing("Chromium", f"no {CHROMIUM}")
    expect.set_options(timeout=60_000)  # the page polls every 2 s on a busy 2-core machine
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def _shows_no_missing_values(locator: Any) -> None:
    from playwright.sync_api import expect

    expect(locator).not_to_contain_text(MISSING)


def test_dashboard_is_static_and_outside_the_api_schema(embedded_service: Service) -> None:
    client = embedded_service.client("alice")
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script: the policy forbids it
    script = client.get("/ui/vendor/uPlot.iife.min.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "uPlot" in script.text
    assert client.get("/ui/no-such-file.js").json()["error"]["code"] == "not_found"
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(p.startswith("/ui") for p in paths)
    # Nothing is loaded from elsewhere (the service runs offline): no URL in the app's own files.
    for name in ("index.html", "app.js", "app.css"):
        text = (REPO / "api" / "dashboard" / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), name


def test_dashboard_follows_a_training_job(embedded_service: Service, browser: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    key = embedded_service.create_key("dashboard")  # a tenant of its own: its lists hold this test's data only
    client = embedded_service.client("dashboard")
    corpus = wait_for_corpus(client, upload_corpus(client, shakespeare_slice(40_000), name=HOSTILE_NAME)["id"])
    assert corpus["status"] == "ready", corpus
    dataset = create_dataset(client, {"name": "curated-demo", "sources": [{"corpus_id": corpus["id"]}], "curation": {}})
    spec = small_job_spec(
        corpus["id"],
        name="dashboard-demo",
        training={"max_steps": 120},
        evaluation={"every_steps": 30, "batches": 2},
        checkpointing={"every_steps": 60},
    )
    job = submit_job(client, spec)
    # Paused before it trains (or at its next step, had it started), so the page sees the curve from its start.
    assert client.post(f"/v1/jobs/{job['id']}/pause").status_code == 202
    wait_for_job(client, job["id"], statuses=("paused",))

    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))

    # Sign in: a wrong key is refused, the right one is kept in this tab's sessionStorage only.
    page.goto(f"{embedded_service.base_url}/")
    page.fill("#api-key", "ss_not-a-key")
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#sign-in-message")).to_have_text("This key was not accepted.")
    errors.clear()  # Chromium logs the refused request (401) as a console error; that one was wanted
    page.fill("#api-key", key)
    page.click("#sign-in button[type=submit]")
    expect(page.locator("#nav")).to_be_visible()
    storage = page.evaluate(
        "() => ({local: JSON.stringify(localStorage), session: sessionStorage.getItem('selfsup.apiKey')})"
    )
    assert storage["session"] == key and key not in storage["local"], storage
    assert context.cookies() == []

    # The jobs list shows the job with its status and progress.
    row = page.locator("#jobs tbody tr", has_text="dashboard-demo")
    expect(row).to_contain_text("paused")
    expect(row.locator("progress")).to_have_attribute("max", "120")
    _shows_no_missing_values(page.locator("main"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-jobs.png"))
    row.get_by_role("link", name="dashboard-demo").click()
    expect(page).to_have_url(re.compile(f"#/jobs/{job['id']}$"))

    # The job page, polled while the job is paused: its events are in, so its metrics were read too.
    loss_chart = page.locator("#loss-chart")
    expect(page.locator("#events")).to_contain_text("paused")
    points_before = int(loss_chart.get_attribute("data-points") or "-1")
    assert 0 <= points_before < 13, points_before  # 120 steps log train_loss 13 times: step 1, then every 10

    # Resume from the page; the curve gains points as the job trains, without a reload.
    page.click("#resume")
    done = wait_for_job(client, job["id"])
    assert done["status"] == "succeeded", (done, embedded_service.log())
    metrics = client.get(f"/v1/jobs/{job['id']}/metrics").json()["data"]
    train_steps = {m["step"] for m in metrics if m["name"] == "train_loss"}
    val_steps = {m["step"] for m in metrics if m["name"] == "val_loss"}
    lr_steps = {m["step"] for m in metrics if m["name"] == "learning_rate"}
    assert len(train_steps) > points_before
    expect(loss_chart).to_have_attribute("data-points", str(len(train_steps)))
    expect(loss_chart).to_have_attribute("data-val-loss-points", str(len(val_steps)))
    expect(page.locator("#lr-chart")).to_have_attribute("data-points", str(len(lr_steps)))
    expect(loss_chart.locator("canvas")).to_have_count(1)
    expect(page.locator("#job-summary")).to_contain_text("succeeded")
    expect(page.locator("#job-summary")).to_contain_text("120 / 120")

    # Events, checkpoints (newest first, with aliases) and the spec with its defaults filled in.
    events = page.locator("#events")
    for event in ("queued", "paused", "started", "evaluation", "checkpoint_saved", "finished"):
        expect(events).to_contain_text(event)
    checkpoints = client.get(f"/v1/jobs/{job['id']}/checkpoints").json()["data"]
    assert [c["step"] for c in checkpoints] == [60, 120]
    rows = page.locator("#checkpoints tbody tr")
    expect(rows).to_have_count(2)
    final = checkpoints[-1]
    for alias in final["aliases"]:
        expect(rows.first).to_contain_text(alias)
    assert json.loads(page.locator("#spec").text_content() or "") == done["spec"]
    for part in ("#job-summary", "#checkpoints", "#events"):  # (the spec itself may hold nulls)
        _shows_no_missing_values(page.locator(part))
    expect(page.locator(".actions button")).to_have_count(0)  # nothing to do to a finished job

    # The screenshot: a test artifact always, the README's picture when asked for.
    page.evaluate("() => window.scrollTo(0, 0)")
    shot = ARTIFACTS / "dashboard-job.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if not DOCS_SCREENSHOT.exists() or os.environ.get("SELFSUP_UPDATE_DOCS_SCREENSHOT") == "1":
        page.screenshot(path=str(DOCS_SCREENSHOT))
    # Downloads carry the key in a header (never in the URL): the archive and one file, as the API serves them.
    with page.expect_download() as archive_download:
        rows.first.get_by_role("link", name=re.compile(r"^archive")).click()
    assert archive_download.value.suggested_filename == f"{job['id']}-v2.tar"
    archive_path = tmp_path / "final.tar"
    archive_download.value.save_as(archive_path)
    with tarfile.open(fileobj=io.BytesIO(archive_path.read_bytes())) as archive:
        assert sorted(archive.getnames()) == sorted(f["name"] for f in final["files"])
    rows.first.locator("details summary").click()
    with page.expect_download() as file_download:
        rows.first.get_by_role("link", name="config.json", exact=True).click()
    config_path = tmp_path / "config.json"
    file_download.value.save_as(config_path)
    expected = next(f["sha256"] for f in final["files"] if f["name"] == "config.json")
    assert hashlib.sha256(config_path.read_bytes()).hexdigest() == expected

    # The corpus page: its statistics, its name shown as text (never markup), and its curation report.
    page.locator("#job-summary").get_by_role("link", name=corpus["id"]).click()
    stats = page.locator("#corpus-stats")
    expect(stats).to_contain_text(f"{corpus['documents']:,}")
    expect(stats).to_contain_text(f"{corpus['characters']:,}")
    expect(stats).to_contain_text(f"{corpus['train_documents']:,}")
    expect(stats).to_contain_text(corpus["sha256"])
    expect(page.locator("h1")).to_contain_text(HOSTILE_NAME)
    expect(page.locator("#injected")).to_have_count(0)
    ready = wait_for_dataset(client, dataset["id"])
    assert ready["status"] == "ready", ready
    curation = page.locator("#corpus-curation")
    expect(curation).to_contain_text("curated-demo")
    report = client.get(f"/v1/datasets/{dataset['id']}/report").json()
    train_part = next(s for s in report["sources"] if s["name"] == "sources[0].train")
    expect(curation).to_contain_text(f"{train_part['documents_in']:,} → {train_part['documents_out']:,}")
    _shows_no_missing_values(page.locator("main"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-corpus.png"), full_page=True)

    # The dataset's whole report, one row per rule.
    curation.get_by_role("link", name="curated-demo").click()
    rules = page.locator("#dataset-report tbody tr")
    expect(rules).to_have_count(len(report["rules"]))
    expect(page.locator("#dataset-report")).to_contain_text(f"{report['documents_in']:,} → {report['documents_out']:,}")
    _shows_no_missing_values(page.locator("main"))
    page.screenshot(path=str(ARTIFACTS / "dashboard-dataset.png"), full_page=True)

    # Signing out forgets the key.
    page.click("#sign-out")
    expect(page.locator("#sign-in")).to_be_visible()
    assert page.evaluate("() => sessionStorage.length + localStorage.length") == 0

    context.close()
    assert errors == [], errors
