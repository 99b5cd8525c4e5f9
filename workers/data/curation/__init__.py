"""Corpus curation (issue 12): one module per rule, each a keep/drop verdict with a reason, and `curate`,
the pipeline that applies them in `CurationSpec`'s order and reports what each removed and why."""

from workers.data.curation.pipeline import (
    RULES,
    CurationReport,
    CurationSource,
    RemovedExample,
    RepeatedLine,
    RuleReport,
    SourceReport,
    curate,
)

__all__ = [
    "RULES",
    "CurationReport",
    "CurationSource",
    "RemovedExample",
    "RepeatedLine",
    "RuleReport",
    "SourceReport",
    "curate",
]
