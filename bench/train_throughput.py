"""Training throughput: the real service against a plain PyTorch loop doing the same work.

One command, from the repository root:

    .venv/bin/python bench/train_throughput.py [--objective causal_lm] [--steps 300] [--threads 2] [--repeat 6]

Each repetition starts `selfsup up` on the embedded default in a fresh temporary SELFSUP_HOME, uploads
tiny Shakespeare, trains a small character-level model for `--steps` steps on `--objective` (GPT-2 for
causal_lm, BERT for masked_lm and contrastive, T5 for span_corruption, or `--family`), reads the job's
`tokens_per_second` series and stops the service; and runs a plain, hand-written `transformers` loop of
the same shape on the same token array in a fresh process, doing the same work per step as the
objective (the same masking, corruption or two views, written plainly), never at the same time, so the
two never compete for the cores. Odd repetitions run the service first, even ones the plain loop first.
The verdict is the median of the repetitions' ratios.

The job is fp32 (`training.precision: fp32`, IEEE products); `--precision auto` trains it as a job that does not
say, which on a CPU with AMX multiplies fp32 tensors from bf16 operands (workers/training/precision.py). The plain
loop always multiplies in IEEE fp32. `bench/compare_curves.py` compares two runs' service loss curves step by step.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from models.build import build_causal_lm, build_encoder, build_seq2seq  # noqa: E402
from models.objectives import OBJECTIVES_BY_TYPE  # noqa: E402
from models.objectives.contrastive import ContrastiveObjective  # noqa: E402
from models.objectives.masked_lm import MaskedLMObjective  # noqa: E402
from models.objectives.span_corruption import SpanCorruptionObjective  # noqa: E402
from models.windows import gather_windows, sample_window_offsets  # noqa: E402
from selfsup.estimate import job_flops_per_token, spec_parameters  # noqa: E402
from selfsup.processes import keep_freed_memory  # noqa: E402
from selfsup.spec import JobSpec  # noqa: E402
from tests.factories import SHAKESPEARE, ready_corpus, submit_job  # noqa: E402
from tests.service import Service, start_service, wait_until  # noqa: E402
from workers.data.datasets import special_token_ids  # noqa: E402
from workers.training.optim import configure_optimizer, learning_rate_at  # noqa: E402
from workers.training.precision import cpu_matmul_precision  # noqa: E402

WARMUP_STEPS_EXCLUDED = 50
POLL_INTERVAL_SECONDS = 2.0  # slow polling, so the benchmark's own HTTP requests barely cost the trainer CPU
JOB_TIMEOUT_SECONDS = 3600.0
WINDOW_STEPS = 10  # the service records tokens_per_second every 10 steps; the plain loop times the same windows
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state first); empty if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return []


def _process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (all its threads); 0 if it is gone."""
    fields = _process_stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS if fields else 0.0


def _process_page_faults(pid: int) -> int:
    """Minor page faults of one process so far; 0 if it is gone."""
    fields = _process_stat(pid)
    return int(fields[7]) if fields else 0


