"""The fast path of the training step: compiling the forward, steps that never wait for the device, and the
`training.compile: auto` rule."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from models import build
from models.build import SpecialTokenIds
from selfsup.spec import JobSpec, ModelSpec
from tests.factories import OBJECTIVE_FAMILIES, random_token_arrays, small_job_spec
from workers.data.token_arrays import TokenArrays
from workers.training import compiling
from workers.training.trainer import Trainer, TrainingDiverged

CPU = torch.device("cpu")
# inductor's C++ code generation takes minutes on a busy 2-core machine: by default the tests compile with
# `aot_eager`, which runs dynamo's tracing and AOT autograd (the graph capture and the `_orig_mod` wrapper
# this code handles) without generating code. SELFSUP_TEST_COMPILE_BACKEND=inductor runs the real thing.
BACKEND = os.environ.get("SELFSUP_TEST_COMPILE_BACKEND", "aot_eager")


def _spec(**training: object) -> JobSpec:
    return JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": "causal_lm"},
            "tokenizer": {"type": "char"},
            "model": {"layers": 1, "heads": 2, "width": 32, "context_length": 16},
            "training": {"max_steps": 20, "batch_size": 4, "learning_rate": 3e-3, **training},
            "evaluation": {"batches": 2},
        }
    )


def _data() -> TokenArrays:
    tokens = (np.arange(5_000) % 50).astype(np.uint16)
    return TokenArrays(train=tokens, validation=tokens[:1000], vocab_size=52, special=SpecialTokenIds(eos=0))


def test_a_compiled_forward_trains_like_eager_and_saves_a_plain_checkpoint(tmp_path: Path) -> None:
    eager = Trainer(_spec(), _data(), device=CPU)
    compiled = Trainer(_spec(), _data(), device=CPU)
    warm_up_seconds = compiled.compile_forward(backend=BACKEND)
    assert warm_up_seconds > 0 and compiled.train_forward is not compiled.model
    assert compiled.step == 0  # the warm-up is no step: no update, the gradients dropped
    assert all(p.grad is None for p in compiled.model.parameters())
    eager_losses = [eager.train_step().loss for _ in range(6)]  # type: ignore[union-attr]
    compiled_losses = [compiled.train_step().loss for _ in range(6)]  # type: ignore[union-attr]
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert compiled_losses[-1] < compiled_losses[0]

    compiled.save_pretrained(tmp_path)
    loaded, info = AutoModelForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert not any("_orig_mod" in name for name in compiled.model.state_dict())
    inputs, labels = compiled.batch(99, 0)
    with torch.no_grad():
        expected = compiled.model(input_ids=inputs, use_cache=False).logits
        # atol: on a CPU with AMX the trainer's model attends written out, the loaded one with SDPA (precision.py).
        own = compiled.model.eval()(input_ids=inputs).logits
        assert torch.allclose(loaded.eval()(input_ids=inputs).logits, own, atol=1e-6)
    assert expected.shape == (4, 16, 52)


def test_a_failing_compile_leaves_the_forward_eager() -> None:
    trainer = Trainer(_spec(), _data(), device=CPU)

    def broken_backend(graph: object, example_inputs: object) -> object:
        raise RuntimeError("no compiler here")

    with pytest.raises(Exception, match="no compiler here"):
        trainer.compile_forward(backend=broken_backend)
    assert trainer.train_forward is trainer.model
    assert trainer.model.config._attn_implementation == build.ATTENTION  # SDPA again, as an eager forward has it
    assert trainer.train_step() is not None and trainer.step == 1


@pytest.mark.parametrize("context_length", [16, compiling.WRITTEN_OUT_ATTENTION_MAX_CONTEXT + 1])
def test_a_compiled_cpu_forward_attends_written_out_up_to_a_context_length(context_length: int) -> None:
    spec = _spec(batch_size=1)
    spec.model.context_length = context_length
    trainer = Trainer(spec, _data(), device=CPU)
    sdpa_calls = 0

    def recording_backend(graph: torch.fx.GraphModule, example_inputs: object) -> object:
        nonlocal sdpa_calls
        sdpa_calls += sum(node.target is F.scaled_dot_product_attention for node in graph.graph.nodes)
        return graph.forward

    trainer.compile_forward(backend=recording_backend)

    written_out = context_length <= compiling.WRITTEN_OUT_ATTENTION_MAX_CONTEXT
    assert trainer.model.config._attn_implementation == ("eager" if written_out else build.ATTENTION)
    assert sdpa_calls == (0 if written_out else 1)  # one layer
    assert trainer.train_step() is not None


def test_the_train_step_runs_the_compiled_graph() -> None:
    """After `compile_forward`, every training step goes through what the backend compiled (a merge once left
    the step on the eager module, so a job paid the warm-up and then trained uncompiled)."""
    trainer = Trainer(_spec(), _data(), device=CPU)
    calls = 0

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: object) -> object:
        def run(*args: object) -> object:
            nonlocal calls
            calls += 1
            return graph.forward(*args)

        return run

    trainer.compile_forward(backend=counting_backend)
    after_warm_up = calls
    assert after_warm_up >= 1
    for _ in range(3):
        trainer.train_step(sync=False)
    assert calls == after_warm_up + 3


def test_a_cpu_compile_gets_its_inductor_options_forward_and_backward_and_trains_like_eager() -> None:
    """`compiling.inductor_options` reaches inductor's forward and backward graphs: each is called from a C++
    wrapper (`cpp_wrapper`), and GPT-2's GELU (its tanh form) computes `tanh` through `exp`, not SLEEF's slower
    `tanh`; the steps stay eager's."""
    unsupported = compiling.unsupported_reason(CPU)
    if unsupported is not None:
        pytest.skip(unsupported)
    from torch._inductor import config
    from torch._inductor.utils import run_and_get_code

    compiled, eager = Trainer(_spec(), _data(), device=CPU), Trainer(_spec(), _data(), device=CPU)
    with config.patch(force_disable_caches=True):  # generate the code, so that it can be read
        _, graphs = run_and_get_code(compiled.compile_forward, "inductor")
    assert len(graphs) == 2, [graph[:300] for graph in graphs]  # the forward and the backward
    for code in graphs:
        assert "cpp_wrapper_src" in code, code[:300]  # the wrapper is C++, compiled with the kernels
        assert "tanh" in code  # the GELU's kernels (named after what they fuse)
        if hasattr(config.cpp, "use_decompose_tanh"):
            lines = [line.strip() for line in code.splitlines() if "tanh" in line or ".exp()" in line]
            assert ".exp()" in code and ".tanh()" not in code and "std::tanh" not in code, lines
    assert [compiled.train_step().loss for _ in range(3)] == pytest.approx(
        [eager.train_step().loss for _ in range(3)], rel=1e-5
    )


