"""Schemathesis against the live API, long: many more examples than the test suite's run, job submission included.

One command, from the repository root:

    .venv/bin/python bench/fuzz.py [--max-examples 100] [--seed N] [--memory-limit-gb 12] [--keep-home] [--out FILE]

Starts `selfsup up` on the embedded default in a fresh temporary home (as bench/probes.py does), creates a key
of each scope for the tenant `fuzz` (`tests/fuzzing.py: SCOPES`), and runs `st run` with every phase (examples,
coverage, fuzzing, stateful links) and every check, configured by `schemathesis.toml`, once per key. Prints each
run's cases, operations, phases and failures; writes them to bench/results/fuzz-<time>.json; exits 1 when any
run has a failure or an error.

Unlike the suite's run (tests/api/test_fuzz.py) it also fuzzes `POST /v1/jobs`: a schema-valid spec can ask for
a model far larger than this machine's memory on a corpus the fuzzer uploaded, so the service runs under an
address-space limit (`--memory-limit-gb`, inherited by its workers; 0: none) and such a job fails instead of
taking the machine down. Jobs still running at the end are cancelled. Without `--seed` the seed is random and
printed: rerun with it to reproduce a failure.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.fuzzing import (  # noqa: E402
    SCOPES,
    create_scoped_key,
    run_schemathesis,
    stop_what_the_fuzzer_started,
)
from tests.service import start_service  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Run the long fuzz; 0 when every run is clean."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-examples", type=int, default=100, help="examples per operation and phase")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one, printed")
    parser.add_argument("--workers", type=int, default=2, help="concurrent schemathesis workers")
    parser.add_argument("--memory-limit-gb", type=float, default=12, help="address-space limit of the service")
    parser.add_argument("--keep-home", action="store_true", help="keep the service's home (and its log)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    if args.memory_limit_gb > 0:
        limit = int(args.memory_limit_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))  # the service and its workers inherit it
    home = Path(tempfile.mkdtemp(prefix="selfsup-fuzz-"))
    service = start_service(home / "home")
    runs: list[dict[str, Any]] = []
    try:
        keys = {scope: create_scoped_key(service, scope) for scope in ("write", *SCOPES)}
        for scope in SCOPES:
            started = time.monotonic()
            run = run_schemathesis(
                service.base_url,
                keys[scope],
                scope=scope,
                max_examples=args.max_examples,
                seed=args.seed,
                workers=args.workers,
                timeout=6 * 3600,
            )
            print(run.summary(), flush=True)
            if not run.clean:
                print(run.output[-30_000:], flush=True)
            runs.append(
                {
                    "scope": scope,
                    "clean": run.clean,
                    "seconds": round(time.monotonic() - started, 1),
                    "command": run.command,
                    "report": run.report,
                }
            )
        stop_what_the_fuzzer_started(service, keys["write"])
    finally:
        service.stop()
        if args.keep_home:
            print(f"service home (and service.log): {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)

    out = args.out or REPO / "bench" / "results" / f"fuzz-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "max_examples": args.max_examples,
        "memory_limit_gb": args.memory_limit_gb,
        "runs": runs,
    }
    out.write_text(json.dumps(results, indent=2) + "\n")
    total = sum(r["report"]["test_cases"]["generated"] for r in runs)
    failed = [r["scope"] for r in runs if not r["clean"]]
    print(f"{total} cases in {len(runs)} runs; {'FAILED: ' + ', '.join(failed) if failed else 'clean'}; {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