def _descendants(root: int) -> list[int]:
    """`root` and every process below it, from the parent ids in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


@dataclass(frozen=True)
class CpuSnapshot:
    """Cumulative CPU seconds at one moment: the whole machine, the trainer, the rest of the service, this process."""

    wall: float
    busy: float
    steal: float
    trainer: float
    trainer_page_faults: int
    service_rest: float
    bench: float

    @classmethod
    def take(cls, *, trainer_pid: int | None = None, service_pids: list[int] | None = None) -> CpuSnapshot:
        """Read /proc now."""
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        steal = values[7] if len(values) > 7 else 0
        busy = sum(values[:8]) - idle - steal
        trainer = _process_cpu_seconds(trainer_pid) if trainer_pid else 0.0
        rest = sum(_process_cpu_seconds(p) for p in service_pids or [] if p != trainer_pid)
        return cls(
            wall=time.perf_counter(),
            busy=busy / CLOCK_TICKS,
            steal=steal / CLOCK_TICKS,
            trainer=trainer,
            trainer_page_faults=_process_page_faults(trainer_pid) if trainer_pid else 0,
            service_rest=rest,
            bench=time.process_time(),
        )


def cpu_usage(start: CpuSnapshot, end: CpuSnapshot) -> dict[str, float]:
    """Average cores busy between two snapshots, split by who used them.

    `outside_cores` is everything on the machine that is neither this benchmark nor the service it
    started: other people's work. Above about 0.1 the figures of that interval are contended.
    """
    wall = end.wall - start.wall
    trainer = end.trainer - start.trainer
    rest = end.service_rest - start.service_rest
    bench = end.bench - start.bench
    busy = end.busy - start.busy
    return {
        "seconds": round(wall, 2),
        "machine_busy_cores": round(busy / wall, 3),
        "trainer_cores": round(trainer / wall, 3),
        "service_rest_cores": round(rest / wall, 3),
        "bench_cores": round(bench / wall, 3),
        "outside_cores": round(max(0.0, busy - trainer - rest - bench) / wall, 3),
        "steal_cores": round((end.steal - start.steal) / wall, 3),
    }


def measure_matmul_flops(*, threads: int, size: int = 1024, seconds: float = 2.0, bf16: bool = False) -> float:
    """This machine's fp32 matmul ceiling on `threads` threads: FLOP/s of back-to-back square matmuls, the
    best of several short rounds (the peak a CPU's MFU is measured against); with `bf16`, of the same fp32
    matmuls in oneDNN's bf16 math mode (what a `precision: auto` job multiplies in on a CPU with AMX)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with cpu_matmul_precision(bf16):
            a, b = torch.randn(size, size), torch.randn(size, size)
            torch.mm(a, b)  # first-call overheads
            best, deadline = 0.0, time.perf_counter() + seconds
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                for _ in range(4):
                    torch.mm(a, b)
                best = max(best, 4 * 2 * size**3 / (time.perf_counter() - started))
            return best
    finally:
        torch.set_num_threads(previous)


OBJECTIVE_TYPES = tuple(OBJECTIVES_BY_TYPE)
FAMILIES = ("gpt2", "llama", "bert", "roberta", "t5")


def default_family(objective: str) -> str:
    """The family a job of this objective gets when it names none (gpt2, bert or t5)."""
    return OBJECTIVES_BY_TYPE[objective].families[0]


def job_spec(
    corpus_id: str,
    steps: int,
    *,
    family: str | None = None,
    compile: bool = False,
    objective: str = "causal_lm",
    precision: str = "fp32",
) -> dict[str, Any]:
    """The benchmark job: a small character-level model of the objective's default family (or `family`) in fp32,
    the objective's default parameters, one evaluation batch and one checkpoint at the end; `compile` is the
    job's `training.compile` and `precision` its `training.precision` (the plain loop never compiles and
    multiplies in IEEE fp32)."""
    return {
        "name": "bench-train-throughput",
        "corpus_ids": [corpus_id],
        "objective": {"type": objective},
        "tokenizer": {"type": "char"},
        "model": {
            "family": family or default_family(objective),
            "layers": 4,
            "heads": 4,
            "width": 128,
            "context_length": 64,
        },
        "training": {
            "compile": compile,
            "max_steps": steps,
            "batch_size": 12,
            "grad_accum_steps": 1,
            "precision": precision,
            "learning_rate": 1e-3,
            "min_learning_rate": 1e-4,
            "warmup_steps": min(100, steps),
            "betas": [0.9, 0.99],
            "weight_decay": 0.1,
            "grad_clip": 1.0,
            "seed": 1337,
        },
        "evaluation": {"every_steps": 100_000, "batches": 1},
        "checkpointing": {"every_steps": 100_000, "keep_last": 1},
    }


def service_env(threads: int) -> dict[str, str]:
    """Production-like settings (the test defaults are tuned for speed of tests, not for throughput), and
    SELFSUP_CPU_BF16_MATMULS from this process's environment where it is set (the service's environment is
    otherwise cleared of SELFSUP_ variables), so `--precision auto` can force bf16 products on a CPU without AMX."""
    env = {
        "SELFSUP_TORCH_THREADS": str(threads),
        "SELFSUP_CONTROL_INTERVAL_SECONDS": "1.0",
        "SELFSUP_LEASE_SECONDS": "60",
        "SELFSUP_RECONCILE_INTERVAL_SECONDS": "15",
        "SELFSUP_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
    }
    if "SELFSUP_CPU_BF16_MATMULS" in os.environ:
        env["SELFSUP_CPU_BF16_MATMULS"] = os.environ["SELFSUP_CPU_BF16_MATMULS"]
    return env


@dataclass
class ServiceResult:
    """What one service run measured."""

    job_id: str
    steady_tokens_per_second: float
    steady_steps: int
    steady_seconds: float
    window_rates: list[float]
    median_window_tokens_per_second: float
    end_to_end_seconds: float
    end_to_end_tokens_per_second: float
    final_train_loss: float | None
    vocab_size: int
    queued_to_finished_seconds: float
    cpu: dict[str, float]
    cpu_whole_job: dict[str, float]
    # Over the same interval as `cpu` (which ends with the final evaluation and checkpoint).
    trainer_page_faults_per_step: float
    compile_seconds: float | None = None  # the warm-up of a compiled job (left out of tokens_per_second)
    numerics: str = ""  # how the job computed, from its `started` event ("fp32", "fp32 with bf16 matrix products")
    train_loss: list[tuple[int, float]] | None = None  # (step, train_loss) at every logged step


@dataclass
class PlainResult:
    """What one plain-loop run measured."""

    tokens_per_second: float
    steps_timed: int
    seconds: float
    cpu_seconds: float
    cpu_utilization: float
    final_train_loss: float
    cpu: dict[str, float]
    window_rates: list[float]
    median_window_tokens_per_second: float
    page_faults_per_step: float


@dataclass
class Repetition:
    """One service run and one plain-loop run, back to back."""

    service: ServiceResult
    plain: PlainResult
    plain_first: bool

    @property
    def ratio(self) -> float:
        """Service steady-state throughput over the plain loop's."""
        return self.service.steady_tokens_per_second / self.plain.tokens_per_second

    @property
    def disturbed_cores(self) -> float:
        """The most cores that other work, or the hypervisor (steal), took from either side while it was timed."""
        sides = (self.service.cpu, self.plain.cpu)
        return max(side.get("outside_cores", 0.0) + side.get("steal_cores", 0.0) for side in sides)

    @property
    def median_window_ratio(self) -> float:
        """The same ratio from the median 10-step window of each: less sensitive to stalls from other work."""
        return self.service.median_window_tokens_per_second / self.plain.median_window_tokens_per_second


# Above this many cores taken by other work or by the hypervisor during either side's timed run, a repetition's
# ratio says more about the machine than about the code (one busy core halves a 2-thread loop).
QUIET_CORES = 0.1


def pooled_ratio(repetitions: list[Repetition]) -> float:
    """All timed steps over all timed seconds, service against plain loop (both steps have the same tokens)."""
    service = sum(r.service.steady_steps for r in repetitions) / sum(r.service.steady_seconds for r in repetitions)
    plain = sum(r.plain.steps_timed for r in repetitions) / sum(r.plain.seconds for r in repetitions)
    return service / plain


def order_ratios(repetitions: list[Repetition]) -> dict[str, float]:
    """The median ratio of the repetitions that ran the service first, of those that ran the plain loop
    first, and their geometric mean (`balanced_ratio`): an effect of the order cancels out of it."""
    by_order = {
        "median_ratio_service_first": [r.ratio for r in repetitions if not r.plain_first],
        "median_ratio_plain_first": [r.ratio for r in repetitions if r.plain_first],
    }
    medians = {name: statistics.median(ratios) for name, ratios in by_order.items() if ratios}
    if len(medians) == 2:
        medians["balanced_ratio"] = math.sqrt(math.prod(medians.values()))
    return medians


def steady_state(points: list[dict[str, Any]], *, tokens_per_step: int, skip_steps: int) -> tuple[float, int, float]:
    """Token-weighted throughput (total tokens / total time) over the metric windows after `skip_steps`.

    The service records `tokens_per_second` at step 1, then every 10 steps; each value covers the steps
    since the previous record. Returns (tokens per second, steps covered, seconds covered).
    """
    points = sorted(points, key=lambda p: p["step"])
    total_tokens, total_seconds, total_steps, previous = 0.0, 0.0, 0, 0
    for point in points:
        step, rate = int(point["step"]), float(point["value"])
        steps_in_window = step - previous
        previous = step
        if step - steps_in_window < skip_steps:  # the window starts inside the warm-up
            continue
        if rate <= 0:
            raise RuntimeError(f"non-positive tokens_per_second {rate} at step {step}")
        tokens = steps_in_window * tokens_per_step
        total_tokens += tokens
        total_seconds += tokens / rate
        total_steps += steps_in_window
    if total_seconds == 0:
        raise RuntimeError(f"no tokens_per_second windows after step {skip_steps}: {points}")
    return total_tokens / total_seconds, total_steps, total_seconds


def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def run_service(
    home: Path,
    *,
    steps: int,
    threads: int,
    family: str | None = None,
    compile: bool = False,
    objective: str = "causal_lm",
    precision: str = "fp32",
) -> tuple[ServiceResult, Dataset]:
    """Train the benchmark job on a fresh service; return its figures and its dataset (train tokens, sentence
    table, meta).

    The dataset is copied out of the service's home before the service stops, so the plain loop trains on
    exactly the array the service trained on.
    """
    service: Service = start_service(home, extra_env=service_env(threads))
    try:
        with service.client("alice") as client:
            corpus = ready_corpus(client, SHAKESPEARE.read_bytes(), name="tinyshakespeare.txt", timeout=600)
            service_pids = _descendants(service.process.pid)
            trainers = [p for p in service_pids if "--queues gpu" in _cmdline(p)]
            if len(trainers) != 1:
                raise RuntimeError(f"expected one training worker under the service, found {trainers}")
            trainer_pid = trainers[0]

            def snapshot() -> CpuSnapshot:
                return CpuSnapshot.take(trainer_pid=trainer_pid, service_pids=service_pids)

            submitted = snapshot()
            spec_body = job_spec(
                corpus["id"], steps, family=family, compile=compile, objective=objective, precision=precision
            )
            job = submit_job(client, spec_body)
            job_id = job["id"]
            # Taken at the first poll past the warm-up and at the poll that sees the end, so the interval also
            # holds the final evaluation, the checkpoint and up to one poll interval of idle: trainer_cores
            # reads a little low; outside_cores (what it is for) does not.
            steady_cpu: list[CpuSnapshot] = []
            steady_steps_at: list[int] = []

            def finished() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
                done = body["status"] in ("succeeded", "failed", "cancelled")
                if (done or body["step"] >= WARMUP_STEPS_EXCLUDED) and len(steady_cpu) < 1 + done:
                    steady_cpu.append(snapshot())
                    steady_steps_at.append(int(body["step"]))
                return body if done else None

            job = wait_until(
                finished, timeout=JOB_TIMEOUT_SECONDS, interval=POLL_INTERVAL_SECONDS, what=f"job {job_id}"
            )
            if job["status"] != "succeeded":
                raise RuntimeError(f"job {job_id} ended {job['status']}: {job.get('error')}\n{service.log()}")
            response = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "tokens_per_second"})
            response.raise_for_status()
            rates = response.json()["data"]
            compiled = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "compile_seconds"}).json()["data"]
            losses = client.get(f"/v1/jobs/{job_id}/metrics", params={"name": "train_loss"}).json()["data"]
            events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
        dataset = _read_dataset(home)
    finally:
        service.stop()

    spec = JobSpec.model_validate(job["spec"])
    tokens_per_step = spec.tokens_per_step
    steady, steady_steps, steady_seconds = steady_state(
        rates, tokens_per_step=tokens_per_step, skip_steps=WARMUP_STEPS_EXCLUDED
    )
    started, done = _parse_time(job["started_at"]), _parse_time(job["finished_at"])
    end_to_end = (done - started).total_seconds()
    result = ServiceResult(
        job_id=job_id,
        steady_tokens_per_second=steady,
        steady_steps=steady_steps,
        steady_seconds=steady_seconds,
        window_rates=[float(p["value"]) for p in sorted(rates, key=lambda p: p["step"])],
        median_window_tokens_per_second=statistics.median(
            float(p["value"]) for p in rates if int(p["step"]) > WARMUP_STEPS_EXCLUDED
        ),
        end_to_end_seconds=end_to_end,
        end_to_end_tokens_per_second=steps * tokens_per_step / end_to_end,
        final_train_loss=job["metrics"].get("train_loss"),
        vocab_size=int(dataset.meta["vocab_size"]),
        queued_to_finished_seconds=(done - _parse_time(job["created_at"])).total_seconds(),
        cpu=cpu_usage(steady_cpu[0], steady_cpu[-1]) if len(steady_cpu) == 2 else {},
        trainer_page_faults_per_step=(steady_cpu[-1].trainer_page_faults - steady_cpu[0].trainer_page_faults)
        / max(1, steady_steps_at[-1] - steady_steps_at[0]),
        cpu_whole_job=cpu_usage(submitted, steady_cpu[-1]),
        compile_seconds=float(compiled[0]["value"]) if compiled else None,
        numerics=_numerics(events),
        train_loss=sorted((int(p["step"]), float(p["value"])) for p in losses),
    )
    return result, dataset