def test_no_cpu_compile_is_tried_without_a_cpp_compiler_or_python_headers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sysconfig

    assert compiling.unsupported_reason(CPU) is None  # this machine has both (the suite compiles)
    include = sysconfig.get_path("include")
    monkeypatch.setattr(sysconfig, "get_path", lambda name, *a, **k: str(tmp_path) if name == "include" else include)
    assert "Python.h" in (compiling.unsupported_reason(CPU) or "")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in (compiling.unsupported_reason(CPU) or "")
    choice = compiling.choose_at_start(True, CPU, remaining_steps=1000)
    assert choice.compile is False and "C++ compiler" in choice.reason


def _compiled_losses_with_dropout() -> list[float]:
    """30 steps of a job with dropout, compiled by inductor itself, on two threads (what made two processes of the
    same job disagree: the embeddings' gradients summed by atomic adds from both threads)."""
    torch.set_num_threads(2)
    spec = JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": "causal_lm"},
            "tokenizer": {"type": "char"},
            "model": {"layers": 2, "heads": 4, "width": 64, "context_length": 64, "dropout": 0.1},
            "training": {"max_steps": 40, "batch_size": 8, "learning_rate": 3e-3, "seed": 1, "precision": "fp32"},
        }
    )
    tokens = np.random.default_rng(0).integers(1, 60, 20_000).astype(np.uint16)
    data = TokenArrays(train=tokens, validation=tokens[:2000], vocab_size=64, special=SpecialTokenIds(eos=0))
    trainer = Trainer(spec, data, device=CPU)
    trainer.compile_forward(backend="inductor")
    return [trainer.train_step().loss for _ in range(30)]  # type: ignore[union-attr]


