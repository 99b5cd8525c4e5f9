"""The small building blocks of the job spec, with no heavy imports.

The objective modules under `models/objectives/` build their spec sections from these, and
`selfsup.spec` assembles the whole spec from those sections; the API imports it without torch.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError

ModelFamily = Literal["gpt2", "llama", "bert", "roberta", "t5"]
SpecialTokens = Literal["gpt2", "bert", "roberta", "t5"]

# The sentinel tokens a `t5` vocabulary carries, as in transformers' T5 tokenizers.
T5_SENTINELS = 100


class StrictModel(BaseModel):
    """A spec section: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


def invalid_combination(field: str, reason: str) -> PydanticCustomError:
    """A cross-field error that names the field to fix (`api.errors` puts `field` in the 422's details)."""
    return PydanticCustomError("invalid_combination", "{reason}", {"field": field, "reason": reason})
