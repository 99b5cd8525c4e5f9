"""A job split across processes (2 gloo ranks on the CPU) takes the steps one process takes, and its checkpoint
resumes on one process; its ranks compile together, or, if one of them cannot, all train eager; and a rank that
leaves its process group (`process_group`, as a job's ranks do) lets go of DDP first, however it ends."""

from __future__ import annotations

import faulthandler
import json
import os
import time
import weakref
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_model

from models.build import SpecialTokenIds
from selfsup.spec import JobSpec
from tests.service import free_port
from workers.data.token_arrays import TokenArrays
from workers.training.ranks import Order, Ranks, process_group
from workers.training.trainer import CompileFailedOnAnotherRank, Trainer

STEPS, SPLIT_AT = 12, 6
# As in test_compile_and_sync.py: dynamo and AOT autograd without inductor's code generation, unless asked.
BACKEND = os.environ.get("SELFSUP_TEST_COMPILE_BACKEND", "aot_eager")
# Two ranks take about 20 s (most of it importing torch and transformers in each); well inside pytest's 300 s.
RANKS_TIMEOUT_S = 180


def _run_two_ranks(rank_main: Callable[..., None], *args: object) -> None:
    """Run `rank_main(rank, *args)` in two fresh processes and wait for both; a rank that fails fails the test.

    Spawned, not forked: a fork of this process (many threads by now: fsspec's loop, tqdm's monitors, torch's
    pools) would copy any lock another thread held at that instant, held forever in the child. Neither rank
    outlives the test, even when it times out: a leftover rank would keep the suite's output open and CI waiting
    (a rank that hung as it ended, before `Trainer.leave_ranks`, once did)."""
    watched = (RANKS_TIMEOUT_S - 10, rank_main, *args)
    ranks = mp.start_processes(_watched, args=watched, nprocs=2, start_method="spawn", join=False)
    deadline = time.monotonic() + RANKS_TIMEOUT_S
    try:
        while not ranks.join(timeout=5):
            if time.monotonic() > deadline:
                pytest.fail(f"the two ranks did not finish within {RANKS_TIMEOUT_S} s")
    finally:
        for process in ranks.processes:
            if process.is_alive():
                process.kill()
                process.join()


def _watched(rank: int, stacks_after_s: float, rank_main: Callable[..., None], *args: object) -> None:
    """A rank that prints its threads' stacks (to the test's captured stderr) if it is still running after
    `stacks_after_s`, just before the test gives up on it, so a hang says where it is."""
    faulthandler.dump_traceback_later(stacks_after_s)
    rank_main(rank, *args)


def _spec() -> JobSpec:
    # masked_lm: how many tokens each rank's rows mask differs, so an unweighted average of the ranks' losses
    # would not be the batch's loss; dropout off, so the ranks' different dropout draws cannot matter.
    return JobSpec.model_validate(
        {
            "corpus_ids": ["cor_x"],
            "objective": {"type": "masked_lm"},
            "tokenizer": {"type": "char"},
            "model": {"layers": 1, "heads": 2, "width": 32, "context_length": 16, "dropout": 0.0},
            "training": {"max_steps": STEPS, "batch_size": 4, "learning_rate": 3e-3, "seed": 3},
            "resources": {"devices": 2},
        }
    )


def _data() -> TokenArrays:
    tokens = (np.arange(5_000) % 40 + 5).astype(np.uint16)
    special = SpecialTokenIds(eos=3, pad=0, unk=1, cls=2, sep=3, mask=4, all=(0, 1, 2, 3, 4))
    return TokenArrays(train=tokens, validation=tokens[:1000], vocab_size=50, special=special)