def _numerics(events: list[dict[str, Any]]) -> str:
    """What a job's `started` event says it computes in: "training started on <host> (<device>, <numerics>, ...)"."""
    for event in events:
        if event["type"] == "started":
            parts = event["message"].split("(", 1)[-1].split(", ")
            return parts[1] if len(parts) > 2 else ""
    return ""


@dataclass(frozen=True)
class Dataset:
    """What the plain loop trains on: the service's train tokens, sentence table (contrastive) and meta."""

    tokens: np.ndarray
    sentences: np.ndarray | None
    meta: dict[str, Any]


SENTENCES_FILE = "train.sentences.npy"  # (n, 2) token offsets of each sentence (workers/data/token_arrays.py)


def _read_dataset(home: Path) -> Dataset:
    """The one tokenized dataset under the service's blob store: its meta.json and copies of train.bin and the
    sentence table."""
    folders = sorted((home / "blobs" / "datasets").glob("*/meta.json"))
    if len(folders) != 1:
        raise RuntimeError(f"expected one tokenized dataset under {home}, found {folders}")
    folder = folders[0].parent
    meta: dict[str, Any] = json.loads(folders[0].read_text())
    tokens = np.fromfile(folder / "train.bin", dtype=meta["dtype"])
    if len(tokens) != meta["train_tokens"]:
        raise RuntimeError(f"train.bin holds {len(tokens)} tokens, meta.json says {meta['train_tokens']}")
    sentences = np.load(folder / SENTENCES_FILE) if (folder / SENTENCES_FILE).is_file() else None
    return Dataset(tokens=tokens, sentences=sentences, meta=meta)


