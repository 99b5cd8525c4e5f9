"""Schemathesis against the live API: the one runner behind `tests/api/test_fuzz.py` and `bench/fuzz.py`.

Runs the schemathesis command line (`st run`), as anyone auditing the API would, against the service's own
`/openapi.json` with one API key: every phase it has (the schema's examples, coverage of each keyword's
boundaries, random fuzzing in positive and negative modes, and stateful sequences that follow the links it infers
from responses and path parameters) and every check it has, configured by `schemathesis.toml` at the
repository root. Its JSON report is the verdict; its terminal output is kept to explain a failure.

The command line rather than the pytest plugin: `st run` is the fuzzer's main interface and runs every phase in
one call (the plugin's `@schema.parametrize()` covers generation only, stateful testing is a separate machine),
and what a developer sees by running the same command is what the test saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.service import REPO, SELFSUP, Service

CONFIG = REPO / "schemathesis.toml"
ALL_PHASES = ("examples", "coverage", "fuzzing", "stateful")
FUZZ_TENANT = "fuzz"
# The scopes a key can have, each fuzzed with its own key of the fuzz tenant: "write" is `selfsup keys create`'s
# default (read and write); a "read" key's writes are answered 403, which the OpenAPI document lists.
SCOPES = ("write", "read")
FINISHED_JOB_STATUSES = {"succeeded", "failed", "cancelled"}


def create_scoped_key(service: Service, scope: str) -> str:
    """`selfsup keys create --tenant fuzz [--scope SCOPE]`, as an operator runs it."""
    command = [*SELFSUP, "keys", "create", "--tenant", FUZZ_TENANT]
    if scope != "write":
        command += ["--scope", scope]
    out = subprocess.run(command, env=service.env, cwd=REPO, capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    assert key.startswith("ss_") and "\n" not in key, out
    return key


def stop_what_the_fuzzer_started(service: Service, key: str) -> None:
    """Cancel every job of the fuzz tenant that has not finished, and delete its webhooks."""
    with service.client() as client:
        client.headers["Authorization"] = f"Bearer {key}"
        cursor = None
        while True:
            page = client.get("/v1/jobs", params={"limit": 200, **({"cursor": cursor} if cursor else {})}).json()
            for job in page["data"]:
                if job["status"] not in FINISHED_JOB_STATUSES:
                    client.post(f"/v1/jobs/{job['id']}/cancel")  # a 409 if it finished meanwhile: fine
            cursor = page.get("next_cursor")
            if not cursor:
                break
        for hook in client.get("/v1/webhooks").json()["data"]:
            client.delete(f"/v1/webhooks/{hook['id']}")


@dataclass
class FuzzRun:
    """What one `st run` found: its JSON report and what it printed."""

    scope: str
    report: dict[str, Any]
    output: str
    returncode: int
    command: list[str] = field(default_factory=list)

    @property
    def cases(self) -> int:
        """Test cases generated and sent."""
        return int(self.report["test_cases"]["generated"])

    @property
    def failures(self) -> list[dict[str, Any]]:
        """Failure groups: `{"title", "code", "count", "operations", ...}`, one per kind of failure."""
        return list(self.report["failures"])

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Errors that stopped a test (network, schema, a hook), as opposed to failed checks."""
        return list(self.report["errors"])

    @property
    def clean(self) -> bool:
        """No failure, no error, every selected operation tested, and the run completed."""
        operations = self.report["operations"] or {}
        return (
            self.returncode == 0
            and self.report["complete"]
            and not self.failures
            and not self.errors
            and operations.get("tested") == operations.get("selected")
        )

    def summary(self) -> str:
        """A few lines for a human: cases, operations, phases, and each failure group."""
        operations = self.report["operations"] or {}
        phases = ", ".join(f"{name}: {p['status']}" for name, p in (self.report["phases"] or {}).items())
        lines = [
            f"[{self.scope} key] {self.cases} cases, {operations.get('tested')}/{operations.get('selected')} "
            f"operations tested, {self.report['running_time']:.1f} s, seed {self.report['seed']}; {phases}",
        ]
        for failure in self.failures:
            lines.append(
                f"  FAILURE {failure['title']} ({failure['code']}) x{failure['count']}: "
                + ", ".join(failure["operations"])
            )
        for error in self.errors:
            lines.append(f"  ERROR {error['title']} x{error['count']}")
        return "\n".join(lines)


def run_schemathesis(
    base_url: str,
    key: str,
    *,
    scope: str,
    max_examples: int,
    seed: int | None = 0,
    phases: tuple[str, ...] = ALL_PHASES,
    workers: int = 1,
    extra_args: tuple[str, ...] = (),
    timeout: float = 1800,
) -> FuzzRun:
    """One `st run` of the API at `base_url` as the holder of `key` (whose scope names the run)."""
    with tempfile.TemporaryDirectory(prefix="selfsup-fuzz-") as tmp:
        report_path = Path(tmp) / "report.json"
        command = [
            sys.executable,
            "-c",
            "from schemathesis.cli import schemathesis; schemathesis()",
            "--config-file",
            str(CONFIG),
            "--no-color",
            "run",
            f"{base_url}/openapi.json",
            "--header",
            f"Authorization: Bearer {key}",
            "--phases",
            ",".join(phases),
            "--max-examples",
            str(max_examples),
            "--workers",
            str(workers),
            "--report",
            "json",
            "--report-json-path",
            str(report_path),
            *(["--seed", str(seed)] if seed is not None else []),
            *extra_args,
        ]
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
        output = done.stdout + done.stderr
        if not report_path.exists():
            raise AssertionError(f"schemathesis wrote no report (exit {done.returncode}):\n{output[-20_000:]}")
        report = json.loads(report_path.read_text())
    shown = [part if not part.startswith("Authorization:") else "Authorization: Bearer ***" for part in command]
    return FuzzRun(scope=scope, report=report, output=output, returncode=done.returncode, command=shown)
