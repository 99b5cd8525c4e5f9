"""`SELFSUP_FAULT_INJECTION` read for one job: a fault applies to every job or, with `@NAME`, to jobs called NAME;
a list of faults lets one test service inject a different fault into each test's job."""

from __future__ import annotations

from pathlib import Path

import pytest

from workers.faults import Faults


def _fault(spec: str | None, job_name: str, tmp_path: Path) -> tuple[str | None, int]:
    faults = Faults.parse(spec, job_id="job_1", job_name=job_name, marker_dir=tmp_path)
    return faults.kind, faults.value


def test_one_fault_applies_to_every_job_or_to_the_job_it_names(tmp_path: Path) -> None:
    assert _fault(None, "any", tmp_path) == (None, 0)
    assert _fault("raise_at_step:30", "any", tmp_path) == ("raise_at_step", 30)
    assert _fault("exit_before_checkpoint_rename:3@faulty", "faulty", tmp_path) == ("exit_before_checkpoint_rename", 3)
    assert _fault("exit_before_checkpoint_rename:3@faulty", "clean", tmp_path) == (None, 0)
    assert _fault("compile_error@x", "x", tmp_path) == ("compile_error", 0)


def test_a_list_gives_each_job_the_first_fault_that_names_it(tmp_path: Path) -> None:
    spec = "raise_at_step:30@crash-loop, exit_before_checkpoint_rename:3@faulty,compile_error@compile-broken"
    assert _fault(spec, "crash-loop", tmp_path) == ("raise_at_step", 30)
    assert _fault(spec, "faulty", tmp_path) == ("exit_before_checkpoint_rename", 3)
    assert _fault(spec, "compile-broken", tmp_path) == ("compile_error", 0)
    assert _fault(spec, "resumable", tmp_path) == (None, 0)
    assert _fault("exit_at_step:5@a,raise_at_step:7", "b", tmp_path) == ("raise_at_step", 7)


def test_an_unknown_fault_is_refused_wherever_it_is_in_the_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown fault 'explode:1'"):
        _fault("raise_at_step:30@other,explode:1@other", "job", tmp_path)