# ---- The plain loops: what a hand-written script does per step for each objective ----------------------------------
#
# Each builds the stock `transformers` class of the job's family and shape and returns a function from the batch RNG
# to the step's loss: the batch made plainly in NumPy/torch (the service's batch manufacture is not called), the
# forward, the loss. The loop around it (schedule, backward, clip, fused AdamW) is the same for all four.

PlainStep = Callable[[np.random.Generator], torch.Tensor]


def plain_causal_lm(spec: JobSpec, dataset: Dataset) -> tuple[torch.nn.Module, PlainStep]:
    """Next-token prediction: windows of context + 1 tokens, inputs and labels shifted by one."""
    meta, window = dataset.meta, spec.model.context_length + 1
    model = build_causal_lm(spec.model, vocab_size=int(meta["vocab_size"]), special=special_token_ids(meta))

    def step(rng: np.random.Generator) -> torch.Tensor:
        offsets = sample_window_offsets(len(dataset.tokens), window=window, count=spec.training.batch_size, rng=rng)
        batch = gather_windows(dataset.tokens, offsets, window)
        x, y = batch[:, :-1], batch[:, 1:]
        logits = model(input_ids=x, use_cache=False).logits
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))

    return model, step


def plain_masked_lm(spec: JobSpec, dataset: Dataset) -> tuple[torch.nn.Module, PlainStep]:
    """BERT's recipe as DataCollatorForLanguageModeling does it: [CLS] window [SEP], 15% of the non-special tokens
    chosen, of those 80% [MASK], 10% a random non-special token, 10% unchanged; loss at the chosen positions."""
    meta, special = dataset.meta, special_token_ids(dataset.meta)
    objective = spec.objective
    assert isinstance(objective, MaskedLMObjective)
    vocab_size, window = int(meta["vocab_size"]), spec.model.context_length - 2
    model = build_encoder(spec.model, vocab_size=vocab_size, special=special, head=True)
    begin = special.cls if special.cls is not None else special.bos
    end = special.sep if special.sep is not None else special.eos
    assert begin is not None and special.mask is not None
    mask_id = special.mask
    specials = torch.tensor(special.every)
    replacements = torch.tensor([i for i in range(vocab_size) if i not in set(special.every)])
    generator = torch.Generator().manual_seed(spec.training.seed)
    p_mask, p_random = objective.mask_replace_probability, objective.random_replace_probability

    def step(rng: np.random.Generator) -> torch.Tensor:
        count = spec.training.batch_size
        offsets = sample_window_offsets(len(dataset.tokens), window=window, count=count, rng=rng)
        text = gather_windows(dataset.tokens, offsets, window)
        ids = torch.cat([torch.full((count, 1), begin), text, torch.full((count, 1), end)], dim=1)
        chosen = (torch.rand(ids.shape, generator=generator) < objective.mask_probability) & ~torch.isin(ids, specials)
        fate = torch.rand(ids.shape, generator=generator)
        inputs = ids.masked_fill(chosen & (fate < p_mask), mask_id)
        swap = chosen & (fate >= p_mask) & (fate < p_mask + p_random)
        random_ids = replacements[torch.randint(len(replacements), ids.shape, generator=generator)]
        inputs = torch.where(swap, random_ids, inputs)
        labels = ids.masked_fill(~chosen, -100)
        logits = model(input_ids=inputs).logits
        return F.cross_entropy(logits.reshape(-1, vocab_size), labels.reshape(-1), ignore_index=-100)

    return model, step


