"""Whether a job's forward goes through `torch.compile`: the rule behind `training.compile: auto`.

Compiling costs a warm-up (tens of seconds, on a CPU or a GPU alike) and then makes each step faster (the
plain `transformers` GPT-2 loop ran 1.35x faster on a 2-core CPU after a 55 s warm-up, bench/README.md). It
pays only when the run is long enough. `auto` therefore trains the first steps eager, measures them, and
compiles when the rest of the run at that speed would take at least `AUTO_MIN_REMAINING_SECONDS`: at a 1.3x
speed-up a run saves about a quarter of its time, so 5 minutes pays back a one-minute warm-up with room to
spare. Tiny and short jobs never compile; `true` compiles before the first step, `false` never does. A setup
where compiling cannot work is never tried; one where it fails anyway falls back to eager (the job goes on).
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

# `auto` decides at the first logged window of at least this many steps (the window of steps 2-10).
AUTO_PROBE_STEPS = 9
AUTO_MIN_REMAINING_SECONDS = 300.0

Setting = bool | Literal["auto"]


@dataclass(frozen=True)
class CompileChoice:
    """Compile or not (None: `auto` has not measured enough steps yet), and why, for the job's events."""

    compile: bool | None
    reason: str


def unsupported_reason(device: torch.device) -> str | None:
    """Why `torch.compile` cannot run on this setup, or None if it can."""
    if sys.platform == "win32":
        return "torch.compile's inductor backend does not run on Windows"
    if device.type == "cpu" and not any(shutil.which(cc) for cc in (os.environ.get("CXX", "g++"), "c++", "clang++")):
        return "inductor's CPU code needs a C++ compiler and none is on PATH"
    if device.type == "cpu" and not (Path(sysconfig.get_path("include")) / "Python.h").exists():
        return "inductor's CPU code needs Python's C headers (Python.h; on Debian and Ubuntu: python3-dev)"
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < (7, 0):
        return "inductor's Triton kernels need a GPU of compute capability 7.0 or newer"
    if device.type not in ("cpu", "cuda"):
        return f"the trainer compiles for CPUs and CUDA GPUs, not {device.type}"
    return None


def choose_at_start(
    setting: Setting, device: torch.device, *, remaining_steps: int, shapes_vary: bool = False
) -> CompileChoice:
    """The choice before the first step: `true` compiles now, `false` never; `auto` waits to measure, unless
    the setup cannot compile, the run is too short to measure and pay back a warm-up, or the batch's shape
    changes from step to step (`shapes_vary`: a forward compiled for dynamic shapes measured slower than eager,
    0.86x against 0.93x of the plain loop for contrastive on a 2-core CPU, bench/README.md)."""
    if setting is False:
        return CompileChoice(False, "off (training.compile: false)")
    unsupported = unsupported_reason(device)
    if unsupported is not None:
        return CompileChoice(False, f"off ({'requested but ' if setting is True else 'auto: '}{unsupported})")
    if setting is True:
        return CompileChoice(True, "on (training.compile: true)")
    if shapes_vary:
        return CompileChoice(
            False,
            "off (auto: the batch's shape changes from step to step, and a forward compiled for changing shapes "
            "ran slower than eager; training.compile: true compiles anyway)",
        )
    if remaining_steps <= 10 * AUTO_PROBE_STEPS:
        return CompileChoice(False, f"off (auto: {remaining_steps} steps to go, too few to pay back a warm-up)")
    return CompileChoice(None, "auto: measuring the first eager steps")


def choose_after_measuring(
    step_seconds: float, *, remaining_steps: int, min_seconds: float = AUTO_MIN_REMAINING_SECONDS
) -> CompileChoice:
    """`auto`'s choice from the measured eager speed: compile if the rest of the run would take at least
    `min_seconds` (SELFSUP_COMPILE_AUTO_MIN_SECONDS, default `AUTO_MIN_REMAINING_SECONDS`)."""
    remaining = step_seconds * remaining_steps
    verdict = "on" if remaining >= min_seconds else "off"
    relation = "at least" if verdict == "on" else "under"
    return CompileChoice(
        verdict == "on",
        f"{verdict} (auto: {remaining_steps} steps to go at {step_seconds:.3g} s/step eager is about "
        f"{remaining:.0f} s, {relation} the {min_seconds:.0f} s that pays back a compile warm-up)",
    )


