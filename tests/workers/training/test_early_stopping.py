"""The early-stopping rule, on its own: improvement beyond min_delta, patience, direction, and replay."""

from __future__ import annotations

from selfsup.spec import EarlyStoppingSpec, heldout_metric_names
from workers.training.early_stopping import EarlyStopping


def _stops_at(tracker: EarlyStopping, values: list[float]) -> int | None:
    for i, value in enumerate(values, start=1):
        if tracker.update(i * 10, value):
            return i * 10
    return None


def test_stops_after_patience_evaluations_without_an_improvement_beyond_min_delta() -> None:
    spec = EarlyStoppingSpec(metric="val_loss", patience=2, min_delta=0.1, mode="min")
    # 2.95 beats 3.0 by less than min_delta: not an improvement, and the best stays 3.0 (at step 20).
    assert _stops_at(EarlyStopping.of(spec), [4.0, 3.0, 2.95, 2.92, 1.0]) == 40
    tracker = EarlyStopping.of(spec)
    _stops_at(tracker, [4.0, 3.0, 2.95, 2.92])
    assert tracker.reason(40) == (
        "early stopping at step 40: val_loss did not improve by 0.1 for 2 evaluations (best 3.0000 at step 20)"
    )
    assert _stops_at(EarlyStopping.of(spec), [4.0, 3.0, 2.5, 2.0, 1.5]) is None


def test_max_mode_and_a_replayed_history_give_the_same_state() -> None:
    spec = EarlyStoppingSpec(metric="val_masked_accuracy", patience=3, mode="max")
    values = [0.1, 0.3, 0.3, 0.29, 0.5, 0.4]
    live = EarlyStopping.of(spec)
    assert _stops_at(live, values) is None
    resumed = EarlyStopping.of(spec)
    resumed.replay([(i * 10, v) for i, v in enumerate(values, start=1)])
    assert (resumed.best, resumed.best_step, resumed.waited) == (live.best, live.best_step, live.waited) == (0.5, 50, 1)


def test_held_out_names_are_sanitised_and_fall_back_to_ids_on_a_collision() -> None:
    names = heldout_metric_names(
        [("cor_1", "wiki text.txt"), ("cor_2", "wiki?text.txt"), ("cor_3", "news"), ("cor_4", "∂")]
    )
    assert names == {"cor_1": "cor_1", "cor_2": "cor_2", "cor_3": "news", "cor_4": "_"}
    assert heldout_metric_names([("cor_5", "x" * 100)]) == {"cor_5": "x" * 40}
