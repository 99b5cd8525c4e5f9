"""The training core: manufacture a batch, predict, take the loss, update. No database, no Celery.

`Trainer` owns the model, the optimizer and the data, and declares the state it can save, so a
resumed job is the same job. What differs between objectives (the model family, how a batch is cut
and corrupted, the loss and its metrics) is the job's objective, bound to its data: the training side of
a registered objective (`models/objectives/`).
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch._dynamo  # imported with the worker, not inside a job's compile (seconds, under the import lock)
from torch.nn.parallel import DistributedDataParallel

from models.objectives.base import ObjectiveTraining
from selfsup.spec import JobSpec
from workers.data.token_arrays import TokenArrays
from workers.training import compiling
from workers.training.optim import configure_optimizer, learning_rate_at
from workers.training.precision import (
    CpuBf16Matmuls,
    allow_tf32,
    cpu_matmul_precision,
    use_bf16,
    use_bf16_matmuls,
)
from workers.training.ranks import ONE_PROCESS, Ranks

# A stream of the batch RNG reserved for the fixed validation windows, apart from every training step.
_VALIDATION_STREAM = 2**62
# Beyond this a loss's exp (a perplexity) is not a finite float: it is left out rather than recorded as inf.
_MAX_EXP = 700.0


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped being finite; the job fails instead of saving NaNs."""


class CompileFailedOnAnotherRank(RuntimeError):
    """`torch.compile` worked on this rank but failed on another one, so every rank trains eager."""


@dataclass(frozen=True)
class StepResult:
    """What one optimizer step measured (read back from the device only at steps whose metrics are due)."""

    loss: float
    grad_norm: float
    learning_rate: float
    # The objective's own training metrics, averaged over micro-steps (masked_accuracy, retrieval_accuracy).
    extra: dict[str, float] = field(default_factory=dict)


