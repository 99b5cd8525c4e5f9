"""The `selfsup` command's client verbs, run as users run them, against the real service."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from selfsup_client import Client, Job
from tests.client.conftest import Trained
from tests.conftest import IN_CI
from tests.factories import labelled_set_jsonl, play_speeches, small_job_spec
from tests.service import REPO, Service

pytestmark = pytest.mark.integration

SELFSUP = [sys.executable, "-m", "selfsup.cli"]
TMUX = shutil.which("tmux") or "/usr/bin/tmux"


@pytest.fixture(scope="module")
def cli_env(embedded_service: Service, sdk_key: str) -> dict[str, str]:
    """The environment of a user who set SELFSUP_URL and SELFSUP_API_KEY."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SELFSUP_")}
    env.update({"SELFSUP_URL": embedded_service.base_url, "SELFSUP_API_KEY": sdk_key, "PYTHONUNBUFFERED": "1"})
    return env


def selfsup(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `selfsup ARGS…` (the server's command, which hands client verbs to the client's)."""
    return subprocess.run([*SELFSUP, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def as_json(result: subprocess.CompletedProcess[str]) -> Any:
    """The parsed stdout of a `--json` command that must have succeeded."""
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cli_job(
    cli_env: dict[str, str], sdk: Client, corpus_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """A corpus uploaded and a job created from a YAML spec, with the command line."""
    corpus = as_json(
        selfsup(cli_env, "corpora", "upload", str(corpus_file), "--name", "cli-corpus", "--wait", "--json")
    )
    assert corpus["status"] == "ready" and corpus["name"] == "cli-corpus", corpus
    spec_file = tmp_path_factory.mktemp("spec") / "job.yaml"
    spec_file.write_text(yaml.safe_dump(small_job_spec(corpus["id"], name="cli-tiny", training={"max_steps": 30})))
    job = as_json(selfsup(cli_env, "jobs", "create", str(spec_file), "--json"))
    assert job["status"] == "queued" and job["max_steps"] == 30 and job["name"] == "cli-tiny", job
    # Paused at once (through the SDK: quicker than starting a command) until the watch test resumes it,
    # so that test sees it change while it watches.
    paused = sdk.jobs.pause(job["id"])
    assert paused.status == "paused" or paused.pause_requested, paused
    return {"corpus": corpus, "job": job}


def test_json_output_of_every_reading_verb(cli_env: dict[str, str], cli_job: dict[str, Any]) -> None:
    corpus, job = cli_job["corpus"], cli_job["job"]
    assert as_json(selfsup(cli_env, "corpora", "show", corpus["id"], "--json"))["sha256"] == corpus["sha256"]
    assert corpus["id"] in [c["id"] for c in as_json(selfsup(cli_env, "corpora", "list", "--json"))]
    assert as_json(selfsup(cli_env, "jobs", "show", job["id"], "--json"))["spec"]["name"] == "cli-tiny"
    listed = as_json(selfsup(cli_env, "jobs", "list", "--limit", "500", "--json"))
    assert job["id"] in [j["id"] for j in listed] and all(j["status"] for j in listed)
    table = selfsup(cli_env, "jobs", "list")
    assert table.returncode == 0 and job["id"] in table.stdout, table


def test_watch_shows_a_live_progress_bar_and_exits_0_on_success(
    cli_env: dict[str, str], cli_job: dict[str, Any]
) -> None:
    if shutil.which(TMUX) is None:  # ./dev test installs it where it can
        (pytest.fail if IN_CI else pytest.skip)("tmux is not installed: the watch test runs in a real terminal")
    job_id = cli_job["job"]["id"]
    tmux = [TMUX, "-L", f"selfsup-test-{os.getpid()}"]
    command = f"{shlex.join([*SELFSUP, 'jobs', 'watch', job_id])}; echo WATCH-EXIT=$?; sleep 300"
    subprocess.run(
        [*tmux, "new-session", "-d", "-x", "120", "-y", "30", "-c", str(REPO), command], env=cli_env, check=True
    )

    def screen_when(predicate: Callable[[str], bool], what: str) -> str:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pane = subprocess.run(
                [*tmux, "capture-pane", "-p", "-J", "-S", "-100"], capture_output=True, text=True, check=True
            ).stdout
            if predicate(pane):
                return pane
            time.sleep(0.3)
        raise AssertionError(f"the watch never showed {what}:\n{pane}")

    try:
        paused = screen_when(lambda pane: re.search(r"paused .*step \d+/30", pane) is not None, "the paused job")
        resumed = as_json(selfsup(cli_env, "jobs", "resume", job_id, "--json"))
        assert resumed["status"] in ("queued", "running"), resumed
        final = screen_when(lambda pane: "WATCH-EXIT=" in pane, "its exit")
    finally:
        subprocess.run([*tmux, "kill-server"], check=False)
    assert "WATCH-EXIT=0" in final, final
    assert "succeeded" not in paused, paused
    assert re.search(r"step 30/30 +loss \d+\.\d{4} +val \d+\.\d{4} +[\d,]+ tok/s +ETA", final), final
    for event in ("paused", "resume_requested", "started", "checkpoint_saved", "finished"):
        assert f" {event}: " in final, (event, final)
    assert f"{job_id} succeeded at step 30/30" in final, final


def test_download_verified_into_a_folder(
    cli_env: dict[str, str], cli_job: dict[str, Any], sdk: Client, tmp_path: Path
) -> None:
    job_id = cli_job["job"]["id"]
    assert sdk.jobs.wait(job_id, timeout=300, poll_interval=0.3).status == "succeeded"
    result = as_json(selfsup(cli_env, "checkpoints", "download", job_id, "-o", str(tmp_path / "ckpt"), "--json"))
    assert result["step"] == 30 and "latest" in result["aliases"] and result["path"] == str(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(f["name"] for f in result["files"])
    again = selfsup(cli_env, "checkpoints", "download", result["id"], "-o", str(tmp_path / "ckpt"))
    assert again.returncode == 1 and "not an empty folder" in again.stderr and "Traceback" not in again.stderr


def test_labelled_sets_and_probes(cli_env: dict[str, str], probed: Trained, sdk: Client, tmp_path: Path) -> None:
    path = tmp_path / "plays.jsonl"
    path.write_bytes(labelled_set_jsonl(play_speeches(per_play=12)))
    uploaded = as_json(selfsup(cli_env, "labelled-sets", "upload", str(path), "--name", "cli-plays", "--json"))
    assert uploaded["name"] == "cli-plays" and uploaded["examples"] == 24, uploaded
    assert as_json(selfsup(cli_env, "labelled-sets", "show", uploaded["id"], "--json")) == uploaded
    assert uploaded["id"] in [s["id"] for s in as_json(selfsup(cli_env, "labelled-sets", "list", "--json"))]
    listed = selfsup(cli_env, "labelled-sets", "list")
    assert listed.returncode == 0 and uploaded["id"] in listed.stdout and "cli-plays" in listed.stdout

    final = sdk.jobs.checkpoints(probed.job.id)[-1]
    queued = as_json(selfsup(cli_env, "checkpoints", "probe", final.id, "--set", uploaded["id"], "--json"))
    # The probe is named after the labelled set unless --name says otherwise.
    assert {(r["name"], r["step"], r["random_init"]) for r in queued} == {
        ("cli-plays", final.step, False),
        ("cli-plays", 0, True),
    }
    deadline = time.monotonic() + 300
    while not all(r.finished for r in sdk.jobs.probes(probed.job.id) if r.name == "cli-plays"):
        assert time.monotonic() < deadline
        time.sleep(0.5)
    runs = [r for r in as_json(selfsup(cli_env, "jobs", "probes", probed.job.id, "--json")) if r["name"] == "cli-plays"]
    assert {r["id"] for r in runs} == {r["id"] for r in queued} and all(r["status"] == "succeeded" for r in runs)
    table = selfsup(cli_env, "jobs", "probes", probed.job.id)
    accuracy = next(r["accuracy"] for r in runs if not r["random_init"])
    assert table.returncode == 0 and "random init" in table.stdout and f"{accuracy:.3f}" in table.stdout

    assert selfsup(cli_env, "labelled-sets", "delete", uploaded["id"]).returncode == 0
    gone = selfsup(cli_env, "labelled-sets", "show", uploaded["id"])
    assert gone.returncode == 1 and "Traceback" not in gone.stderr


def test_watch_of_a_failing_job_exits_non_zero(cli_env: dict[str, str], failing_job: Job) -> None:
    result = selfsup(cli_env, "jobs", "watch", failing_job.id)
    assert result.returncode == 1, result
    assert f"{failing_job.id} failed" in result.stderr and "context_length" in result.stderr, result.stderr
    lines = [
        json.loads(line) for line in selfsup(cli_env, "jobs", "watch", failing_job.id, "--json").stdout.splitlines()
    ]
    assert lines[0]["event"] == "status" and lines[-1]["event"] == "end"
    assert lines[-1]["data"]["status"] == "failed"


def test_errors_print_the_api_message_and_exit_non_zero(
    cli_env: dict[str, str], cli_job: dict[str, Any], failing_job: Job, tmp_path: Path
) -> None:
    missing = selfsup(cli_env, "jobs", "show", "job_doesnotexist")
    assert missing.returncode == 1 and "job_doesnotexist" in missing.stderr and "not_found" in missing.stderr

    bad_spec = tmp_path / "bad.yaml"
    bad_spec.write_text(yaml.safe_dump(small_job_spec(cli_job["corpus"]["id"], model={"heads": 3})))
    invalid = selfsup(cli_env, "jobs", "create", str(bad_spec))
    assert invalid.returncode == 1 and "invalid_request" in invalid.stderr and "model" in invalid.stderr

    not_yaml = tmp_path / "broken.yaml"
    not_yaml.write_text("corpus_ids: [unclosed\n")
    broken = selfsup(cli_env, "jobs", "create", str(not_yaml))
    assert broken.returncode == 2 and "not valid YAML" in broken.stderr

    wrong_key = selfsup(cli_env, "--api-key", "ss_wrong", "jobs", "list")
    assert wrong_key.returncode == 1 and "unauthorized" in wrong_key.stderr

    cancel = selfsup(cli_env, "jobs", "cancel", failing_job.id)
    assert cancel.returncode == 1 and "already finished" in cancel.stderr

    for result in (missing, invalid, broken, wrong_key, cancel):
        assert "Traceback" not in result.stderr, result.stderr