def t5_noise_mask(length: int, noise_density: float, mean_span_length: float, rng: np.random.Generator) -> np.ndarray:
    """T5's `random_spans_noise_mask` as transformers' run_t5_mlm_flax.py writes it in NumPy (no random roll: the
    row starts with a kept span and ends with a noise span)."""
    noise_tokens = min(max(round(length * noise_density), 1), length - 1)
    spans = max(round(min(noise_tokens, length - noise_tokens) / mean_span_length), 1)

    def segmentation(items: int, segments: int) -> np.ndarray:
        first_in_segment = np.pad(rng.permutation(np.arange(items - 1) < segments - 1), [1, 0])
        return np.unique(np.cumsum(first_in_segment), return_counts=True)[1]

    lengths = np.stack([segmentation(length - noise_tokens, spans), segmentation(noise_tokens, spans)], axis=1)
    starts = np.zeros(length, dtype=np.int64)
    starts[np.cumsum(lengths.reshape(-1))[:-1]] = 1
    return np.cumsum(starts) % 2 == 1


def plain_span_corruption(spec: JobSpec, dataset: Dataset) -> tuple[torch.nn.Module, PlainStep]:
    """T5's span corruption as run_t5_mlm_flax.py does it: each noise span becomes one sentinel in the input, the
    target is each sentinel followed by the tokens it hid, both end with EOS; T5 computes the loss from `labels=`."""
    meta, special = dataset.meta, special_token_ids(dataset.meta)
    objective = spec.objective
    assert isinstance(objective, SpanCorruptionObjective)
    model = build_seq2seq(spec.model, vocab_size=int(meta["vocab_size"]), special=special)
    window = spec.tokens_per_sequence  # the raw tokens whose corrupted input fills the context
    sentinels = np.array(special.sentinels, dtype=np.int64)
    density, mean = objective.noise_density, objective.mean_span_length

    def drop_spans(ids: np.ndarray, dropped: np.ndarray) -> np.ndarray:
        """Each run of `dropped` positions replaced by the next sentinel, then EOS (`filter_input_ids`)."""
        starts = dropped & ~np.pad(dropped[:, :-1], [(0, 0), (1, 0)])
        with_sentinels = np.where(starts, sentinels[np.maximum(np.cumsum(starts, axis=1) - 1, 0)], ids)
        kept = with_sentinels[~dropped | starts].reshape(len(ids), -1)
        return np.concatenate([kept, np.full((len(ids), 1), special.eos)], axis=1)

    def step(rng: np.random.Generator) -> torch.Tensor:
        count = spec.training.batch_size
        offsets = sample_window_offsets(len(dataset.tokens), window=window, count=count, rng=rng)
        ids = gather_windows(dataset.tokens, offsets, window).numpy()
        noise = np.stack([t5_noise_mask(window, density, mean, rng) for _ in range(count)])
        inputs, labels = torch.from_numpy(drop_spans(ids, noise)), torch.from_numpy(drop_spans(ids, ~noise))
        return model(input_ids=inputs, labels=labels).loss

    return model, step


def plain_contrastive(spec: JobSpec, dataset: Dataset) -> tuple[torch.nn.Module, PlainStep]:
    """Unsupervised SimCSE: distinct random sentences, [CLS] sentence [SEP] padded to the longest, the batch
    encoded twice in one forward (dropout the augmentation), mean pooling, cosine similarity / temperature, and
    cross-entropy against the in-batch negatives."""
    meta, special = dataset.meta, special_token_ids(dataset.meta)
    objective = spec.objective
    assert isinstance(objective, ContrastiveObjective) and dataset.sentences is not None
    model = build_encoder(spec.model, vocab_size=int(meta["vocab_size"]), special=special, head=False)
    begin = special.cls if special.cls is not None else special.bos
    end = special.sep if special.sep is not None else special.eos
    assert special.pad is not None and begin is not None
    pad, longest_text, sentences = special.pad, spec.model.context_length - 2, dataset.sentences
    steps = itertools.count()

    def step(rng: np.random.Generator) -> torch.Tensor:
        # The sentences the service draws at this step (its per-step generator), not the loop's stream: a step's
        # work grows with the batch's longest sentence, so both sides pad to the same widths step by step.
        del rng
        count = spec.training.batch_size
        draw = np.random.default_rng([spec.training.seed, next(steps), 0])
        rows = [
            [begin, *dataset.tokens[start : min(stop, start + longest_text)].tolist(), end]
            for start, stop in sentences[draw.choice(len(sentences), size=count, replace=False)].tolist()
        ]
        ids = torch.full((count, max(len(row) for row in rows)), pad, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
        mask = ids != pad
        hidden = model(input_ids=torch.cat([ids, ids]), attention_mask=torch.cat([mask, mask])).last_hidden_state
        weights = torch.cat([mask, mask]).unsqueeze(-1).float()
        first, second = ((hidden * weights).sum(dim=1) / weights.sum(dim=1)).chunk(2)
        similarity = F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).T / objective.temperature
        return F.cross_entropy(similarity, torch.arange(count))

    return model, step


PLAIN_LOOPS: dict[str, Callable[[JobSpec, Dataset], tuple[torch.nn.Module, PlainStep]]] = {
    "causal_lm": plain_causal_lm,
    "masked_lm": plain_masked_lm,
    "span_corruption": plain_span_corruption,
    "contrastive": plain_contrastive,
}


