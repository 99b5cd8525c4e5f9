"""The GPU path: GPT-2 small's shape in bf16 with torch.compile, through the service and in a plain loop.

One command on a machine with a CUDA GPU, the repository and its .venv (no internet needed):

    .venv/bin/python bench/gpu.py [--batch N] [--steps 300] [--out FILE]

It finds the largest batch (powers of two) whose eager bf16 step fits the GPU unless `--batch` is given,
then runs a plain compiled `transformers` loop and the real service (`selfsup up`, one job with
`training.compile: true`, `precision: auto`) on the same tiny-Shakespeare token array, one after the other.
For each it prints tokens/s over the steps after the warm-up, MFU against the card's bf16 dense peak
(selfsup/hardware.py), peak GPU memory and the compile warm-up, and the service/plain ratio; and writes
everything to a JSON under bench/results. The model is GPT-2 small's body (12 layers, 12 heads, width
768, context 1024) on tiny Shakespeare's character vocabulary, so about 85M parameters rather than 124M.

Without a GPU it stops with a clear message; `--device cpu --tiny` runs a small model for a few steps
end to end (compiled with `aot_eager`, no C++ code generation) as a smoke test of this script.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.train_throughput import _read_dataset, machine, measure_matmul_flops  # noqa: E402
from models.build import SpecialTokenIds, build_causal_lm, count_parameters  # noqa: E402
from models.windows import gather_windows, sample_window_offsets  # noqa: E402
from selfsup.estimate import flops_per_token  # noqa: E402
from selfsup.hardware import model_flops_utilisation, peak_flops  # noqa: E402
from selfsup.spec import JobSpec  # noqa: E402
from tests.factories import SHAKESPEARE, ready_corpus, submit_job  # noqa: E402
from tests.service import start_service, wait_until  # noqa: E402
from workers.data.datasets import special_token_ids  # noqa: E402
from workers.training.optim import configure_optimizer, learning_rate_at  # noqa: E402
from workers.training.precision import allow_tf32  # noqa: E402

GPT2_SMALL = {"family": "gpt2", "layers": 12, "heads": 12, "width": 768, "context_length": 1024}
TINY = {"family": "gpt2", "layers": 2, "heads": 2, "width": 64, "context_length": 64}
SEARCH_VOCABULARY = 80  # tiny Shakespeare's characters and the special tokens, give or take
WARMUP_STEPS = 20  # steps left out of the timing: compile warm-up, allocator growth, first-call overheads


def job_spec(corpus_id: str, *, model: dict[str, Any], steps: int, batch: int) -> dict[str, Any]:
    """The benchmark job: bf16 on CUDA (`precision: auto`), compiled, one evaluation and checkpoint at the end."""
    return {
        "name": "bench-gpu",
        "corpus_ids": [corpus_id],
        "objective": {"type": "causal_lm"},
        "tokenizer": {"type": "char"},
        "model": model,
        "training": {
            "max_steps": steps,
            "batch_size": batch,
            "precision": "auto",
            "compile": True,
            "learning_rate": 6e-4,
            "min_learning_rate": 6e-5,
            "warmup_steps": min(100, steps // 10),
        },
        "evaluation": {"every_steps": 1_000_000, "batches": 1},
        "checkpointing": {"every_steps": 1_000_000, "keep_last": 1},
    }


def _bf16(device: torch.device) -> bool:
    return device.type == "cuda"


def plain_loop(
    tokens: np.ndarray,
    meta: dict[str, Any],
    spec: JobSpec,
    device: torch.device,
    *,
    backend: str,
    steps: int,
    attention: str | None = None,
    profile: bool = False,
    compile_mode: str | None = None,
) -> dict[str, Any]:
    """A hand-written compiled loop of the same model and batches: what the service is measured against.
    `attention` swaps the model's attention implementation (for example transformers' stock `sdpa`); `profile`
    adds the CUDA kernels of three steps after the timed ones, by total time."""
    training, window = spec.training, spec.model.context_length + 1
    allow_tf32(device)
    torch._dynamo.reset()
    torch.manual_seed(training.seed)
    model = build_causal_lm(spec.model, vocab_size=int(meta["vocab_size"]), special=special_token_ids(meta))
    if attention is not None:
        model.set_attn_implementation(attention)
    model.to(device).train()  # type: ignore[arg-type]
    optimizer = configure_optimizer(model, training, device)
    forward = torch.compile(model, backend=backend, mode=compile_mode)
    rng = np.random.default_rng(training.seed)
    offsets = np.zeros(0, dtype=np.int64)

    def step_once() -> torch.Tensor:
        """One optimizer step on the windows at `offsets`; the loss, not read back."""
        batch = gather_windows(tokens, offsets, window)
        if device.type == "cuda":
            batch = batch.pin_memory()
        batch = batch.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=_bf16(device)):
            logits = forward(input_ids=batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), training.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    warm_up = timed_from = math.nan
    for step in range(steps):
        if step == WARMUP_STEPS:
            _synchronize(device)
            timed_from = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, training)
        offsets = sample_window_offsets(len(tokens), window=window, count=training.batch_size, rng=rng)
        loss = step_once()
        if step == 0:
            _synchronize(device)
            warm_up = time.perf_counter() - started  # the first step holds the compile
    _synchronize(device)
    seconds = time.perf_counter() - timed_from
    kernels = None
    if profile:
        on_cuda = device.type == "cuda"
        activity = torch.profiler.ProfilerActivity.CUDA if on_cuda else torch.profiler.ProfilerActivity.CPU
        with torch.profiler.profile(activities=[activity]) as profiler:
            for _ in range(3):
                step_once()
            _synchronize(device)
        kernels = profiler.key_averages().table(
            sort_by="cuda_time_total" if on_cuda else "cpu_time_total", row_limit=30, max_name_column_width=70
        )
    return {
        "attention": model.config._attn_implementation,
        "kernels_of_3_steps": kernels,
        "tokens_per_second": (steps - WARMUP_STEPS) * spec.tokens_per_step / seconds,
        "compile_warm_up_seconds": warm_up,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "final_train_loss": float(loss.detach()),
        "parameters": count_parameters(model),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def largest_batch(model: dict[str, Any], device: torch.device) -> int:
    """The largest power-of-two batch whose eager bf16 training step (with AdamW state) fits the GPU."""
    fitted = 0
    for batch in (2**k for k in range(0, 10)):
        spec = JobSpec.model_validate(job_spec("cor_x", model=model, steps=100, batch=batch))
        try:
            plain_loop_probe(spec, device)
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        fitted = batch
        print(f"  batch {batch}: fits", flush=True)
    if not fitted:
        raise SystemExit("not even a batch of 1 fits this GPU")
    return fitted


def plain_loop_probe(spec: JobSpec, device: torch.device) -> None:
    """Two eager steps at the spec's batch size on random tokens of a character-sized vocabulary (raises
    torch.OutOfMemoryError if it does not fit)."""
    window = spec.model.context_length + 1
    tokens = np.random.default_rng(0).integers(0, SEARCH_VOCABULARY, 1_000_000).astype(np.uint16)
    model = build_causal_lm(spec.model, vocab_size=SEARCH_VOCABULARY, special=SpecialTokenIds(eos=0))
    model.to(device).train()  # type: ignore[arg-type]
    optimizer = configure_optimizer(model, spec.training, device)
    rng = np.random.default_rng(0)
    try:
        for _ in range(2):
            offsets = sample_window_offsets(len(tokens), window=window, count=spec.training.batch_size, rng=rng)
            batch = gather_windows(tokens, offsets, window).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits = model(input_ids=batch[:, :-1], use_cache=False).logits
            F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch[:, 1:].reshape(-1)).backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        _synchronize(device)
    finally:
        del model, optimizer


def run_service(
    home: Path, *, model: dict[str, Any], steps: int, batch: int, env: dict[str, str]
) -> tuple[dict[str, Any], np.ndarray, dict[str, Any]]:
    """Train the benchmark job through `selfsup up`; its figures, and the token array it trained on."""
    service = start_service(home, extra_env=env)
    try:
        with service.client("alice") as client:
            corpus = ready_corpus(client, SHAKESPEARE.read_bytes(), name="tinyshakespeare.txt", timeout=600)
            job = submit_job(client, job_spec(corpus["id"], model=model, steps=steps, batch=batch))

            def finished() -> dict[str, Any] | None:
                body: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}").json()
                return body if body["status"] in ("succeeded", "failed", "cancelled") else None

            done = wait_until(finished, timeout=3600, interval=2.0, what="the benchmark job")
            if done["status"] != "succeeded":
                raise RuntimeError(f"job ended {done['status']}: {done.get('error')}\n{service.log()[-5000:]}")
            metrics: dict[str, list[tuple[int, float]]] = {}
            for name in ("tokens_per_second", "mfu", "compile_seconds", "gpu_memory_peak_bytes"):
                points = client.get(f"/v1/jobs/{job['id']}/metrics", params={"name": name}).json()["data"]
                metrics[name] = sorted((int(p["step"]), float(p["value"])) for p in points)
            events = client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
        dataset = _read_dataset(home)
    finally:
        service.stop()
    steady = [rate for step, rate in metrics["tokens_per_second"] if step > WARMUP_STEPS]
    result = {
        "job_id": job["id"],
        # Each window is 10 steps of equal tokens: the harmonic mean is total tokens over total seconds.
        "tokens_per_second": statistics.harmonic_mean(steady),
        "median_window_mfu": statistics.median(v for s, v in metrics["mfu"] if s > WARMUP_STEPS)
        if metrics["mfu"]
        else None,
        "compile_warm_up_seconds": metrics["compile_seconds"][0][1] if metrics["compile_seconds"] else None,
        "peak_memory_bytes": max(v for _, v in metrics["gpu_memory_peak_bytes"])
        if metrics["gpu_memory_peak_bytes"]
        else None,
        "compile_events": [e["message"] for e in events if e["type"].startswith("compile")],
    }
    return result, dataset.tokens, dataset.meta


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, check the device, run the service and the plain loop, print and write the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer model for a few steps: a smoke test")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: the largest that fits)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300; tiny 40)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--compare-attention",
        action="store_true",
        help="also run the plain loop with transformers' stock `sdpa` (a materialised mask when compiled)",
    )
    parser.add_argument("--profile", action="store_true", help="the plain loop's CUDA kernels over three steps")
    parser.add_argument(
        "--kernel-variants",
        nargs="*",
        default=None,
        metavar="NAME",
        help="only the plain loop, on random characters: as built, then with each SDPA backend forced, then compiled "
        "with max-autotune (GEMM and kernel autotuning, no CUDA graphs); tokens/s of each against the first. Names "
        "given: only those, after the first",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "bench/gpu.py needs a CUDA GPU and torch sees none (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda}). Run it on a GPU machine, or run "
            "`bench/gpu.py --device cpu --tiny` for a smoke test of the script."
        )
    if args.device == "cpu" and not args.tiny:
        raise SystemExit("--device cpu only runs with --tiny (GPT-2 small on a CPU is not what this measures)")
    device = torch.device(args.device)
    model = TINY if args.tiny else GPT2_SMALL
    steps = args.steps or (40 if args.tiny else 300)
    if steps <= WARMUP_STEPS + 10:
        parser.error(f"--steps must exceed {WARMUP_STEPS + 10}")
    # On the CPU the smoke test compiles with aot_eager: inductor's C++ build takes minutes on a small machine.
    backend = "inductor" if device.type == "cuda" else "aot_eager"
    env = {"SELFSUP_COMPILE_BACKEND": backend, "SELFSUP_CONTROL_INTERVAL_SECONDS": "1.0", "SELFSUP_LEASE_SECONDS": "60"}
    env["SELFSUP_MAX_UPLOAD_BYTES"] = str(64 * 1024 * 1024)
    # The same torch thread count on both sides (the test settings' default is 1); on a small CPU one thread
    # each, so neither side's OpenMP threads fight other work for the cores.
    if device.type == "cpu":
        torch.set_num_threads(1)
    env["SELFSUP_TORCH_THREADS"] = str(torch.get_num_threads())
    if device.type == "cpu":
        ceiling = measure_matmul_flops(threads=torch.get_num_threads())
        env["SELFSUP_DEVICE_PEAK_FLOPS"] = str(ceiling)
        peak = ceiling
    else:
        name = torch.cuda.get_device_name(device)
        peak = peak_flops(name, "bf16")  # type: ignore[assignment]
        if peak is None:
            print(f"note: {name} is not in selfsup/hardware.py's table: no MFU", flush=True)
    out: Path = args.out or REPO / "bench" / "results" / f"gpu-{datetime.now():%Y%m%d-%H%M%S}.json"

    if args.kernel_variants is not None:
        return kernel_variants(
            model, device, backend=backend, steps=steps, batch=args.batch or 64, peak=peak, out=out,
            only=args.kernel_variants,
        )  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="selfsup-gpu-bench-") as scratch:
        batch = args.batch or (8 if args.tiny else 0)
        if not batch:
            print("finding the largest batch that fits ...", flush=True)
            batch = largest_batch(model, device)
        print(f"service: {steps} steps, batch {batch} ...", flush=True)
        service, tokens, meta = run_service(Path(scratch) / "home", model=model, steps=steps, batch=batch, env=env)
    spec = JobSpec.model_validate(job_spec("cor_x", model=model, steps=steps, batch=batch))
    print("plain loop ...", flush=True)
    plain = plain_loop(tokens, meta, spec, device, backend=backend, steps=steps, profile=args.profile)
    stock = None
    if args.compare_attention:
        print("plain loop, transformers' stock sdpa ...", flush=True)
        stock = plain_loop(tokens, meta, spec, device, backend=backend, steps=steps, attention="sdpa")
    per_token = flops_per_token(spec.model, plain["parameters"])
    for side in (service, plain, stock):
        if side is not None:
            side["mfu"] = model_flops_utilisation(side["tokens_per_second"], per_token, peak) if peak else None
    report = {
        "benchmark": "gpu",
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "peak_flops": peak,
        "peak_flops_source": "selfsup/hardware.py (bf16 dense)" if device.type == "cuda" else "measured fp32 matmul",
        "compile_backend": backend,
        "model": model,
        "parameters": plain["parameters"],
        "flops_per_token": per_token,
        "batch": batch,
        "steps": steps,
        "warmup_steps_excluded": WARMUP_STEPS,
        "tokens_per_step": spec.tokens_per_step,
        "service": service,
        "plain": plain,
        "ratio_service_over_plain": service["tokens_per_second"] / plain["tokens_per_second"],
        "plain_stock_sdpa": stock,
        "ratio_plain_over_plain_stock_sdpa": plain["tokens_per_second"] / stock["tokens_per_second"] if stock else None,
        "machine": machine(torch.get_num_threads()),
        "nvidia_smi": _nvidia_smi() if device.type == "cuda" else None,
    }
    _print(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {out}")
    return 0


def kernel_variants(
    model: dict[str, Any],
    device: torch.device,
    *,
    backend: str,
    steps: int,
    batch: int,
    peak: float | None,
    out: Path,
    only: list[str] | None = None,
) -> int:
    """The plain loop as built, with each SDPA backend forced, and compiled with max-autotune, in one process; each
    result is printed as it comes (max-autotune's tuning can take minutes)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    spec = JobSpec.model_validate(job_spec("cor_x", model=model, steps=steps, batch=batch))
    tokens = np.random.default_rng(0).integers(1, SEARCH_VOCABULARY, 4_000_000).astype(np.uint16)
    meta = {"vocab_size": SEARCH_VOCABULARY, "eos_token_id": 0}
    variants: list[tuple[str, Any, str | None]] = [
        ("as built", contextlib.nullcontext(), None),
        ("SDPA flash only", sdpa_kernel(SDPBackend.FLASH_ATTENTION), None),
        ("SDPA cuDNN only", sdpa_kernel(SDPBackend.CUDNN_ATTENTION), None),
        ("max-autotune-no-cudagraphs", contextlib.nullcontext(), "max-autotune-no-cudagraphs"),
    ]
    if only:
        unknown = set(only) - {name for name, _, _ in variants}
        if unknown:
            raise SystemExit(f"--kernel-variants: no variant {sorted(unknown)}; there are {[v[0] for v in variants]}")
        variants = [variants[0], *(v for v in variants[1:] if v[0] in only)]
    results: dict[str, Any] = {"device": str(device), "batch": batch, "steps": steps, "variants": {}}
    for name, kernels, mode in variants:
        try:
            with kernels:
                result = plain_loop(tokens, meta, spec, device, backend=backend, steps=steps, compile_mode=mode)
        except Exception as error:  # noqa: BLE001 - a variant this torch cannot run is a finding, not a crash
            result = {"error": f"{type(error).__name__}: {error}"[:500]}
        if "tokens_per_second" in result:
            per_token = flops_per_token(spec.model, result["parameters"])
            result["mfu"] = model_flops_utilisation(result["tokens_per_second"], per_token, peak) if peak else None
            first = results["variants"].get("as built", result)
            if "tokens_per_second" in first:  # none when the as-built loop itself failed
                result["ratio_to_as_built"] = result["tokens_per_second"] / first["tokens_per_second"]
        results["variants"][name] = result
        print(f"{name}: {json.dumps(result, default=str)}", flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def _nvidia_smi() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit",
                               "--format=csv"], capture_output=True, text=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() or None


def _print(report: dict[str, Any]) -> None:
    def mib(value: float | None) -> str:
        return f"{value / 2**20:,.0f} MiB" if value else "n/a"

    def secs(value: float | None) -> str:
        return f"{value:.1f} s" if value is not None else "n/a"

    def pct(value: float | None) -> str:
        return f"{value:.1%}" if value is not None else "n/a"

    service, plain = report["service"], report["plain"]
    rows = [
        ("device", report["device"]),
        ("model", f"{report['model']} ({report['parameters']:,} parameters)"),
        ("batch x context", f"{report['batch']} x {report['model']['context_length']}"),
        ("service tokens/s", f"{service['tokens_per_second']:,.0f}"),
        ("plain loop tokens/s", f"{plain['tokens_per_second']:,.0f}"),
        ("ratio service / plain", f"{report['ratio_service_over_plain']:.3f}"),
        ("MFU service / plain", f"{pct(service['mfu'])} / {pct(plain['mfu'])}"),
        ("service mfu metric (median window)", pct(service["median_window_mfu"])),
        ("peak memory service / plain", f"{mib(service['peak_memory_bytes'])} / {mib(plain['peak_memory_bytes'])}"),
        ("compile warm-up service / plain", f"{secs(service['compile_warm_up_seconds'])} / "
                                            f"{secs(plain['compile_warm_up_seconds'])}"),
        ("service compile events", "; ".join(service["compile_events"])),
    ]  # fmt: skip
    if report["plain_stock_sdpa"]:
        stock = report["plain_stock_sdpa"]
        rows += [
            ("plain loop, stock sdpa, tokens/s", f"{stock['tokens_per_second']:,.0f} (MFU {pct(stock['mfu'])})"),
            ("ratio plain / plain with stock sdpa", f"{report['ratio_plain_over_plain_stock_sdpa']:.3f}"),
        ]
    if plain["kernels_of_3_steps"]:
        print("\nplain loop, CUDA kernels of three steps:\n" + plain["kernels_of_3_steps"])
    width = max(len(k) for k, _ in rows)
    print("\n" + "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))


if __name__ == "__main__":
    sys.exit(main())