def pick_device() -> torch.device:
    """A CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


class Trainer:
    """One job's model, optimizer and data, stepped one optimizer update at a time."""

    def __init__(
        self,
        spec: JobSpec,
        data: TokenArrays,
        *,
        device: torch.device,
        heldout: Mapping[str, TokenArrays] | None = None,
        ranks: Ranks = ONE_PROCESS,
        base_config: dict[str, Any] | None = None,
        cpu_bf16_matmuls: CpuBf16Matmuls = "auto",
    ) -> None:
        """`base_config`: the `config.json` of an uploaded base model (`init_from.model_id`), which the model is
        built from instead of the job's shape (so a vocabulary padded past the tokenizer's length is kept).
        `cpu_bf16_matmuls`: the `SELFSUP_CPU_BF16_MATMULS` setting (precision.py)."""
        self.spec = spec
        self.ranks = ranks
        self.data = data
        self.device = device
        training = spec.training
        allow_tf32(device)
        seed_everything(training.seed)
        self.objective = spec.objective.training(spec, data)
        # The objective bound to each held-out corpus (by its metric name), to evaluate on, never to train on.
        self.heldout = {name: spec.objective.training(spec, arrays) for name, arrays in (heldout or {}).items()}
        if base_config is None:
            self.model = self.objective.build_model()
        else:
            self.model = self.objective.build_model_from(base_config)
        self.model.to(device)  # type: ignore[arg-type]
        self.model.train()
        self.optimizer = configure_optimizer(self.model, training, device)
        self.bf16 = use_bf16(training.precision, device)
        self.bf16_matmuls = use_bf16_matmuls(training.precision, device, cpu_bf16_matmuls)
        if self.bf16_matmuls:
            # PyTorch's CPU SDPA kernel ran about 10x slower in bf16 math mode; attention written out as two
            # products and a softmax gets the fast products, and compiles into fused kernels. The same function:
            # a checkpoint's config does not record which implementation trained it.
            self.model.set_attn_implementation("eager")
        # What the train step runs through: the model, DDP's wrapper of it once `join_ranks` made one, and that
        # compiled after `compile_forward`. Checkpoints and evaluation use the plain module (no `_orig_mod.` or
        # `module.` prefixes, no recompiling for eval mode; rank 0 alone evaluates).
        self.train_forward: torch.nn.Module | Callable[..., Any] = self.model
        # Without host syncs between metric steps, a non-finite step is caught on the device: the fused AdamW
        # skips its update (`found_inf`), and the first such step is read back at the next synced step.
        self.sync_free = bool(self.optimizer.defaults.get("fused"))
        self._first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.step = 0
        self.tokens_seen = 0
        # Training tokens drawn from each source of a weighted mixture so far (empty without one).
        self.tokens_by_source = {source.name: 0 for source in data.sources}
        # The metrics of the latest `evaluate()` besides the returned val_loss (val_masked_accuracy,
        # val_perplexity, and val_loss/<name> … for each held-out corpus).
        self.last_eval_metrics: dict[str, float] = {}

    @property
    def numerics(self) -> str:
        """How this job computes, in words (the `started` event says it)."""
        if self.bf16:
            return "bf16"
        return "fp32 with bf16 matrix products" if self.bf16_matmuls else "fp32"

    def matmul_precision(self) -> contextlib.AbstractContextManager[None]:
        """The CPU's fp32 matmul math mode this job trains and evaluates in (nothing to set on a GPU)."""
        if self.device.type != "cpu":
            return contextlib.nullcontext()
        return cpu_matmul_precision(self.bf16_matmuls)

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast when the precision asks for it, else nothing."""
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (inputs, labels) of one micro-batch, on the device: a pure function of the seed and the step."""
        return self._on_device(self._sample(step, micro_step))

    def _sample(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The same micro-batch, on the host."""
        return self.objective.sample("train", self._batch_rng(step, micro_step), self.spec.training.batch_size)

    def _my_rows(self, step: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's rows of that micro-batch (one process: all of them), on the host."""
        return self.ranks.my_rows(self._sample(step, micro_step))

    def source_tokens_at(self, step: int) -> dict[str, int]:
        """Training tokens each mixture source supplies to `step`'s batches (empty without a mixture)."""
        training, sources = self.spec.training, self.data.sources
        drawn = np.zeros(len(sources), dtype=np.int64)
        for micro_step in range(training.grad_accum_steps):
            # The same first draw the micro-batch makes, replayed from the same generator.
            picks = self.objective.draw_sources("train", self._batch_rng(step, micro_step), training.batch_size)
            if picks is not None:
                drawn += np.bincount(picks, minlength=len(sources))
        return {source.name: int(n) * self.spec.tokens_per_sequence for source, n in zip(sources, drawn, strict=True)}

    def loss_and_metrics(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss, and the objective's metrics on the same prediction."""
        with self.autocast():
            return self.objective.loss(self.train_forward, inputs, labels)

    def join_ranks(self) -> None:
        """Start every rank from rank 0's state (a fresh start, a resume or a base's weights: its step, optimizer
        and RNG; DDP copies its weights) and train through DistributedDataParallel; nothing with one process."""
        if self.ranks.world == 1:
            return
        self.ranks.before_leaving(self.leave_ranks)  # before the group goes, however the rank ends
        state = self.ranks.from_first(self.state_dict() if self.ranks.first else {})
        if not self.ranks.first:
            self.load_state_dict(state)
        device_ids = [self.device] if self.device.type == "cuda" else None
        # No buffer broadcast before every forward: the models' buffers are constants (position ids, rotary
        # frequencies), copied from rank 0 once here; and a forward without collectives lets the ranks warm up a
        # compile each on its own (`compile_forward`), even when one of them fails.
        self.train_forward = DistributedDataParallel(self.model, device_ids=device_ids, forward_sync_buffers=False)

    def leave_ranks(self) -> None:
        """Train without DistributedDataParallel again, and free its wrapper now, before the process group is
        destroyed: its reducer holds the group, and a reducer freed after `destroy_process_group` frees the gloo
        group itself, with the GIL held, joining gloo's threads while one of them waits for the GIL to finish
        its last work (a hang at the end of a rank: pytorch/pytorch#56297). Nothing with one process."""
        if self.ranks.world == 1:
            return
        self.train_forward = self.model
        gc.collect()  # the wrapper sits in reference cycles (a compiled forward's, its hooks'): a collection frees it

    def train_step(self, *, sync: bool = True) -> StepResult | None:
        """Forward, loss, backward, clip, check, update: one optimizer step.

        With `sync` (the default) the loss and gradient norm are read back and checked before the update, and
        the step's `StepResult` returned. Without it (steps whose metrics are not due, when the optimizer is
        fused) nothing waits for the device: a non-finite step skips its update on the device and raises
        `TrainingDiverged` at the next synced step (or `raise_if_diverged`), and None is returned.
        """
        with self.matmul_precision():
            return self._step(sync=sync)

    def _step(self, *, sync: bool) -> StepResult | None:
        training = self.spec.training
        sync = sync or not self.sync_free
        lr = learning_rate_at(self.step, training)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=self.device)
        metric_sums: dict[str, torch.Tensor] = {}
        for micro_step in range(training.grad_accum_steps):
            # Each rank takes its rows of the same global batch (one process: all of them), and weighs its loss
            # so that DDP's average of the gradients is the whole batch's (ranks.py).
            rows = self._my_rows(self.step, micro_step)
            # Counted on the host before the copy, so that weighing the ranks' losses never waits for the device.
            terms = self.objective.loss_terms(rows[1]) if self.ranks.world > 1 else 0
            inputs, labels = self._on_device(rows)
            loss, metrics = self.loss_and_metrics(inputs, labels)
            weight, batch_loss, metrics = self.ranks.weigh(loss, metrics, terms)
            if weight == 0.0:  # nothing to score in these rows: a zero that still reaches every weight, as DDP needs
                loss = sum((p.sum() for p in self.model.parameters()), torch.zeros((), device=self.device)) * 0.0
            (loss * weight / training.grad_accum_steps).backward()
            loss_sum += batch_loss
            for name, value in metrics.items():
                metric_sums[name] = metric_sums[name] + value if name in metric_sums else value
        loss_mean = loss_sum / training.grad_accum_steps
        if sync:
            self.raise_if_diverged()
            if not math.isfinite(loss_value := loss_mean.item()):
                raise TrainingDiverged(f"training diverged: the loss is {loss_value} at step {self.step + 1}")
        max_norm = training.grad_clip if training.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if sync:
            if not math.isfinite(grad_norm_value := grad_norm.item()):
                raise TrainingDiverged(
                    f"training diverged: the gradient norm is {grad_norm_value} at step {self.step + 1}"
                )
            self.optimizer.step()
        else:
            bad = ~(torch.isfinite(loss_mean) & torch.isfinite(grad_norm))
            self._first_bad_step = torch.where(bad & (self._first_bad_step < 0), self.step + 1, self._first_bad_step)
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # read by the fused step
            self.optimizer.step()
            del self.optimizer.found_inf  # type: ignore[attr-defined]
        self.optimizer.zero_grad(set_to_none=True)
        for name, tokens in self.source_tokens_at(self.step).items():
            self.tokens_by_source[name] += tokens
        self.step += 1
        self.tokens_seen += self.spec.tokens_per_step
        if not sync:
            return None
        extra = {name: float(total) / training.grad_accum_steps for name, total in metric_sums.items()}
        return StepResult(loss=loss_value, grad_norm=grad_norm_value, learning_rate=lr, extra=extra)

    def raise_if_diverged(self) -> None:
        """`TrainingDiverged` if a step since the last check (one that did not sync) was not finite; its update
        was skipped, so the weights are those before it."""
        if (first := int(self._first_bad_step)) >= 0:
            raise TrainingDiverged(f"training diverged: the loss or the gradient norm is not finite at step {first}")

    def compile_forward(self, backend: str | Callable[..., Any] = "inductor") -> float:
        """`torch.compile` the training forward and warm it up (forward and backward on the next step's first
        micro-batch; no update, gradients dropped, RNG untouched); returns the warm-up seconds. If compiling
        fails the error propagates and the forward stays eager.

        On several devices every rank calls this together (rank 0's `Order.COMPILE`) and the ranks agree: if it
        fails on any of them, every rank stays eager and raises (`CompileFailedOnAnotherRank` where its own
        compile worked), so they never train through different graphs. The warm-up's backward does not
        synchronise gradients (DDP's `no_sync`): a rank whose compile failed before its backward would otherwise
        leave the others waiting in the gradient all-reduce."""
        eager = self.train_forward
        if self.device.type == "cpu":
            compiling.deterministic_embedding_gradients()  # a compiled CPU job resumes bit for bit
        attention = self.model.config._attn_implementation
        if compiling.written_out_attention(self.device, self.spec.model.context_length):
            self.model.set_attn_implementation("eager")  # the same function; see compiling.py for the figures
        options = compiling.inductor_options(self.device) if backend == "inductor" else None
        compiled = torch.compile(eager, backend=backend, options=options)
        started = time.perf_counter()
        devices = [self.device] if self.device.type == "cuda" else []
        local = eager.no_sync() if isinstance(eager, DistributedDataParallel) else contextlib.nullcontext()
        failure: Exception | None = None
        try:
            with torch.random.fork_rng(devices=devices), local, self.matmul_precision():
                # This rank's rows: the shape its steps will have (on several devices, fewer than the batch's).
                inputs, labels = self._on_device(self._my_rows(self.step, 0))
                with self.autocast():
                    loss, _ = self.objective.loss(compiled, inputs, labels)
                loss.backward()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
        except Exception as exc:
            failure = exc
        finally:
            self.optimizer.zero_grad(set_to_none=True)
        failed = [
            (rank, said)
            for rank, said in enumerate(self.ranks.gather(None if failure is None else compiling.root_cause(failure)))
            if said is not None
        ]
        if failed:
            torch._dynamo.reset()  # drop what was half compiled; the eager forward goes on alone
            self.model.set_attn_implementation(attention)
            if failure is not None:
                raise failure
            rank, said = failed[0]
            raise CompileFailedOnAnotherRank(f"rank {rank}: {said}")
        self.train_forward = compiled
        return time.perf_counter() - started

    def evaluate(self) -> float:
        """Mean loss on the same fixed validation examples every time. The objective's metrics (`val_` prefix),
        the perplexity of a causal LM, and the same for each held-out corpus (`val_loss/<name>`, …) go to
        `last_eval_metrics`."""
        loss, metrics = self._evaluate_on(self.objective)
        # The main split's loss is the return value; its other metrics (and perplexity) go with the held-out ones.
        self.last_eval_metrics = _validation_metrics(metrics, self.spec, suffix="", loss=loss)
        del self.last_eval_metrics["val_loss"]
        for name, objective in self.heldout.items():
            heldout_loss, heldout_metrics = self._evaluate_on(objective)
            self.last_eval_metrics |= _validation_metrics(
                heldout_metrics, self.spec, suffix=f"/{name}", loss=heldout_loss
            )
        return loss

    @torch.no_grad()
    def _evaluate_on(self, objective: ObjectiveTraining) -> tuple[float, dict[str, float]]:
        """Mean loss and metrics on fixed validation examples of one objective binding's data."""
        evaluation, batch_size = self.spec.evaluation, self.spec.training.batch_size
        rng = np.random.default_rng([self.spec.training.seed, _VALIDATION_STREAM])
        inputs, labels = objective.sample("validation", rng, evaluation.batches * batch_size)
        losses: list[float] = []
        metric_lists: dict[str, list[float]] = {}
        with self._evaluation_mode(), self.matmul_precision():
            for start in range(0, len(inputs), batch_size):
                batch = self._on_device((inputs[start : start + batch_size], labels[start : start + batch_size]))
                with self.autocast():
                    loss, metrics = objective.loss(self.model, *batch)
                losses.append(loss.item())
                for name, value in metrics.items():
                    metric_lists.setdefault(name, []).append(float(value))
        return float(np.mean(losses)), {name: float(np.mean(values)) for name, values in metric_lists.items()}

    def load_pretrained(self, folder: Path) -> None:
        """Start from a base's weights (`init_from`): safetensors only, never a pickle; the step, optimizer and
        schedule stay fresh. `ValueError` if the folder's weights do not fit this job's model."""
        try:
            loaded = type(self.model).from_pretrained(folder, use_safetensors=True, local_files_only=True)
            self.model.load_state_dict(loaded.state_dict(), strict=True)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"the weights of init_from do not fit this job's model: {exc}") from exc

    def save_pretrained(self, folder: Path) -> None:
        """Save the model as a Hugging Face directory, plus any files the objective adds to a checkpoint."""
        self.model.save_pretrained(folder)
        self.objective.save_extras(folder)

    def _batch_rng(self, step: int, micro_step: int) -> np.random.Generator:
        return np.random.default_rng([self.spec.training.seed, step, micro_step])

    def _on_device(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """To the device; on CUDA from pinned host memory, so the copy is asynchronous and overlaps the step."""
        if self.device.type != "cuda":
            return batch
        inputs, labels = (tensor.pin_memory() for tensor in batch)
        return inputs.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def _evaluation_mode(self) -> Iterator[None]:
        """Dropout off; or, for an objective that needs dropout, on with fixed draws that leave the
        training RNG untouched (so evaluating never changes what training does next)."""
        if not self.objective.evaluate_with_dropout:
            self.model.eval()
            try:
                yield
            finally:
                self.model.train()
            return
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.spec.training.seed)
            yield

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that a resumed run needs to continue bit for bit."""
        state: dict[str, Any] = {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "tokens_by_source": dict(self.tokens_by_source),
            "optimizer": self.optimizer.state_dict(),
            "rng": {
                "python": _python_rng_state(),
                "numpy": _numpy_rng_state(),
                "torch": torch.get_rng_state(),
            },
        }
        if torch.cuda.is_available():
            state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a saved state (the weights are loaded separately, from the checkpoint)."""
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        # A state saved before mixtures were counted has no such entry.
        self.tokens_by_source.update({name: int(n) for name, n in state.get("tokens_by_source", {}).items()})
        self.optimizer.load_state_dict(state["optimizer"])
        rng = state["rng"]
        _set_python_rng_state(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def _validation_metrics(metrics: dict[str, float], spec: JobSpec, *, suffix: str, loss: float) -> dict[str, float]:
    """One evaluation's metrics as recorded: `val_loss<suffix>`, `val_<metric><suffix>`, and a causal LM's
    `val_perplexity<suffix>` (exp of the mean token cross-entropy)."""
    named = {f"val_loss{suffix}": loss, **{f"val_{name}{suffix}": value for name, value in metrics.items()}}
    if spec.objective.reports_perplexity and loss < _MAX_EXP:
        named[f"val_perplexity{suffix}"] = math.exp(loss)
    return named


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (model init and dropout draw from these)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# RNG states are stored as tensors and plain lists so `torch.load(weights_only=True)` can read them back.
def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _set_python_rng_state(state: list[Any]) -> None:
    version, internal, gauss = state
    random.setstate((int(version), tuple(int(x) for x in internal.tolist()), gauss))


def _numpy_rng_state() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return [name, torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def _set_numpy_rng_state(state: list[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((str(name), keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
