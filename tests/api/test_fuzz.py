"""A fuzzer none of us wrote (issue 14): schemathesis against the live API finds no failure and no 500.

Every phase (examples, coverage, fuzzing, stateful links) and every check schemathesis has, with each kind of
key, bounded to a few examples per operation so that it stays cheap; `bench/fuzz.py` runs the long version.
What is run and what is left out (and why) is in `schemathesis.toml` at the repository root.

The fuzzer is its own tenant, so nothing it creates is seen by the other tests; once it is done, every job of
that tenant still queued or running is cancelled and every webhook deleted, so that nothing it made keeps the
session's workers busy.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fuzzing import SCOPES, create_scoped_key, run_schemathesis, stop_what_the_fuzzer_started
from tests.service import Service

pytestmark = pytest.mark.integration

# Examples per operation and phase: 2,000-3,000 cases over the whole API, most of them from the coverage
# phase (which this does not bound).
MAX_EXAMPLES = 3
# Not in the suite: a schema-valid job can ask for a 96-layer model of width 16,384 on a corpus the fuzzer
# uploaded, and the session's training worker shares this machine with everything else. bench/fuzz.py fuzzes
# it, under a memory limit.
EXCLUDED = ("POST /v1/jobs",)


@pytest.fixture(scope="module")
def fuzz_keys(embedded_service: Service) -> Iterator[dict[str, str]]:
    """A key of each scope for the fuzz tenant; afterwards, whatever the fuzzer started is stopped."""
    keys = {scope: create_scoped_key(embedded_service, scope) for scope in ("write", *SCOPES)}
    try:
        yield keys
    finally:
        stop_what_the_fuzzer_started(embedded_service, keys["write"])


@pytest.mark.parametrize("scope", SCOPES)
def test_schemathesis_finds_no_failure_and_no_server_error(
    embedded_service: Service, fuzz_keys: dict[str, str], scope: str
) -> None:
    run = run_schemathesis(
        embedded_service.base_url,
        fuzz_keys[scope],
        scope=scope,
        max_examples=MAX_EXAMPLES,
        extra_args=tuple(arg for name in EXCLUDED for arg in ("--exclude-name", name)),
    )
    print(run.summary())  # cases, operations, phases (shown with -s)
    assert run.clean, f"{run.summary()}\n\n{run.output[-30_000:]}\n\nservice log:\n{embedded_service.log()[-5_000:]}"
    # It did test the API: every operation, hundreds of requests, and the stateful phase found links to follow.
    operations = run.report["operations"]
    assert operations["tested"] == operations["selected"] >= 30, operations
    assert run.cases >= 300, run.summary()
    assert run.report["phases"]["stateful"]["status"] == "success", run.report["phases"]
