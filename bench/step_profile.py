"""Where a CPU training step's time goes: the trainer's own step (`workers.training.trainer.Trainer.train_step`, what
a job runs), eager and with `training.compile`, on `bench/train_throughput.py`'s job shape, and how fast this
machine runs the model's own matrix products alone: the floor under the issue-10 CPU goal.

    .venv/bin/python bench/step_profile.py            # --steps 200 --threads 2 --repeat 2
    .venv/bin/python bench/step_profile.py --steps 60 --repeat 1   # quick

For each repetition (eager and compiled alternate which goes first), in one process:

- **steps/s** of `train_step` over `--steps` steps after 30 warm-up steps (the compiled trainer is compiled and
  warmed up first; its warm-up is reported, not timed), without a host sync except every 10th step, as a job runs;
- **a profile** (`torch.profiler`, CPU) of 30 more steps of each, its time split into the step's parts: the
  forward (compiled graph or eager modules), the backward, gradient clipping, the fused AdamW update, and what
  is left (Python, the batch, the learning rate; for the eager trainer also the forward, whose operators run one
  by one at the top level); and the operators with the most self time, matrix products summed;
- **the matmul floor**: every matrix product of one step (the model's linear layers, attention's two products,
  forward and both backward products each, at their real shapes) timed alone back to back with `torch.mm`; their
  total time is what a step could not go below with this machine's BLAS, and against the step's model FLOPs it
  gives the highest model FLOPs utilisation reachable, next to the square-1024 matmul ceiling the benchmarks
  quote MFU against.

Results: bench/results/step_profile-<time>.json and a summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

from bench.train_throughput import job_spec, measure_matmul_flops  # noqa: E402
from models.build import SpecialTokenIds, count_parameters  # noqa: E402
from selfsup.estimate import job_flops_per_token  # noqa: E402
from selfsup.spec import JobSpec  # noqa: E402
from workers.data.token_arrays import TokenArrays  # noqa: E402
from workers.data.tokenization import train_char_tokenizer  # noqa: E402
from workers.training.precision import cpu_matmul_precision, use_bf16_matmuls  # noqa: E402
from workers.training.trainer import Trainer  # noqa: E402

WARMUP_STEPS = 30
PROFILED_STEPS = 30
SYNC_EVERY = 10
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn::_linear_pointwise", "aten::_mkl_linear"}

# Profiler events that start each part of a step (top-level events only; their children are inside them).
PARTS = {
    "forward": ("CompiledFunction", "Torch-Compiled Region"),
    "backward": ("autograd::engine::evaluate_function",),
    "clip": ("aten::_foreach_norm", "aten::linalg_vector_norm", "aten::stack", "aten::_foreach_mul_", "aten::clamp"),
    "optimizer": ("Optimizer.step",),
}


def char_data() -> TokenArrays:
    """tinyshakespeare through the project's character tokenizer (the benchmark job's `tokenizer: char`)."""
    text = SHAKESPEARE.read_text()
    tokenizer = train_char_tokenizer([text])
    tokens = np.array(tokenizer.backend_tokenizer.encode(text, add_special_tokens=False).ids, dtype=np.uint16)
    split = int(len(tokens) * 0.9)
    eos = int(tokenizer.convert_tokens_to_ids(tokenizer.eos_token))  # type: ignore[arg-type]
    return TokenArrays(
        train=tokens[:split], validation=tokens[split:], vocab_size=len(tokenizer), special=SpecialTokenIds(eos=eos)
    )


def the_spec(steps: int, compile: bool, precision: str = "fp32") -> JobSpec:
    return JobSpec.model_validate(job_spec("cor_bench", steps, compile=compile, precision=precision))


def run_steps(trainer: Trainer, steps: int) -> float:
    """Seconds for `steps` train steps, synced every SYNC_EVERY steps as a job is."""
    started = time.perf_counter()
    for i in range(steps):
        trainer.train_step(sync=(i + 1) % SYNC_EVERY == 0)
    return time.perf_counter() - started


def split_profile(trainer: Trainer) -> tuple[dict[str, float], dict[str, float]]:
    """Milliseconds per step in each part of the step, and in the operators that took longest, from a CPU profile of
    PROFILED_STEPS steps."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        run_steps(trainer, PROFILED_STEPS)
        wall = time.perf_counter() - started
    events = [e for e in prof.events() if e.cpu_parent is None]  # top level: what the Python thread waited on
    parts = dict.fromkeys(PARTS, 0.0)
    for event in events:
        for part, prefixes in PARTS.items():
            if event.name.startswith(prefixes):
                parts[part] += event.cpu_time_total / 1000
                break
    per_step = {part: ms / PROFILED_STEPS for part, ms in parts.items()}
    per_step["step"] = wall * 1000 / PROFILED_STEPS
    per_step["rest"] = per_step["step"] - sum(per_step[p] for p in PARTS)
    return per_step, top_ops(prof)