@functools.cache
def deterministic_embedding_gradients() -> None:
    """Compile the embeddings' backward to ATen's kernel on the CPU, not to inductor's scatter: the scatter adds the
    rows of a batch with atomic adds from every thread, in whatever order the threads run, so two processes of
    the same compiled job drifted apart (5e-8 of the loss at first, from step 2-13 on, with two threads and
    dropout). ATen's kernel gives each thread its own rows: three fresh processes agreed bit for bit over 100
    steps, and the step was no slower (103-111 against 108-113 ms, bench shape, 2-vCPU AMD). Process-wide and
    once: it changes inductor's tables (private, as of torch 2.13), not one compile's options."""
    from torch._inductor import decomposition, lowering

    decomposition.decompositions.pop(torch.ops.aten.embedding_dense_backward.default, None)
    lowering.make_fallback(torch.ops.aten.embedding_dense_backward, warn=False)


# The longest context at which a compiled CPU step ran faster with attention written out (two products and a
# softmax that inductor fuses with what surrounds them) than through SDPA's CPU kernel, which the graph must call
# as an opaque kernel with its layouts copied around it. Whole compiled steps at 768 tokens a step, 2-vCPU AMD EPYC
# (Zen 4), 2026-11-28, written out / SDPA: context 64 0.75-0.85 (four pairs), 128 0.93-0.96, 256 0.90-1.01 (two
# each); at 1024 the attention alone took 2.7x SDPA's time (and memory grows with the context's square).
WRITTEN_OUT_ATTENTION_MAX_CONTEXT = 256


def written_out_attention(device: torch.device, context_length: int) -> bool:
    """Whether a compiled forward on this device should attend written out rather than through SDPA."""
    return device.type == "cpu" and context_length <= WRITTEN_OUT_ATTENTION_MAX_CONTEXT


def inductor_options(device: torch.device) -> dict[str, str | int | bool | Callable[..., Any]] | None:
    """Inductor's settings for a job's compiled forward and backward on this device (`torch.compile`'s `options`;
    None: its defaults).

    On the CPU (A/B figures from a 2-vCPU Intel Xeon at 2.5 GHz with AVX-512 and no AMX, 2026-11-28, on the
    benchmark's shape):

    - `tanh` as `2 / (1 + exp(-2x)) - 1`. With inductor's default, SLEEF's vectorised `tanh` (accurate to 1 ULP),
      the GELU of GPT-2 (its tanh form) and its backward were the slowest kernels of a compiled step: 875 and 823
      µs a layer, against 282 and 357 written through `exp`. The two differ by at most 1.8e-7 (absolute) in
      `tanh`, which the GELU adds to 1; the loss curves were equal to six digits at step 281. PyTorch made SLEEF
      the default for a `tanh` whose relative error near 0 matters (pytorch/pytorch#148241: `x - tanh(x)`, then
      `atan2`), not the case in a GELU. The setting exists from torch 2.8 on; before it, the decomposed form was
      the default.
    - `cpp_wrapper`: the compiled graphs call their kernels and matrix products from C++, not from generated
      Python, which took about 3 ms of a 42 ms step. Two compiled trainers in one process, alternating 10-step
      windows: a step took 0.958 of the Python wrapper's time (0.965 with the order swapped; the same trainer
      against itself 1.009); the same losses to the last digit printed. The first compile takes longer (47 s
      against 18 s, cold), which is warm-up, reported and not counted as training time."""
    from torch._inductor import config

    if device.type != "cpu":
        return None
    options: dict[str, str | int | bool | Callable[..., Any]] = {"cpp_wrapper": True}
    if hasattr(config.cpp, "use_decompose_tanh"):
        options["cpp.use_decompose_tanh"] = True
    return options


def root_cause(exc: BaseException) -> str:
    """The innermost cause of an error, in one line (torch wraps a compiler's error in its own, several deep)."""
    root = exc
    # dynamo's BackendCompilerFailed keeps the backend's error as `inner_exception`, not as the cause.
    while (inner := root.__cause__ or getattr(root, "inner_exception", None)) is not None:
        root = inner
    lines = [line for line in str(root).splitlines() if line.strip()]
    return f"{type(root).__name__}: {lines[0][:300] if lines else ''}"