def _process_group(rank: int, port: int) -> AbstractContextManager[Ranks]:
    """The job's process group as a rank that torchrun started joins it (`workers/distributed.py`): from the
    environment, over loopback, with the control group of its own; left as a job's rank leaves it."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    return process_group()


def _train_two_ranks(rank: int, port: int, folder: str) -> None:
    """One of two ranks: train to SPLIT_AT, then rank 0 saves the unwrapped model, the resume state and its losses."""
    torch.set_num_threads(1)
    with _process_group(rank, port) as ranks:
        trainer = Trainer(_spec(), _data(), device=torch.device("cpu"), ranks=ranks)
        trainer.join_ranks()
        losses = [trainer.train_step().loss for _ in range(SPLIT_AT)]
        if rank == 0:
            trainer.save_pretrained(Path(folder))  # as a checkpoint does: the plain module, never the DDP wrapper
            torch.save({"state": trainer.state_dict(), "losses": losses}, Path(folder) / "resume.pt")


def test_two_ranks_take_one_process_steps_and_their_checkpoint_resumes_on_one(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    _run_two_ranks(_train_two_ranks, free_port(), str(tmp_path))
    saved = torch.load(tmp_path / "resume.pt", weights_only=True)

    one = Trainer(_spec(), _data(), device=torch.device("cpu"))
    uninterrupted = [one.train_step().loss for _ in range(STEPS)]

    resumed = Trainer(_spec(), _data(), device=torch.device("cpu"))
    load_model(resumed.model, str(tmp_path / "model.safetensors"), strict=False)
    resumed.load_state_dict(saved["state"])
    assert resumed.step == SPLIT_AT
    finished = [resumed.train_step().loss for _ in range(STEPS - SPLIT_AT)]

    assert saved["losses"] + finished == pytest.approx(uninterrupted, rel=1e-4, abs=1e-5)
    assert uninterrupted[-1] < uninterrupted[0]  # it learned something, so equal curves say something


def test_rows_are_split_evenly_and_one_process_keeps_them_all() -> None:
    batch = (torch.arange(8).reshape(4, 2), torch.arange(8).reshape(4, 2) + 100)
    first, second = Ranks(rank=0, world=2).my_rows(batch), Ranks(rank=1, world=2).my_rows(batch)
    assert torch.equal(torch.cat([first[0], second[0]]), batch[0])
    assert torch.equal(torch.cat([first[1], second[1]]), batch[1])
    assert Ranks().my_rows(batch) is batch


def _compile_two_ranks(rank: int, port: int, folder: str, failing_rank: int | None) -> None:
    """One of two ranks: compile together (the `failing_rank`'s backend fails), then train; each rank writes what
    compiling said, how often its steps ran the compiled graph, its losses, and whether leaving the group freed
    DDP's wrapper (the trainer never told to let go: `process_group` does that)."""
    torch.set_num_threads(1)
    calls = compiles = 0

    def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
        nonlocal compiles
        compiles += 1
        if rank == failing_rank:
            raise RuntimeError("no compiler here")
        compiled = torch._dynamo.lookup_backend(BACKEND)(graph, example_inputs)

        def run(*args: Any) -> Any:
            nonlocal calls
            calls += 1
            return compiled(*args)

        return run

    with _process_group(rank, port) as ranks:
        trainer = Trainer(_spec(), _data(), device=torch.device("cpu"), ranks=ranks)
        trainer.join_ranks()
        wrapper = weakref.ref(trainer.train_forward)
        try:
            trainer.compile_forward(backend=counting_backend)
            said = "compiled"
        except Exception as exc:
            said = f"{type(exc).__name__}: {exc}"
        warm_up_calls, warm_up_compiles = calls, compiles
        losses = [trainer.train_step().loss for _ in range(STEPS)]
    said_by_rank = {
        "said": said,
        "warm_up_calls": warm_up_calls,
        "step_calls": calls - warm_up_calls,
        "step_compiles": compiles - warm_up_compiles,
    }
    # The trainer is still held here: only leaving the group can have freed the wrapper, before destroying it.
    gone = {"wrapper_freed": wrapper() is None, "trains_unwrapped": trainer.train_forward is trainer.model}
    gone["group_destroyed"] = not dist.is_initialized()
    (Path(folder) / f"rank-{rank}.json").write_text(json.dumps({**said_by_rank, **gone, "losses": losses}))


def _eager_losses() -> list[float]:
    one = Trainer(_spec(), _data(), device=torch.device("cpu"))
    return [one.train_step().loss for _ in range(STEPS)]  # type: ignore[union-attr]


@pytest.mark.parametrize("failing_rank", [None, 1, 0])
def test_ranks_compile_together_or_all_stay_eager(tmp_path: Path, failing_rank: int | None) -> None:
    """The ranks of a job on several devices compile at rank 0's `Order.COMPILE` and agree on the outcome: all
    train through the compiled graph, or (one rank's compile failed) all train eager, saying which rank failed;
    none waits forever in a collective the other never joins, and the curve is one process's either way."""
    torch.set_num_threads(1)
    _run_two_ranks(_compile_two_ranks, free_port(), str(tmp_path), failing_rank)
    ranks = [json.loads((tmp_path / f"rank-{rank}.json").read_text()) for rank in (0, 1)]
    for rank, said in enumerate(ranks):
        assert said["losses"] == pytest.approx(_eager_losses(), rel=1e-4, abs=1e-5), rank
        # Nothing holds DDP's wrapper (and its reducer) once the rank leaves: the group can go without a hang.
        assert said["wrapper_freed"] and said["trains_unwrapped"] and said["group_destroyed"], said
        if failing_rank is None:
            assert said["said"] == "compiled" and said["warm_up_calls"] >= 1, said
            assert said["step_calls"] >= STEPS, said  # every step ran the compiled graph (DDP may split it)
            assert said["step_compiles"] == 0, said  # warmed up on the rank's rows: no recompile at the first step
        elif rank == failing_rank:
            assert "no compiler here" in said["said"] and said["step_calls"] == 0, said
        else:
            name = CompileFailedOnAnotherRank.__name__
            assert said["said"].startswith(f"{name}: rank {failing_rank}: "), said
            assert "no compiler here" in said["said"] and said["step_calls"] == 0, said


def test_one_process_takes_its_own_orders() -> None:
    assert [Ranks().order(order) for order in Order] == list(Order)
    assert Ranks().gather("mine") == ["mine"]