def test_two_processes_of_a_compiled_job_train_it_bit_for_bit(tmp_path: Path) -> None:
    """What a compiled job's crash-resume needs: a fresh process computes the same steps, to the last bit."""
    unsupported = compiling.unsupported_reason(CPU)
    if unsupported is not None:
        pytest.skip(unsupported)
    run = f"from {__name__} import _compiled_losses_with_dropout as f; print(' '.join(x.hex() for x in f()))"
    root = Path(__file__).resolve().parents[3]
    # A cache of their own: the first compiles with this code, the second loads that (another test's graphs,
    # compiled before a change to how inductor lowers them, could otherwise be reused by both).
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    runs = [
        subprocess.run(
            [sys.executable, "-c", run], cwd=root, env=env, capture_output=True, text=True, timeout=240, check=True
        )
        for _ in range(2)
    ]
    first, second = (r.stdout.split() for r in runs)
    assert len(first) == len(second) == 30
    assert first == second, next(step for step, (a, b) in enumerate(zip(first, second, strict=True)) if a != b)


def test_steps_without_a_sync_match_synced_ones() -> None:
    synced = Trainer(_spec(), _data(), device=CPU)
    free = Trainer(_spec(), _data(), device=CPU)
    assert free.sync_free  # the fused AdamW is what lets a step skip its update on the device
    for _ in range(4):
        synced.train_step()
        assert free.train_step(sync=False) is None
    last = free.train_step(sync=True)
    assert last is not None and last.loss == synced.train_step().loss  # type: ignore[union-attr]
    for a, b in zip(synced.model.parameters(), free.model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_non_finite_step_without_a_sync_skips_its_update_and_fails_at_the_next_synced_step() -> None:
    trainer = Trainer(_spec(), _data(), device=CPU)
    trainer.train_step(sync=False)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    poison = trainer.model.transformer.wte.weight.register_hook(lambda grad: grad * float("nan"))
    assert trainer.train_step(sync=False) is None  # step 2: nothing waits, nothing raises yet
    poison.remove()
    for old, new in zip(before, trainer.model.parameters(), strict=True):
        assert torch.equal(old, new)  # the update of the non-finite step was skipped on the device
    with pytest.raises(TrainingDiverged, match="not finite at step 2"):
        trainer.train_step(sync=True)
    with pytest.raises(TrainingDiverged, match="at step 2"):
        trainer.raise_if_diverged()  # what a checkpoint checks before it saves


def test_auto_compiles_only_runs_long_enough_to_pay_back_the_warm_up() -> None:
    start = compiling.choose_at_start
    assert start(False, CPU, remaining_steps=10**6).compile is False
    assert start(True, CPU, remaining_steps=5).compile is True
    tiny = start("auto", CPU, remaining_steps=20)
    assert tiny.compile is False and "too few" in tiny.reason
    assert start("auto", CPU, remaining_steps=5_000).compile is None  # measure the first steps, then decide
    varying = start("auto", CPU, remaining_steps=10**6, shapes_vary=True)  # contrastive: dynamic shapes
    assert varying.compile is False and "shape changes" in varying.reason
    assert start(True, CPU, remaining_steps=10**6, shapes_vary=True).compile is True
    after = compiling.choose_after_measuring
    assert after(0.01, remaining_steps=5_000).compile is False  # 50 s to go
    long = after(0.2, remaining_steps=5_000)  # 1,000 s to go
    assert long.compile is True and "1000 s" in long.reason
    assert after(compiling.AUTO_MIN_REMAINING_SECONDS / 1000, remaining_steps=1000).compile is True
    assert after(0.2, remaining_steps=5_000, min_seconds=2_000).compile is False  # SELFSUP_COMPILE_AUTO_MIN_SECONDS


def test_the_spec_takes_true_false_or_auto_for_compile() -> None:
    assert _spec().training.compile == "auto"
    assert _spec(compile=True).training.compile is True
    assert _spec(compile=False).training.compile is False
    with pytest.raises(ValueError, match="compile"):
        _spec(compile="sometimes")


@pytest.mark.parametrize("family", ["gpt2", "llama", "bert", "roberta", "t5"])
def test_every_family_attends_with_sdpa(family: str) -> None:
    spec = ModelSpec(family=family, layers=1, heads=2, width=32, context_length=16)
    special = SpecialTokenIds(eos=0, pad=1, bos=2)
    if family in ("gpt2", "llama"):
        model = build.build_causal_lm(spec, vocab_size=52, special=special)
    elif family == "t5":
        model = build.build_seq2seq(spec, vocab_size=52, special=special)
    else:
        model = build.build_encoder(spec, vocab_size=52, special=special, head=True)
    # transformers' own SDPA function, under a name whose masks keep the flash kernels when compiled.
    assert model.config._attn_implementation == build.ATTENTION
    assert ALL_ATTENTION_FUNCTIONS[build.ATTENTION] is sdpa_attention_forward


@pytest.mark.parametrize("objective", OBJECTIVE_FAMILIES)
def test_every_objective_scores_a_training_batch_without_a_host_sync(objective: str) -> None:
    """The loss of a training batch traces as one graph (`fullgraph`): a value read back from the device (a
    `.item()`, an `int()` of a tensor, a shape that depends on the data) would break it, and on a GPU make every
    step wait. Contrastive once trimmed each batch's padding that way."""
    family = OBJECTIVE_FAMILIES[objective]
    spec = JobSpec.model_validate(
        small_job_spec("cor_x", objective={"type": objective}, model={"family": family}, tokenizer=None)
    )
    binding = spec.objective.training(spec, random_token_arrays(family, spec.model.context_length))
    model = binding.build_model()
    inputs, labels = binding.sample("train", np.random.default_rng(1), spec.training.batch_size)
    binding.loss(model, inputs, labels)  # also imports what the objective defers to its first use
    torch._dynamo.reset()
    traced = torch.compile(lambda x, y: binding.loss(model, x, y)[0], fullgraph=True, backend="eager")
    torch.manual_seed(0)
    loss = traced(inputs, labels)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("objective", OBJECTIVE_FAMILIES)
def test_an_objective_says_whether_its_batch_shape_varies(objective: str) -> None:
    """`training.compile: auto` stays eager where batches change shape (a compiled forward would run with dynamic
    shapes, slower than eager): the flag must match the batches the objective draws."""
    family = OBJECTIVE_FAMILIES[objective]
    spec = JobSpec.model_validate(
        small_job_spec("cor_x", objective={"type": objective}, model={"family": family}, tokenizer=None)
    )
    data = random_token_arrays(family, spec.model.context_length)
    # Sentences of 5 to 24 tokens, shorter than the context (the factory's all fill it).
    starts = np.arange(0, 3000, 100)
    sentences = np.stack([starts, starts + 5 + np.arange(len(starts)) % 20], axis=1)
    data = dataclasses.replace(data, train_sentences=sentences, validation_sentences=sentences)
    binding = spec.objective.training(spec, data)
    rng = np.random.default_rng(3)
    shapes = {
        tuple(tuple(part.shape) for part in binding.sample("train", rng, spec.training.batch_size)) for _ in range(20)
    }
    assert (len(shapes) > 1) is type(binding).batch_shape_varies, shapes
