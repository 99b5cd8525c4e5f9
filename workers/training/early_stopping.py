"""Early stopping: end a run once a validation metric has stopped improving (`evaluation.early_stopping`).

The rule Keras and Lightning use: an evaluation improves on the best so far when it beats it by more than
`min_delta` in the metric's direction; after `patience` evaluations in a row that do not, the run stops.
The state is a pure function of the metric's history, so a resumed job rebuilds it from its recorded
metrics rather than from its checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from selfsup.spec import EarlyStoppingSpec


@dataclass
class EarlyStopping:
    """The best value of one metric so far, and how many evaluations in a row have not beaten it."""

    metric: str
    patience: int
    min_delta: float
    mode: str
    best: float | None = None
    best_step: int | None = None
    waited: int = 0

    @classmethod
    def of(cls, spec: EarlyStoppingSpec) -> EarlyStopping:
        """The tracker for a job's `evaluation.early_stopping`."""
        return cls(metric=spec.metric, patience=spec.patience, min_delta=spec.min_delta, mode=spec.mode or "min")

    def update(self, step: int, value: float) -> bool:
        """Take one evaluation's value; True once `patience` evaluations in a row have not improved."""
        if self.best is None or (
            value < self.best - self.min_delta if self.mode == "min" else value > self.best + self.min_delta
        ):
            self.best, self.best_step, self.waited = value, step, 0
        else:
            self.waited += 1
        return self.waited >= self.patience

    def replay(self, history: Iterable[tuple[int, float]]) -> None:
        """Rebuild the state from the metric's recorded (step, value) pairs, oldest first."""
        for step, value in history:
            self.update(step, value)

    def reason(self, step: int) -> str:
        """Why the run stopped, for the job's history."""
        return (
            f"early stopping at step {step}: {self.metric} did not improve by {self.min_delta:g} for "
            f"{self.patience} evaluation{'s' if self.patience != 1 else ''} "
            f"(best {self.best:.4f} at step {self.best_step})"
        )