def top_ops(prof: profile, count: int = 12) -> dict[str, float]:
    """The operators (and inductor's generated kernels) with the most self time, in ms per step, and the share of
    all self time that went to matrix products."""
    averages = sorted(prof.key_averages(), key=lambda a: a.self_cpu_time_total, reverse=True)
    total = sum(a.self_cpu_time_total for a in averages)
    matmul = sum(a.self_cpu_time_total for a in averages if a.key in MATMUL_OPS)
    top = {a.key: a.self_cpu_time_total / 1000 / PROFILED_STEPS for a in averages[:count]}
    return top | {"(all matrix products)": matmul / 1000 / PROFILED_STEPS, "(all)": total / 1000 / PROFILED_STEPS}


def matmul_shapes(spec: JobSpec, vocab: int) -> list[tuple[int, int, int, int]]:
    """(m, k, n, count) of every matrix product of one training step of a GPT-2 causal LM of `spec`'s shape:
    each linear layer's forward and its two backward products, attention's scores and weighted sum (per batch and
    head) forward and backward."""
    model, training = spec.model, spec.training
    rows, width, context = training.batch_size * model.context_length, model.width, model.context_length
    head = width // model.heads
    linears = [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width)] * model.layers
    linears.append((width, vocab))  # the language-model head
    shapes = []
    for k, n in linears:
        shapes += [(rows, k, n, 1), (rows, n, k, 1), (k, rows, n, 1)]  # forward, input grad, weight grad
    batches = training.batch_size * model.heads * model.layers
    for m, k, n in ((context, head, context), (context, context, head)):  # q@k^T, p@v
        shapes += [(m, k, n, batches), (m, n, k, batches), (k, m, n, batches)]
    return shapes


def matmul_floor(shapes: list[tuple[int, int, int, int]], repeat: int = 20) -> tuple[float, float]:
    """Seconds one step's products take alone (best of `repeat`), and their FLOPs."""
    operands = [(torch.randn(m, k), torch.randn(k, n), count) for m, k, n, count in shapes]
    flops = sum(2.0 * m * k * n * count for m, k, n, count in shapes)

    def once() -> None:
        for a, b, count in operands:
            for _ in range(count):
                torch.mm(a, b)

    for _ in range(3):
        once()
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - started)
    return best, flops