def run_plain(
    dataset: Dataset,
    *,
    steps: int,
    threads: int,
    keep_memory: bool = True,
    family: str | None = None,
    objective: str = "causal_lm",
) -> PlainResult:
    """The same model, optimizer and batches in a bare loop; times steps after the warm-up exclusion.

    `keep_memory` gives this process the allocator setting a training worker has
    (`SELFSUP_TRAINER_KEEP_FREED_MEMORY`, on by default), so the comparison is of orchestration alone.
    It cannot be undone within a process: run this in a fresh one (`run_plain_process`).
    """
    if keep_memory:
        keep_freed_memory()
    torch.set_num_threads(threads)
    torch.backends.mkldnn.matmul.fp32_precision = "ieee"  # type: ignore[attr-defined]  # what a script multiplies in
    spec = JobSpec.model_validate(job_spec("cor_bench", steps, family=family, objective=objective))
    training = spec.training
    torch.manual_seed(training.seed)
    model, loss_of_step = PLAIN_LOOPS[objective](spec, dataset)
    model.train()
    device = torch.device("cpu")
    optimizer = configure_optimizer(model, training, device)
    rng = np.random.default_rng(training.seed)
    timed_from = cpu_from = window_from = 0.0
    faults_from = 0
    window_rates: list[float] = []
    snapshot = CpuSnapshot.take()
    loss_value = math.nan
    for step in range(steps):
        if step == WARMUP_STEPS_EXCLUDED:
            timed_from, cpu_from = time.perf_counter(), time.process_time()
            faults_from = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            window_from = timed_from
            snapshot = CpuSnapshot.take()
        lr = learning_rate_at(step, training)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = loss_of_step(rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = loss.item()
        if step >= WARMUP_STEPS_EXCLUDED and (step + 1) % WINDOW_STEPS == 0:
            now = time.perf_counter()
            window_rates.append(WINDOW_STEPS * spec.tokens_per_step / (now - window_from))
            window_from = now
    seconds = time.perf_counter() - timed_from
    cpu_seconds = time.process_time() - cpu_from
    steps_timed = steps - WARMUP_STEPS_EXCLUDED
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_from
    return PlainResult(
        tokens_per_second=steps_timed * spec.tokens_per_step / seconds,
        steps_timed=steps_timed,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        cpu_utilization=cpu_seconds / (seconds * threads),
        final_train_loss=loss_value,
        cpu=cpu_usage(snapshot, CpuSnapshot.take()),
        window_rates=window_rates,
        median_window_tokens_per_second=statistics.median(window_rates),
        page_faults_per_step=faults / steps_timed,
    )


def save_dataset(folder: Path, dataset: Dataset) -> Path:
    """Write the train tokens, sentence table and meta where `run_plain_process` children read them."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset.tokens.tofile(folder / "train.bin")
    if dataset.sentences is not None:
        np.save(folder / SENTENCES_FILE, dataset.sentences)
    (folder / "meta.json").write_text(json.dumps(dataset.meta))
    return folder


def _load_dataset(folder: Path) -> Dataset:
    meta: dict[str, Any] = json.loads((folder / "meta.json").read_text())
    sentences = np.load(folder / SENTENCES_FILE) if (folder / SENTENCES_FILE).is_file() else None
    return Dataset(tokens=np.fromfile(folder / "train.bin", dtype=meta["dtype"]), sentences=sentences, meta=meta)


def run_plain_process(
    dataset: Path, *, steps: int, threads: int, keep_memory: bool, family: str | None, objective: str
) -> PlainResult:
    """`run_plain` in a fresh Python process, as the service's trainer is one: neither side inherits a
    heap, page mappings or thread pools from earlier runs."""
    command = [sys.executable, str(Path(__file__).resolve()), "--steps", str(steps), "--threads", str(threads)]
    command += ["--plain-child", str(dataset), "--objective", objective]
    command += ["--family", family] if family else []
    command += [] if keep_memory else ["--plain-glibc-defaults"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"plain loop failed ({done.returncode}):\n{done.stderr[-5000:]}")
    return PlainResult(**json.loads(done.stdout.strip().splitlines()[-1]))


def machine(threads: int) -> dict[str, Any]:
    """Where the numbers came from."""
    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu,
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "threads": threads,
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _flops_per_token(family: str | None, vocab_size: int, steps: int, objective: str = "causal_lm") -> int:
    """Training FLOPs per counted token of the benchmark job (selfsup/estimate.py's `job_flops_per_token`, exact
    parameters; the service's `mfu` metric uses the same)."""
    spec = JobSpec.model_validate(job_spec("cor_bench", steps, family=family, objective=objective))
    return job_flops_per_token(spec, parameters=spec_parameters(spec, vocab_size=vocab_size), vocab_size=vocab_size)


def render_table(report: dict[str, Any]) -> str:
    """A small plain-text table of the figures."""
    rows: list[tuple[str, str]] = []
    first, threads = WARMUP_STEPS_EXCLUDED + 1, report["machine"]["threads"]
    for i, rep in enumerate(report["repetitions"], start=1):
        tag = f" [{i}{', plain first' if rep['plain_first'] else ''}]" if len(report["repetitions"]) > 1 else ""
        service, plain = rep["service"], rep["plain"]
        losses = f"{service['final_train_loss']:.3f} / {plain['final_train_loss']:.3f}"
        windows = f"{service['median_window_tokens_per_second']:,.0f} / {plain['median_window_tokens_per_second']:,.0f}"
        outside = f"{service['cpu'].get('outside_cores', math.nan):.2f} / {plain['cpu']['outside_cores']:.2f}"
        stolen = f"{service['cpu'].get('steal_cores', math.nan):.2f} / {plain['cpu'].get('steal_cores', math.nan):.2f}"
        rows += [
            (f"service tokens/s, steady (steps {first}+){tag}", f"{service['steady_tokens_per_second']:,.0f}"),
            (f"service tokens/s, end to end{tag}", f"{service['end_to_end_tokens_per_second']:,.0f}"),
            (f"service end-to-end seconds{tag}", f"{service['end_to_end_seconds']:.1f}"),
            (f"plain loop tokens/s (steps {first}+){tag}", f"{plain['tokens_per_second']:,.0f}"),
            (f"plain loop CPU use of {threads} threads{tag}", f"{plain['cpu_utilization']:.0%}"),
            (
                f"page faults per step: service / plain{tag}",
                f"{service['trainer_page_faults_per_step']:,.0f} / {plain['page_faults_per_step']:,.0f}",
            ),
            (f"other work, cores: service / plain run{tag}", outside),
            (f"stolen by the hypervisor, cores: service / plain run{tag}", stolen),
            (f"other work, cores: whole service job{tag}", f"{service['cpu_whole_job']['outside_cores']:.2f}"),
            (f"ratio service/plain, steady{tag}", f"{rep['ratio']:.3f}"),
            (f"  same, median 10-step window{tag}", f"{rep['median_window_ratio']:.3f} ({windows})"),
            (f"final train_loss service / plain{tag}", losses),
        ]
    if len(report["repetitions"]) > 1:
        rows.append(("median ratio service/plain", f"{report['median_ratio']:.3f}"))
        rows.append(("  lowest / highest", f"{report['min_ratio']:.3f} / {report['max_ratio']:.3f}"))
        rows.append(("  pooled (all steps over all seconds)", f"{report['pooled_ratio']:.3f}"))
        if "balanced_ratio" in report:
            orders = f"{report['median_ratio_service_first']:.3f} / {report['median_ratio_plain_first']:.3f}"
            rows.append(("  median, service first / plain first", orders))
            rows.append(("  balanced (geometric mean of those two)", f"{report['balanced_ratio']:.3f}"))
        rows.append(("  same, median 10-step window", f"{report['median_window_ratio']:.3f}"))
        quiet = report["quiet_repetitions"]
        verdict = f"{report['median_ratio_quiet']:.3f}" if quiet else "none was quiet"
        rows.append((f"median of the quiet ones (other work + steal < {QUIET_CORES} cores)", f"{verdict} ({quiet})"))
    m = report["machine"]
    rows += [
        ("objective / family", f"{report['objective']} / {report['job_spec']['model']['family']}"),
        ("tokens per step (both sides)", f"{report['tokens_per_step']:,}"),
        ("machine", m["platform"]),
        ("cpu", f"{m['cpu']} (nproc {m['nproc']})"),
        ("torch / threads", f"{m['torch']} / {m['threads']}"),
        ("steps", str(report["steps"])),
        ("load avg before / after", f"{report['loadavg_before']} / {report['loadavg_after']}"),
        ("service computes in", ", ".join(report["service_numerics"])),
        ("fp32 matmul ceiling", f"{report['fp32_matmul_ceiling_flops'] / 1e9:,.1f} GFLOP/s"),
        ("MFU service / plain (vs that ceiling)", f"{report['mfu_service']:.1%} / {report['mfu_plain']:.1%}"),
        ("same, bf16-mode ceiling", f"{report['bf16_mode_matmul_ceiling_flops'] / 1e9:,.1f} GFLOP/s"),
        ("MFU service vs the bf16-mode ceiling", f"{report['mfu_service_vs_bf16_mode_ceiling']:.1%}"),
        ("service compile warm-up (s)", ", ".join(f"{s:.0f}" for s in report["service_compile_seconds"] if s)),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the repetitions, print the table and write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="optimizer steps per run (default 300)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, service and plain loop (default 2)")
    parser.add_argument("--repeat", type=int, default=6, help="service + plain-loop repetitions (default 6)")
    parser.add_argument(
        "--plain-glibc-defaults",
        action="store_true",
        help="run the plain loop with glibc's malloc defaults instead of the training worker's setting",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVE_TYPES,
        default="causal_lm",
        help="what the job and the plain loop train (default causal_lm)",
    )
    parser.add_argument(
        "--family",
        choices=FAMILIES,
        default=None,
        help="the model family (default: the objective's, gpt2, bert or t5; causal_lm also takes llama, masked_lm "
        "and contrastive roberta)",
    )
    parser.add_argument(
        "--compile", action="store_true", help="the service job sets training.compile: true (the plain loop: eager)"
    )
    parser.add_argument(
        "--precision",
        choices=("fp32", "auto"),
        default="fp32",
        help="the service job's training.precision (default fp32: IEEE products; auto: bf16 products of fp32 "
        "tensors on a CPU with AMX); the plain loop multiplies in IEEE fp32 either way",
    )
    parser.add_argument("--plain-child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--keep-home", action="store_true", help="keep each run's SELFSUP_HOME (service log, DB)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report (default bench/results/...-<date>.json)")
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS_EXCLUDED + 10:
        parser.error(f"--steps must exceed {WARMUP_STEPS_EXCLUDED + 10}; the first {WARMUP_STEPS_EXCLUDED} are warm-up")
    if args.repeat < 1 or args.threads < 1:
        parser.error("--repeat and --threads must be at least 1")
    if args.family and args.family not in OBJECTIVES_BY_TYPE[args.objective].families:
        families = ", ".join(OBJECTIVES_BY_TYPE[args.objective].families)
        parser.error(f"--objective {args.objective} trains {families}, not --family {args.family}")
    keep = not args.plain_glibc_defaults
    if args.plain_child:  # one plain-loop run in this fresh process, for run_plain_process
        plain_run = dict(steps=args.steps, threads=args.threads, keep_memory=keep, family=args.family)
        result = run_plain(_load_dataset(args.plain_child), **plain_run, objective=args.objective)
        print(json.dumps(asdict(result)))
        return 0
    out: Path = args.out or REPO / "bench" / "results" / f"train_throughput-{datetime.now():%Y%m%d-%H%M%S}.json"

    spec_of_run: dict[str, Any] = dict(family=args.family, objective=args.objective)
    loadavg_before = [round(x, 2) for x in os.getloadavg()]
    ceiling = measure_matmul_flops(threads=args.threads)
    bf16_ceiling = measure_matmul_flops(threads=args.threads, bf16=True)
    print(
        f"fp32 matmul ceiling on {args.threads} threads: {ceiling / 1e9:,.1f} GFLOP/s IEEE, "
        f"{bf16_ceiling / 1e9:,.1f} GFLOP/s in oneDNN's bf16 math mode",
        flush=True,
    )
    repetitions: list[Repetition] = []
    sides = dict(steps=args.steps, threads=args.threads, family=args.family, objective=args.objective)
    with tempfile.TemporaryDirectory(prefix="selfsup-bench-") as scratch:
        dataset: Path | None = None
        for i in range(args.repeat):
            tag = f"[{i + 1}/{args.repeat}]"
            # The machine's speed drifts over minutes; alternating which side goes first (service, plain;
            # plain, service; ...) keeps a drift from always favouring the same side.
            plain_first = i % 2 == 1 and dataset is not None
            if plain_first:
                assert dataset is not None
                print(f"{tag} plain loop ...", flush=True)
                plain = run_plain_process(dataset, keep_memory=keep, **sides)
            print(f"{tag} service: {args.objective}, {args.steps} steps on {args.threads} threads ...", flush=True)
            tmp = Path(tempfile.mkdtemp(prefix="selfsup-bench-"))
            try:
                service, trained_on = run_service(tmp / "home", compile=args.compile, precision=args.precision, **sides)
            finally:
                if args.keep_home:
                    print(f"{tag} kept {tmp / 'home'}", flush=True)
                else:
                    shutil.rmtree(tmp)
            dataset = dataset or save_dataset(Path(scratch) / "dataset", trained_on)
            if not plain_first:
                print(f"{tag} plain loop ...", flush=True)
                plain = run_plain_process(dataset, keep_memory=keep, **sides)
            repetitions.append(Repetition(service=service, plain=plain, plain_first=plain_first))
            print(
                f"{tag} service {service.steady_tokens_per_second:,.0f} tok/s, "
                f"plain {plain.tokens_per_second:,.0f} tok/s, ratio {repetitions[-1].ratio:.3f}",
                flush=True,
            )

    report: dict[str, Any] = {
        "benchmark": "train_throughput",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "steps": args.steps,
        "warmup_steps_excluded": WARMUP_STEPS_EXCLUDED,
        "objective": args.objective,
        "job_spec": job_spec(
            "<corpus>",
            args.steps,
            family=args.family,
            compile=args.compile,
            objective=args.objective,
            precision=args.precision,
        ),
        "service_numerics": sorted({r.service.numerics for r in repetitions}),
        # Counted alike on both sides: JobSpec.tokens_per_step, what the service's tokens_per_second counts.
        "tokens_per_step": JobSpec.model_validate(job_spec("cor_bench", args.steps, **spec_of_run)).tokens_per_step,
        "machine": machine(args.threads),
        "plain_keeps_freed_memory": keep,
        "loadavg_before": loadavg_before,
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "repetitions": [
            {**asdict(r), "ratio": r.ratio, "median_window_ratio": r.median_window_ratio} for r in repetitions
        ],
        "median_ratio": statistics.median(r.ratio for r in repetitions),
        "min_ratio": min(r.ratio for r in repetitions),
        "max_ratio": max(r.ratio for r in repetitions),
        # All steady tokens over all steady seconds, each side: long runs weigh more than short ones.
        "pooled_ratio": pooled_ratio(repetitions),
        **order_ratios(repetitions),
        "median_window_ratio": statistics.median(r.median_window_ratio for r in repetitions),
        "quiet_repetitions": len(quiet := [r for r in repetitions if r.disturbed_cores < QUIET_CORES]),
        "median_ratio_quiet": statistics.median(r.ratio for r in quiet) if quiet else None,
        "median_service_steady_tokens_per_second": statistics.median(
            r.service.steady_tokens_per_second for r in repetitions
        ),
        "median_plain_tokens_per_second": statistics.median(r.plain.tokens_per_second for r in repetitions),
        "fp32_matmul_ceiling_flops": ceiling,
        "bf16_mode_matmul_ceiling_flops": bf16_ceiling,
    }
    per_token = _flops_per_token(args.family, repetitions[0].service.vocab_size, args.steps, args.objective)
    report["flops_per_token"] = per_token
    report["mfu_service"] = report["median_service_steady_tokens_per_second"] * per_token / ceiling
    report["mfu_plain"] = report["median_plain_tokens_per_second"] * per_token / ceiling
    report["mfu_service_vs_bf16_mode_ceiling"] = report["mfu_service"] * ceiling / bf16_ceiling
    report["service_compile_seconds"] = [r.service.compile_seconds for r in repetitions]
    print()
    print(render_table(report))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
