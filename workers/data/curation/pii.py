"""PII: e-mail and IP addresses replaced with placeholders, by datatrove's `PIIFormatter` (FineWeb's step).

Its placeholders are used in turn (`email@example.com`, `firstname.lastname@example.org`; six unrouted
public IPs); only public IPs are replaced. The placeholders rotate from one match to the next, so a fresh
`PiiFilter` per curation keeps the output deterministic.
"""

from __future__ import annotations

from datatrove.pipeline.formatters import PIIFormatter

from selfsup.curation_spec import Pii
from workers.data.curation.base import Verdict, keep


class _CountingReplacements(tuple[str, ...]):
    """The formatter's placeholder tuple; it counts how often a placeholder is taken (one per replacement)."""

    taken = 0

    def __getitem__(self, index):  # type: ignore[no-untyped-def,override]
        self.taken += 1
        return super().__getitem__(index)


class PiiFilter:
    """Rewrites e-mail and IP addresses in one document."""

    def __init__(self, spec: Pii) -> None:
        self._formatter = PIIFormatter(remove_emails=spec.emails, remove_ips=spec.ip_addresses)
        self._counters: list[_CountingReplacements] = []
        for replacer in (self._formatter.emails_replacer, self._formatter.ip_replacer):
            counter = _CountingReplacements(replacer.replacements)
            replacer.replacements = counter
            self._counters.append(counter)

    def apply(self, text: str) -> Verdict:
        """The document with its addresses replaced, and how many were."""
        before = sum(c.taken for c in self._counters)
        out = self._formatter.format(text)
        return keep(out, replacements=sum(c.taken for c in self._counters) - before)
