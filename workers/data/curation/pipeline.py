"""The curation pipeline: every rule of a `CurationSpec`, in its order, over several sources, with a report.

Passes over the sources (each `CurationSource.documents()` is called once per pass):
1. only when line dedup is on: exact dedup, and the line counts of the documents it keeps;
2. every document through exact dedup, line dedup, C4 lines, Gopher repetition, Gopher quality and PII;
   with near dedup on, the survivors go to a spill file in `workdir` and their MinHash bands to sorted runs;
3. with near dedup on: the clusters, then the spill file read back through near dedup and decontamination.
Kept documents reach `on_kept(source_index, text)` in their original order. Memory is bounded by the rules'
batch settings except for exact dedup's set of hashes (8 bytes of text hash per distinct document).

The rules that look at one document at a time (line dedup's removal, C4 lines, Gopher, PII) are most of the
time; with `processes > 1` they run on batches of documents in that many worker processes, a bounded number
of batches in flight, and the results are taken back in order, so the outcome is the same as with one.
"""

from __future__ import annotations

import logging
import multiprocessing
import struct
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel, Field

from selfsup.curation_spec import CurationSpec
from workers.data.curation.base import Verdict
from workers.data.curation.c4_lines import C4LinesFilter
from workers.data.curation.decontamination import DecontaminationFilter
from workers.data.curation.exact_dedup import ExactDedupFilter
from workers.data.curation.gopher_quality import GopherQualityFilter
from workers.data.curation.gopher_repetition import GopherRepetitionFilter
from workers.data.curation.line_dedup import LineCounter, LineDedupFilter
from workers.data.curation.near_dedup import NearDedupIndex
from workers.data.curation.pii import PiiFilter

RULES = (
    "exact_dedup",
    "line_dedup",
    "c4_lines",
    "gopher_repetition",
    "gopher_quality",
    "pii",
    "near_dedup",
    "decontamination",
)
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 500
TOP_LINES = 20
_SPILL_HEADER = struct.Struct("<IQI")
BATCH_DOCUMENTS = 256

log = logging.getLogger(__name__)


def count_tokens(text: str) -> int:
    """Word tokens (whitespace-separated): a dataset is curated once for every tokenizer, so its report counts
    words; a job's `tokens/<source>` metrics count its own tokenizer's tokens."""
    return len(text.split())


@dataclass(frozen=True)
class CurationSource:
    """One corpus to curate: `documents()` must give the same documents, in order, every time it is called."""

    name: str
    documents: Callable[[], Iterable[str]]


class RemovedExample(BaseModel):
    """A removed document (or line) as the rule saw it, cut to 500 characters."""

    reason: str
    text: str
    characters: int = Field(description="The full length before the cut.")


class RepeatedLine(BaseModel):
    """A boilerplate line and the number of documents it was found in."""

    line: str
    documents: int


class RuleReport(BaseModel):
    """What one rule removed."""

    documents_removed: int = 0
    characters_removed: int = 0
    tokens_removed: int = Field(default=0, description="Word tokens removed (whitespace-separated words).")
    lines_removed: int = 0
    replacements: int = 0
    reasons: dict[str, int] = Field(default_factory=dict, description="Documents removed, by reason.")
    line_reasons: dict[str, int] = Field(default_factory=dict, description="Lines removed, by reason (C4 lines).")
    duplicate_clusters: int = 0
    top_removed_lines: list[RepeatedLine] = Field(default_factory=list)
    examples: list[RemovedExample] = Field(default_factory=list)


class _Counts(BaseModel):
    """Documents, characters and word tokens in and out, and what each rule removed."""

    documents_in: int = 0
    documents_out: int = 0
    characters_in: int = 0
    characters_out: int = 0
    tokens_in: int = Field(default=0, description="Word tokens (whitespace-separated words) before curation.")
    tokens_out: int = Field(default=0, description="Word tokens (whitespace-separated words) kept.")
    rules: dict[str, RuleReport] = Field(default_factory=lambda: {rule: RuleReport() for rule in RULES})