def measure(kind: str, steps: int, data: TokenArrays, precision: str = "fp32") -> dict[str, Any]:
    spec = the_spec(WARMUP_STEPS + steps + PROFILED_STEPS + 10, compile=kind == "compiled", precision=precision)
    torch.manual_seed(spec.training.seed)
    trainer = Trainer(spec, data, device=torch.device("cpu"))
    warm_up = trainer.compile_forward() if kind == "compiled" else 0.0
    run_steps(trainer, WARMUP_STEPS)
    seconds = run_steps(trainer, steps)
    parts, ops = split_profile(trainer)
    result = trainer.train_step(sync=True)
    return {
        "kind": kind,
        "compile_seconds": warm_up,
        "steps_per_second": steps / seconds,
        "tokens_per_second": steps * spec.tokens_per_step / seconds,
        "ms_per_step": seconds * 1000 / steps,
        "profile_ms_per_step": parts,
        "top_ops_ms_per_step": ops,
        "train_loss_at_end": None if result is None else result.loss,
    }


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=200, help="timed steps per trainer")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2, help="repetitions, alternating eager and compiled first")
    parser.add_argument(
        "--precision",
        choices=("fp32", "auto"),
        default="fp32",
        help="the trainer's training.precision (auto: bf16 products of fp32 tensors on a CPU with AMX; the matmul "
        "ceiling and floor are then measured in that mode too)",
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = char_data()
    spec = the_spec(args.steps, compile=False)
    model = spec.objective.training(spec, data).build_model()
    flops_per_token = job_flops_per_token(spec, parameters=count_parameters(model), vocab_size=data.vocab_size)
    flops_per_step = flops_per_token * spec.tokens_per_step
    load_before = _load()
    bf16_mode = use_bf16_matmuls(args.precision, torch.device("cpu"))
    ceiling = measure_matmul_flops(threads=args.threads, bf16=bf16_mode)
    with cpu_matmul_precision(bf16_mode):
        floor_seconds, matmul_flops = matmul_floor(matmul_shapes(spec, data.vocab_size))
    runs: list[dict[str, Any]] = []
    order: tuple[str, ...] = ("eager", "compiled")
    for rep in range(args.repeat):
        for kind in order:
            run = measure(kind, args.steps, data, args.precision) | {"repetition": rep + 1}
            run["mfu_vs_ceiling"] = flops_per_step * run["steps_per_second"] / ceiling
            runs.append(run)
            parts = run["profile_ms_per_step"]
            print(
                f"rep {rep + 1} {kind:>8}: {run['ms_per_step']:.2f} ms/step, {run['tokens_per_second']:,.0f} tok/s, "
                f"MFU {run['mfu_vs_ceiling']:.1%}; profile ms/step: "
                + ", ".join(f"{name} {ms:.2f}" for name, ms in parts.items()),
                flush=True,
            )
            print("    self time, ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in run["top_ops_ms_per_step"].items()))
        order = order[::-1]
    eager = statistics.median(r["ms_per_step"] for r in runs if r["kind"] == "eager")
    compiled = statistics.median(r["ms_per_step"] for r in runs if r["kind"] == "compiled")
    floor = {
        "seconds_per_step": floor_seconds,
        "flops_per_step": matmul_flops,
        "flops_per_second": matmul_flops / floor_seconds,
        "share_of_ceiling": matmul_flops / floor_seconds / ceiling,
        "highest_mfu_vs_ceiling": flops_per_step / floor_seconds / ceiling,
    }
    report = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_model(), "threads": args.threads, "torch": torch.__version__},
        "precision": args.precision,
        "bf16_matmul_mode": bf16_mode,
        "load_average": {"before": load_before, "after": _load()},
        "model_flops_per_step": flops_per_step,
        "matmul_ceiling_flops": ceiling,
        "matmul_floor": floor,
        "median_ms_per_step": {"eager": eager, "compiled": compiled, "compiled_speedup": eager / compiled},
        "runs": runs,
    }
    out = args.out or ROOT / "bench" / "results" / f"step_profile-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(report, indent=1))
    print(
        f"matmul floor: one step's products alone take {floor_seconds * 1000:.2f} ms "
        f"({floor['flops_per_second'] / 1e9:.0f} GFLOP/s, {floor['share_of_ceiling']:.0%} of the square-1024 "
        f"ceiling of {ceiling / 1e9:.0f} GFLOP/s): MFU can reach at most {floor['highest_mfu_vs_ceiling']:.0%}"
    )
    print(f"median ms/step: eager {eager:.2f}, compiled {compiled:.2f} ({eager / compiled:.2f}x); wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
