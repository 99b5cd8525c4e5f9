"""Every pretext objective, registered once: the job spec, the trainer and the model card read `OBJECTIVES`.

To add an objective, write `models/objectives/<name>.py` with its spec section (an `ObjectiveSpec`
subclass, tagged by `type`) and its training side (an `ObjectiveTraining` subclass that the section's
`training()` returns), list the section below, and test it under `tests/models/objectives/`.
"""

from __future__ import annotations

import typing

from models.objectives.base import ObjectiveSpec
from models.objectives.causal_lm import CausalLMObjective
from models.objectives.contrastive import ContrastiveObjective
from models.objectives.masked_lm import MaskedLMObjective
from models.objectives.span_corruption import SpanCorruptionObjective

# In the order the job spec's JSON schema lists them.
OBJECTIVES: tuple[type[ObjectiveSpec], ...] = (
    CausalLMObjective,
    MaskedLMObjective,
    SpanCorruptionObjective,
    ContrastiveObjective,
)


def objective_type(section: type[ObjectiveSpec]) -> str:
    """The `type` tag of an objective's spec section (its `Literal`)."""
    (tag,) = typing.get_args(section.model_fields["type"].annotation)
    return str(tag)


OBJECTIVES_BY_TYPE: dict[str, type[ObjectiveSpec]] = {objective_type(section): section for section in OBJECTIVES}