class SourceReport(_Counts):
    """One source's counts and what each rule removed from it."""

    name: str


class CurationReport(_Counts):
    """The whole curation: totals, every rule's removals over all sources, and each source's own."""

    sources: list[SourceReport] = Field(default_factory=list)
    spec: CurationSpec = Field(default_factory=CurationSpec)


def _example(reason: str, text: str) -> RemovedExample:
    return RemovedExample(reason=reason, text=text[:EXAMPLE_CHARS], characters=len(text))


@dataclass
class _Tally:
    """Accumulates one source's report, and the lines line dedup removed (for the top lines)."""

    report: SourceReport
    removed_lines: Counter[int] = field(default_factory=Counter)

    def record(self, rule: str, before: str, verdict: Verdict) -> None:
        """Adds one verdict of `rule` on a document that was `before` when the rule saw it."""
        r = self.report.rules[rule]
        r.lines_removed += verdict.lines_removed
        r.replacements += verdict.replacements
        if verdict.text is None:
            reason = verdict.reason or rule
            r.documents_removed += 1
            r.characters_removed += len(before)
            r.tokens_removed += count_tokens(before)
            r.reasons[reason] = r.reasons.get(reason, 0) + 1
            if len(r.examples) < MAX_EXAMPLES:
                r.examples.append(_example(reason, before))
        else:
            r.characters_removed += max(0, len(before) - len(verdict.text))
            r.tokens_removed += max(0, count_tokens(before) - count_tokens(verdict.text))
            if verdict.lines_removed and rule != "c4_lines" and len(r.examples) < MAX_EXAMPLES:
                for line in verdict.removed_lines[: MAX_EXAMPLES - len(r.examples)]:
                    r.examples.append(_example("boilerplate_line", line))


