"""Receive and validate a labelled set: JSONL lines `{"text": ..., "label": ...}`, small enough to check at once.

A labelled set is not a corpus: it is small (a probe fits on CPU), it must be checked line by line before a
job relies on it, and a mistake should come back on the upload with its line number rather than later as a
failed ingest. So the body is read (up to `SELFSUP_MAX_LABELLED_SET_BYTES`), validated in full, and only then
stored, as uploaded, under its blob key.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

from starlette.requests import ClientDisconnect, Request

from api.errors import ApiError

MAX_REPORTED_PROBLEMS = 20
MIN_EXAMPLES_PER_LABEL = 2  # one to train on and one held out
MAX_LABEL_LENGTH = 200


@dataclass(frozen=True)
class ValidatedLabelledSet:
    body: bytes
    sha256: str
    examples: int
    label_counts: dict[str, int]


async def read_body(request: Request, *, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the labelled set ({int(declared):,} bytes) exceeds the limit of {limit:,} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(
                    413, f"the labelled set exceeds the limit of {limit:,} bytes (SELFSUP_MAX_LABELLED_SET_BYTES)"
                )
            chunks.append(chunk)
    except ClientDisconnect as exc:
        raise ApiError(400, "the client disconnected before the upload finished; nothing was kept") from exc
    return b"".join(chunks)


def _line_problem(raw: bytes) -> tuple[str | None, str | None]:
    """(label, None) for a good line, (None, what is wrong) for a bad one."""
    try:
        row: Any = json.loads(raw)
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg})"
    if not isinstance(row, dict):
        return None, 'not a JSON object: each line must be {"text": "...", "label": "..."}'
    text, label = row.get("text"), row.get("label")
    if not isinstance(text, str) or not text.strip():
        return None, 'needs a non-empty string "text"'
    if isinstance(label, bool) or not isinstance(label, str | int):
        return None, 'needs a "label" that is a string or an integer'
    label = str(label)
    if not label.strip() or len(label) > MAX_LABEL_LENGTH:
        return None, f'"label" must be non-empty and at most {MAX_LABEL_LENGTH} characters'
    return label, None


def validate_labelled_set(body: bytes, *, max_examples: int) -> ValidatedLabelledSet:
    """Check every line; 422 listing the first bad lines by number (1-based), or the set as a whole."""
    if not body.strip():
        raise ApiError(422, 'the labelled set is empty: send JSONL lines {"text": "...", "label": "..."}')
    problems: list[dict[str, Any]] = []
    labels: Counter[str] = Counter()
    for number, raw in enumerate(body.split(b"\n"), start=1):
        if not raw.strip():
            continue
        label, problem = _line_problem(raw)
        if problem is not None:
            problems.append({"field": f"line {number}", "line": number, "message": problem})
            if len(problems) >= MAX_REPORTED_PROBLEMS:
                break
        else:
            assert label is not None
            labels[label] += 1
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more bad lines, listed in details)" if len(problems) > 1 else ""
        raise ApiError(422, f"line {first['line']}: {first['message']}{more}", details=problems)
    examples = sum(labels.values())
    if examples > max_examples:
        limit = f"at most {max_examples:,} (SELFSUP_MAX_LABELLED_SET_EXAMPLES)"
        raise ApiError(422, f"the labelled set has {examples:,} examples; {limit}")
    if len(labels) < 2:
        raise ApiError(422, f"a probe needs at least 2 labels; this set has {len(labels)}: {', '.join(labels)}")
    scarce = sorted(label for label, count in labels.items() if count < MIN_EXAMPLES_PER_LABEL)
    if scarce:
        raise ApiError(
            422,
            f"every label needs at least {MIN_EXAMPLES_PER_LABEL} examples (one to train on, one held out); "
            f"too few of: {', '.join(scarce[:10])}",
        )
    return ValidatedLabelledSet(
        body=body, sha256=hashlib.sha256(body).hexdigest(), examples=examples, label_counts=dict(labels)
    )
