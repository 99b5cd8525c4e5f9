"""PII (datatrove's PIIFormatter): e-mails and public IPs replaced and counted."""

from __future__ import annotations

from selfsup.curation_spec import Pii
from workers.data.curation.pii import PiiFilter


def test_emails_and_public_ips_are_replaced() -> None:
    f = PiiFilter(Pii())
    verdict = f.apply("Mail jane.doe@corp.io or bob@x.org from 8.8.8.8, not 192.168.0.1.")
    assert verdict.text == (
        "Mail email@example.com or firstname.lastname@example.org from 22.214.171.124, not 192.168.0.1."
    )
    assert verdict.replacements == 3
    assert f.apply("Nothing here.").replacements == 0


def test_switches() -> None:
    text = "jane@corp.io at 8.8.8.8"
    assert PiiFilter(Pii(emails=False)).apply(text).text == "jane@corp.io at 22.214.171.124"
    assert PiiFilter(Pii(ip_addresses=False)).apply(text).text == "email@example.com at 8.8.8.8"
