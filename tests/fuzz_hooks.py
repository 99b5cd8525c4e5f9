"""Schemathesis hooks for selfsup's API (loaded through `hooks` in `schemathesis.toml`)."""

from __future__ import annotations

import schemathesis

# A JSON Lines upload (`POST /v1/labelled-sets`, `POST /v1/corpora`) is sent as the file's bytes.
schemathesis.serializer.alias(["application/jsonl", "application/x-ndjson"], "application/octet-stream")
