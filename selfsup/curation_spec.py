"""The dataset request and its curation rules: what `POST /v1/datasets` accepts (no heavy imports).

Every rule has the published defaults of the pipeline it comes from (C4, Gopher/MassiveText, FineWeb
as datatrove implements them) and every threshold can be set. `"curation": {}` turns every rule on
with its defaults; `{"near_dedup": {"enabled": false}}` switches one off.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, model_validator

from selfsup.spec_types import Name, StrictModel, invalid_combination

CorpusId = Annotated[str, Field(min_length=1, max_length=64)]


class Rule(StrictModel):
    """A curation rule that can be switched off."""

    enabled: bool = True


class ExactDedup(Rule):
    """Drop a document whose normalised text (case, whitespace, punctuation folded) was seen before."""


class LineDedup(Rule):
    """C4-style boilerplate: a line seen in more than `max_repeats` documents is removed everywhere."""

    max_repeats: int = Field(default=3, ge=1, description="A line in more documents than this is boilerplate.")
    min_chars: int = Field(default=10, ge=1, description="Shorter lines are never counted as boilerplate.")


class NearDedup(Rule):
    """MinHash over word n-grams with LSH banding; one document is kept per cluster (datatrove's defaults)."""

    n_grams: int = Field(default=5, ge=1, le=32)
    bands: int = Field(default=14, ge=1, le=64)
    rows_per_band: int = Field(default=8, ge=1, le=64)
    seed: int = 1


class GopherQuality(Rule):
    """Gopher (MassiveText) quality heuristics."""

    min_doc_words: int = Field(default=50, ge=0)
    max_doc_words: int = Field(default=100_000, ge=1)
    min_avg_word_length: float = Field(default=3.0, ge=0)
    max_avg_word_length: float = Field(default=10.0, gt=0)
    max_symbol_word_ratio: float = Field(default=0.1, ge=0)
    max_bullet_lines_ratio: float = Field(default=0.9, ge=0, le=1)
    max_ellipsis_lines_ratio: float = Field(default=0.3, ge=0, le=1)
    max_non_alpha_words_ratio: float = Field(
        default=0.8, ge=0, le=1, description="At least this share of words must contain an alphabetic character."
    )
    min_stop_words: int = Field(default=2, ge=0)
    stop_words: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default=["the", "be", "to", "of", "and", "that", "have", "with"], max_length=1000
    )


class GopherRepetition(Rule):
    """Gopher repetition heuristics: duplicate lines and paragraphs, top and duplicate n-grams."""

    dup_line_frac: float = Field(default=0.3, ge=0, le=1)
    dup_para_frac: float = Field(default=0.3, ge=0, le=1)
    dup_line_char_frac: float = Field(default=0.2, ge=0, le=1)
    dup_para_char_frac: float = Field(default=0.2, ge=0, le=1)
    top_n_grams: list[tuple[int, float]] = Field(default=[(2, 0.2), (3, 0.18), (4, 0.16)], max_length=16)
    dup_n_grams: list[tuple[int, float]] = Field(
        default=[(5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)], max_length=16
    )


class C4Lines(Rule):
    """C4's line rules: drop lines without terminal punctuation or with few words; drop whole documents
    with "lorem ipsum", curly braces, or too few sentences; drop javascript and policy lines."""

    min_words_per_line: int = Field(default=3, ge=0)
    max_word_length: int = Field(default=1000, ge=1)
    min_num_sentences: int = Field(default=5, ge=0)
    filter_no_terminal_punct: bool = True
    filter_lorem_ipsum: bool = True
    filter_javascript: bool = True
    filter_curly_bracket: bool = True
    filter_policy: bool = True


class Pii(Rule):
    """E-mail and IP addresses replaced with placeholders, as FineWeb does."""

    emails: bool = True
    ip_addresses: bool = True


class Decontamination(Rule):
    """Drop a training document that shares any `n_grams`-word sequence with an evaluation corpus (GPT-3)."""

    n_grams: int = Field(default=13, ge=1, le=64)


class CurationSpec(StrictModel):
    """Which rules run, in this order: exact dedup, line dedup, C4 lines, Gopher repetition, Gopher quality,
    PII, near dedup, decontamination."""

    exact_dedup: ExactDedup = ExactDedup()
    line_dedup: LineDedup = LineDedup()
    c4_lines: C4Lines = C4Lines()
    gopher_repetition: GopherRepetition = GopherRepetition()
    gopher_quality: GopherQuality = GopherQuality()
    pii: Pii = Pii()
    near_dedup: NearDedup = NearDedup()
    decontamination: Decontamination = Decontamination()


class DatasetSource(StrictModel):
    """One corpus of a mixture and its share of the training tokens."""

    corpus_id: CorpusId
    weight: float = Field(default=1.0, gt=0, le=1e6, allow_inf_nan=False)


class DatasetCreate(StrictModel):
    """`POST /v1/datasets`: a curated mixture of corpora."""

    name: Name | None = None
    sources: list[DatasetSource] = Field(min_length=1, max_length=64)
    curation: CurationSpec | None = Field(
        default=None,
        description="`{}` = every rule with its defaults; absent = no rule runs except decontamination when "
        "`decontaminate_against` names corpora (a plain mixture).",
    )
    decontaminate_against: list[CorpusId] = Field(default=[], max_length=64)

    @model_validator(mode="after")
    def _distinct_sources(self) -> DatasetCreate:
        seen: set[str] = set()
        for i, source in enumerate(self.sources):
            if source.corpus_id in seen:
                raise invalid_combination(f"sources[{i}].corpus_id", f"repeats corpus {source.corpus_id}")
            seen.add(source.corpus_id)
        return self

    def mixture_weights(self) -> dict[str, float]:
        """Each source's share of the training tokens (weights normalised to sum to 1)."""
        total = sum(s.weight for s in self.sources)
        return {s.corpus_id: s.weight / total for s in self.sources}

    def canonical(self) -> dict[str, Any]:
        """The request with every default filled in: what the dataset stores and hashes."""
        return self.model_dump(mode="json")
