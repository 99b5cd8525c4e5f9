"""`curate`: two sources with planted duplicates, boilerplate, an evaluation passage and PII; the report's
counts equal what was planted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selfsup.curation_spec import CurationSpec
from tests.workers.data.curation.texts import prose, words
from workers.data.curation import RULES, CurationReport, CurationSource, curate, pipeline

BOILER = "Click here to subscribe to our newsletter."
EVAL = " ".join(words(30, seed=999))


def _sources() -> tuple[list[str], list[str]]:
    a = [prose(120, seed=i) for i in range(10)]
    a[1] = a[1] + "\nWrite to jane.doe@corp.io today, it is fine."  # one e-mail
    for i in range(4):  # boilerplate line in 4 documents (> max_repeats=3)
        a[2 + i] = a[2 + i] + "\n" + BOILER
    b = [prose(120, seed=100 + i) for i in range(6)]
    b[0] = a[0]  # exact duplicate across sources: kept in source a
    w = a[7].split(" ")
    w[20:26] = words(6, seed=555)  # 6 of 120 words changed: a near duplicate
    b[1] = " ".join(w)
    b[2] = b[2] + "\n" + " ".join(EVAL.split()[:15]) + "."  # 15 evaluation words: contaminated
    b[3] = prose(30, seed=7, per_line=6)  # five good sentences but 30 words: Gopher's short document
    b[4] = "Too short to be a document."  # one sentence: C4's too few sentences
    return a, b


def _run(tmp_path: Path, spec: CurationSpec, processes: int = 1) -> tuple[CurationReport, list[tuple[int, str]]]:
    a, b = _sources()
    kept: list[tuple[int, str]] = []
    report = curate(
        [CurationSource("a", lambda: iter(a)), CurationSource("b", lambda: iter(b))],
        spec,
        evaluation=[EVAL],
        workdir=tmp_path,
        on_kept=lambda i, text: kept.append((i, text)),
        processes=processes,
    )
    return report, kept


def test_report_counts_what_was_planted(tmp_path: Path) -> None:
    report, kept = _run(tmp_path, CurationSpec())
    r = report.rules
    assert (report.documents_in, report.documents_out) == (16, 11)
    assert [s.documents_out for s in report.sources] == [10, 1]
    assert r["exact_dedup"].documents_removed == 1 and r["exact_dedup"].duplicate_clusters == 1
    assert report.sources[1].rules["exact_dedup"].documents_removed == 1
    assert r["line_dedup"].lines_removed == 4 and r["line_dedup"].documents_removed == 0
    assert r["line_dedup"].top_removed_lines[0].model_dump() == {"line": BOILER, "documents": 4}
    assert r["gopher_quality"].reasons == {"gopher_short_doc": 1}
    assert r["pii"].replacements == 1
    assert r["near_dedup"].documents_removed == 1 and r["near_dedup"].duplicate_clusters == 1
    assert report.sources[1].rules["near_dedup"].reasons == {"near_duplicate": 1}
    assert r["decontamination"].reasons == {"contaminated": 1}
    assert r["c4_lines"].reasons == {"too_few_sentences": 1}
    assert r["gopher_repetition"].documents_removed == 0
    assert [i for i, _ in kept] == [0] * 10 + [1]
    assert not any(BOILER in text or "jane.doe" in text for _, text in kept)
    assert report.characters_out == sum(len(text) for _, text in kept)
    # Word tokens: every planted document in, the kept ones out, a removed document's words per rule.
    a, b = _sources()
    assert report.tokens_in == sum(len(d.split()) for d in a + b)
    assert report.tokens_out == sum(len(text.split()) for _, text in kept)
    assert r["exact_dedup"].tokens_removed == len(a[0].split())
    assert r["line_dedup"].tokens_removed == 4 * len(BOILER.split())
    assert r["c4_lines"].tokens_removed == len(b[4].split())
    assert all(len(e.text) <= 500 for rule in RULES for e in r[rule].examples)
    assert json.loads(report.model_dump_json())["rules"]["pii"]["replacements"] == 1
    assert not list(tmp_path.rglob("*.bin"))


def test_disabled_rules_report_nothing(tmp_path: Path) -> None:
    spec = CurationSpec.model_validate({rule: {"enabled": False} for rule in RULES})
    report, kept = _run(tmp_path, spec)
    assert report.documents_out == report.documents_in == 16
    assert all(report.rules[rule] == report.rules[rule].__class__() for rule in RULES)
    assert [text for _, text in kept] == [t for src in _sources() for t in src]


def test_worker_processes_give_the_same_result(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pipeline, "BATCH_DOCUMENTS", 3)  # several batches in flight, taken back in order
    serial, kept_serial = _run(tmp_path / "serial", CurationSpec())

    def not_here(self: object, text: str) -> None:
        raise AssertionError("the per-document rules ran in this process, not in the workers")

    monkeypatch.setattr(pipeline._DocumentRules, "__call__", not_here)  # spawned workers import it afresh
    parallel, kept_parallel = _run(tmp_path / "parallel", CurationSpec(), processes=2)
    assert kept_parallel == kept_serial
    assert parallel.model_dump() == serial.model_dump()
