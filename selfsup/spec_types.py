"""The small building blocks of the job spec, with no heavy imports.

The objective modules under `models/objectives/` build their spec sections from these, and
`selfsup.spec` assembles the whole spec from those sections; the API imports it without torch.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic_core import PydanticCustomError

# The most devices one job trains on together (`resources.devices`); a training queue per count (workers/celery_app.py).
MAX_DEVICES = 64

ModelFamily = Literal["gpt2", "llama", "bert", "roberta", "t5"]
SpecialTokens = Literal["gpt2", "bert", "roberta", "t5"]

# The sentinel tokens a `t5` vocabulary carries, as in transformers' T5 tokenizers.
T5_SENTINELS = 100


class StrictModel(BaseModel):
    """A spec section: unknown fields are an error, not silently ignored, and a float must be a finite number
    (Python's JSON reader accepts `NaN` and `Infinity`, which no bound would refuse with a helpful message)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Characters a name may not hold: controls (NUL, tab, newline, escape, C1), invisible formatting (bidi overrides,
# zero-width characters, the byte-order mark) and line or paragraph separators, all of the Basic Multilingual Plane
# (the few formatting characters beyond it are emoji tags and the like), and lone surrogates (not encodable as
# UTF-8). Names are shown in listings, logs and model cards, and PostgreSQL refuses NUL in text where SQLite keeps it.
_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")
_SURROGATES = "\\ud800-\\udfff"


def _forbidden_class() -> str:
    """The forbidden characters as the inside of a regular-expression class, `\\u0000-\\u001f...`."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if unicodedata.category(chr(code)) in _FORBIDDEN_CATEGORIES:
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1] = (ranges[-1][0], code)
            else:
                ranges.append((code, code))
    return "".join(f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges)


_FORBIDDEN_CLASS = _forbidden_class()
_FORBIDDEN_CHARACTER = re.compile(f"[{_FORBIDDEN_CLASS}{_SURROGATES}]")
# What the OpenAPI document says (JSON Schema patterns are ECMAScript, where a surrogate range would also refuse
# every character beyond the Basic Multilingual Plane; lone surrogates are refused all the same).
NAME_PATTERN = f"^[^{_FORBIDDEN_CLASS}]*$"
NAME_MAX_LENGTH = 200


def forbidden_name_character(value: str) -> str | None:
    """Why `value` may not be a name (its first control or invisible character), or None when it may."""
    found = _FORBIDDEN_CHARACTER.search(value)
    if found is None:
        return None
    code, position = ord(found.group()), found.start()
    return f"must not contain control or invisible characters; found U+{code:04X} at position {position}"


def check_name(value: str) -> str:
    """A name's validator: refuses control and invisible characters (see `Name`)."""
    problem = forbidden_name_character(value)
    if problem:
        raise PydanticCustomError("control_characters", "{problem}", {"problem": problem})
    return value


# The name of anything a client creates (a corpus, job, dataset, model, labelled set): 1 to 200 characters, any
# letters, digits, spaces and punctuation of any script, but no control or invisible characters.
Name = Annotated[
    str,
    Field(min_length=1, max_length=NAME_MAX_LENGTH),
    AfterValidator(check_name),
    WithJsonSchema({"type": "string", "minLength": 1, "maxLength": NAME_MAX_LENGTH, "pattern": NAME_PATTERN}),
]


def invalid_combination(field: str, reason: str) -> PydanticCustomError:
    """A cross-field error that names the field to fix (`api.errors` puts `field` in the 422's details)."""
    return PydanticCustomError("invalid_combination", "{reason}", {"field": field, "reason": reason})