def _write_spill(f: BinaryIO, source: int, doc: int, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    f.write(_SPILL_HEADER.pack(source, doc, len(data)))
    f.write(data)


def _read_spill(path: Path) -> Iterable[tuple[int, int, str]]:
    with path.open("rb") as f:
        while header := f.read(_SPILL_HEADER.size):
            source, doc, size = _SPILL_HEADER.unpack(header)
            yield source, doc, f.read(size).decode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class _Step:
    """What one per-document rule did to one document."""

    rule: str
    before: str
    verdict: Verdict
    line_reasons: dict[str, int] = field(default_factory=dict)


class _DocumentRules:
    """The rules that look at one document at a time, in the spec's order: line dedup's removal, C4 lines,
    Gopher repetition, Gopher quality, PII."""

    def __init__(self, spec: CurationSpec, line_filter: LineDedupFilter | None) -> None:
        self.line_filter = line_filter
        self.c4 = C4LinesFilter(spec.c4_lines) if spec.c4_lines.enabled else None
        self.rest: list[tuple[str, Callable[[str], Verdict]]] = []
        if spec.gopher_repetition.enabled:
            self.rest.append(("gopher_repetition", GopherRepetitionFilter(spec.gopher_repetition).apply))
        if spec.gopher_quality.enabled:
            self.rest.append(("gopher_quality", GopherQualityFilter(spec.gopher_quality).apply))
        if spec.pii.enabled:
            self.rest.append(("pii", PiiFilter(spec.pii).apply))

    def __call__(self, text: str) -> list[_Step]:
        """Every step the document went through; the last one's verdict is its fate."""
        steps: list[_Step] = []
        current: str | None = text
        if self.line_filter is not None:
            verdict = self.line_filter.apply(text)
            steps.append(_Step("line_dedup", text, verdict))
            current = verdict.text
        if current is not None and self.c4 is not None:
            verdict, line_reasons = self.c4.apply(current)
            steps.append(_Step("c4_lines", current, verdict, dict(line_reasons)))
            current = verdict.text
        for rule, apply in self.rest:
            if current is None:
                break
            verdict = apply(current)
            steps.append(_Step(rule, current, verdict))
            current = verdict.text
        return steps


_WORKER_RULES: _DocumentRules | None = None


def _start_worker(spec: CurationSpec, boilerplate: dict[int, int] | None) -> None:
    global _WORKER_RULES
    line_filter = LineDedupFilter(spec.line_dedup, boilerplate) if boilerplate is not None else None
    _WORKER_RULES = _DocumentRules(spec, line_filter)


def _run_batch(texts: list[str]) -> list[list[_Step]]:
    assert _WORKER_RULES is not None
    return [_WORKER_RULES(text) for text in texts]


def _in_order(
    rules: _DocumentRules,
    spec: CurationSpec,
    processes: int,
    documents: Iterable[tuple[int, int, str]],
) -> Iterator[tuple[int, int, str, list[_Step]]]:
    """`(source, index, text, steps)` for each document, in order; in `processes` worker processes if > 1."""
    if processes <= 1:
        for source, index, text in documents:
            yield source, index, text, rules(text)
        return
    boilerplate = rules.line_filter.boilerplate if rules.line_filter is not None else None
    # spawn, not fork: the worker that calls this has torch (and its thread pools) loaded.
    with ProcessPoolExecutor(
        processes,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(spec, boilerplate),
    ) as pool:
        pending: deque[tuple[list[tuple[int, int, str]], Future[list[list[_Step]]]]] = deque()

        def drain(limit: int) -> Iterator[tuple[int, int, str, list[_Step]]]:
            while len(pending) > limit:
                batch, future = pending.popleft()
                for (source, index, text), steps in zip(batch, future.result(), strict=True):
                    yield source, index, text, steps

        batch: list[tuple[int, int, str]] = []
        for item in documents:
            batch.append(item)
            if len(batch) == BATCH_DOCUMENTS:
                pending.append((batch, pool.submit(_run_batch, [t for _, _, t in batch])))
                batch = []
                yield from drain(2 * processes)  # a bounded number of batches in flight
        if batch:
            pending.append((batch, pool.submit(_run_batch, [t for _, _, t in batch])))
        yield from drain(0)


def curate(
    sources: Sequence[CurationSource],
    spec: CurationSpec,
    *,
    evaluation: Iterable[str] = (),
    workdir: Path,
    on_kept: Callable[[int, str], None],
    processes: int = 1,
) -> CurationReport:
    """Applies the enabled rules of `spec` to `sources`, hands each kept document to `on_kept`, and reports.

    `processes` > 1 runs the per-document rules in that many worker processes (same result).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    tallies = [_Tally(SourceReport(name=s.name)) for s in sources]

    exact = ExactDedupFilter() if spec.exact_dedup.enabled else None
    line_filter: LineDedupFilter | None = None
    if spec.line_dedup.enabled:
        # Pass 1: line counts over the documents exact dedup keeps.
        counter = LineCounter(spec.line_dedup, workdir)
        for source in sources:
            for document in source.documents():
                if exact is None or exact.check(document)[0].kept:
                    counter.add(document)
        line_filter = LineDedupFilter(spec.line_dedup, counter.boilerplate())
        # Pass 2 replays exact dedup from scratch: the same documents in the same order, the same decisions.
        exact = ExactDedupFilter() if spec.exact_dedup.enabled else None

    rules = _DocumentRules(spec, line_filter)
    decont = DecontaminationFilter(spec.decontamination, evaluation) if spec.decontamination.enabled else None
    near = NearDedupIndex(spec.near_dedup, workdir / "near_dedup") if spec.near_dedup.enabled else None

    def finish(source_index: int, text: str) -> None:
        """Decontamination, then out."""
        tally = tallies[source_index]
        if decont is not None:
            verdict = decont.apply(text)
            tally.record("decontamination", text, verdict)
            if not verdict.kept:
                return
        tally.report.documents_out += 1
        tally.report.characters_out += len(text)
        tally.report.tokens_out += count_tokens(text)
        on_kept(source_index, text)

    # Pass 2: exact dedup here, in order; the per-document rules (in worker processes when asked).
    def survivors() -> Iterator[tuple[int, int, str]]:
        doc_index = 0
        for source_index, source in enumerate(sources):
            tally = tallies[source_index]
            for original in source.documents():
                index, doc_index = doc_index, doc_index + 1
                tally.report.documents_in += 1
                tally.report.characters_in += len(original)
                tally.report.tokens_in += count_tokens(original)
                if exact is not None:
                    verdict, new_cluster = exact.check(original)
                    tally.record("exact_dedup", original, verdict)
                    tally.report.rules["exact_dedup"].duplicate_clusters += int(new_cluster)
                    if verdict.text is None:
                        continue
                yield source_index, index, original

    spill_path = workdir / "near_dedup_survivors.bin"
    with spill_path.open("wb") as spill:
        for source_index, index, original, steps in _in_order(rules, spec, processes, survivors()):
            tally = tallies[source_index]
            for step in steps:
                tally.record(step.rule, step.before, step.verdict)
                if step.rule == "line_dedup" and line_filter is not None:
                    line_filter.count_removed(step.verdict, tally.removed_lines)
                reasons = tally.report.rules[step.rule].line_reasons
                for reason, n in step.line_reasons.items():
                    reasons[reason] = reasons.get(reason, 0) + n
            text = steps[-1].verdict.text if steps else original
            if text is None:
                continue
            if near is not None:
                near.add(index, text)
                _write_spill(spill, source_index, index, text)
            else:
                finish(source_index, text)

    # Pass 3: near dedup's clusters, then the survivors read back.
    if near is not None:
        duplicates = near.cluster()
        for source_index, index, survivor in _read_spill(spill_path):
            tally = tallies[source_index]
            if duplicates.duplicate_of(index) is not None:
                tally.record("near_dedup", survivor, Verdict(None, "near_duplicate"))
                continue
            if index in duplicates.roots:
                tally.report.rules["near_dedup"].duplicate_clusters += 1
            finish(source_index, survivor)
    spill_path.unlink(missing_ok=True)

    return _assemble(spec, tallies, line_filter)


def _assemble(spec: CurationSpec, tallies: list[_Tally], line_filter: LineDedupFilter | None) -> CurationReport:
    report = CurationReport(spec=spec, sources=[t.report for t in tallies])
    all_removed: Counter[int] = Counter()
    for tally in tallies:
        source = tally.report
        report.documents_in += source.documents_in
        report.documents_out += source.documents_out
        report.characters_in += source.characters_in
        report.characters_out += source.characters_out
        report.tokens_in += source.tokens_in
        report.tokens_out += source.tokens_out
        for rule in RULES:
            mine, total = source.rules[rule], report.rules[rule]
            total.documents_removed += mine.documents_removed
            total.characters_removed += mine.characters_removed
            total.tokens_removed += mine.tokens_removed
            total.lines_removed += mine.lines_removed
            total.replacements += mine.replacements
            total.duplicate_clusters += mine.duplicate_clusters
            for reason, n in mine.reasons.items():
                total.reasons[reason] = total.reasons.get(reason, 0) + n
            for reason, n in mine.line_reasons.items():
                total.line_reasons[reason] = total.line_reasons.get(reason, 0) + n
            for example in mine.examples:
                if len(total.examples) < MAX_EXAMPLES:
                    total.examples.append(example)
        if line_filter is not None:
            source.rules["line_dedup"].top_removed_lines = [
                RepeatedLine(line=line_filter.texts[key], documents=n)
                for key, n in tally.removed_lines.most_common(TOP_LINES)
            ]
            all_removed.update(tally.removed_lines)
    if line_filter is not None:
        # Overall: the most repeated lines, with the number of documents each was found in.
        top = sorted(all_removed, key=lambda k: (-line_filter.boilerplate.get(k, 0), line_filter.texts[k]))[:TOP_LINES]
        report.rules["line_dedup"].top_removed_lines = [
            RepeatedLine(line=line_filter.texts[k], documents=line_filter.boilerplate.get(k, 0)) for k in top
        ]
    return report
