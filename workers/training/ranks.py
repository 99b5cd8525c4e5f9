"""The processes that train one job together (torch.distributed): which rows each takes, and rank 0's say.

A job with `resources.devices` N > 1 is trained by N processes, one per device, launched by `torchrun`
(`workers/distributed.py`). Each draws the same global batch (a pure function of the seed and the step),
takes its own equal slice of the rows, and weighs its loss by its share of the batch's loss terms, so
DistributedDataParallel's average of the gradients is the whole batch's: the same update as one process.
Rank 0 decides, before every step, what all ranks do next (`order`: step, compile, or stop), so every rank
stops together and compiles at the same point. Neither the orders nor the weighing wait for a GPU: what the host
decides travels over a gloo group of its own. With one process (`ONE_PROCESS`) every method is the identity
and nothing is communicated.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class Order(enum.IntEnum):
    """What rank 0 tells every rank to do next."""

    STOP = 0
    STEP = 1  # one training step (before the first one: the run is set up, join the ranks)
    COMPILE = 2  # compile the training forward, all ranks together (`Trainer.compile_forward`), then wait again


@dataclass(frozen=True)
class Ranks:
    """This process's place among those training one job."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")
    # A gloo group over the same ranks for what the host decides (orders, loss-term counts): with NCCL, a
    # collective whose result the host reads waits for the GPU's queue, which would sync every step. None: the
    # default group (gloo already, as when processes on the CPU are joined without `process_group`).
    control: Any = None
    # What must let go of the process group before it is destroyed (`before_leaving`), in the order given.
    leaving: list[Callable[[], None]] = field(default_factory=list, compare=False, repr=False)

    @property
    def first(self) -> bool:
        """Whether this is rank 0: the one that holds the lease and writes metrics, events and checkpoints."""
        return self.rank == 0

    def my_rows(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's equal slice of the rows of the global batch (the spec makes batch_size divide evenly)."""
        if self.world == 1:
            return batch
        inputs, labels = batch
        rows = inputs.shape[0] // self.world
        mine = slice(self.rank * rows, (self.rank + 1) * rows)
        return inputs[mine], labels[mine]

    def weigh(
        self, loss: torch.Tensor, metrics: dict[str, torch.Tensor], terms: int
    ) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's weight for its loss, and the whole batch's loss and metrics (detached, on the device).

        `loss` and `metrics` are means over this rank's `terms` loss terms (tokens, or masked tokens), counted on
        the host. DDP averages gradients over the ranks, so a weight of `world * terms / all terms` makes the
        average the gradient of the mean over the whole batch; the batch's loss and metrics are the same weighted
        mean. Nothing here waits for the device: the count is summed on the host (the control group), the
        weighted values on the device. With one process nothing is counted or communicated.
        """
        if self.world == 1:
            return 1.0, loss.detach(), metrics
        total = self._sum_on_host(terms)
        names = sorted(metrics)
        if total == 0:  # no loss terms anywhere in the batch (never with a sane spec): nothing to learn from
            nan = torch.full((), float("nan"), device=loss.device)
            return 0.0, nan, dict.fromkeys(names, nan)
        values = torch.stack([v.detach().to(torch.float64) for v in (loss, *(metrics[name] for name in names))])
        scored = values * terms if terms else torch.zeros_like(values)  # a rank with no terms: its NaN mean counts 0
        dist.all_reduce(scored)
        means = (scored / total).to(dtype=loss.dtype)
        return self.world * terms / total, means[0], {name: means[i + 1] for i, name in enumerate(names)}

    def _sum_on_host(self, count: int) -> int:
        """The sum over the ranks of a count this rank knows on the host."""
        box = torch.tensor([count], dtype=torch.int64)
        dist.all_reduce(box, group=self.control)
        return int(box.item())

    def order(self, given: Order = Order.STOP) -> Order:
        """Rank 0's order (`given`), the same on every rank; the other ranks call it without one, to receive."""
        if self.world == 1:
            return given
        flag = torch.tensor([int(given)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.control)
        return Order(int(flag.item()))

    def stop(self) -> None:
        """Rank 0 tells the others to stop; a rank already gone (the reason to stop, maybe) is no error here."""
        try:
            self.order(Order.STOP)
        except (RuntimeError, dist.DistError):  # a rank died: torchrun ends the others
            pass

    def gather(self, value: T) -> list[T]:
        """Every rank's `value` (any picklable value), in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value, group=self.control)
        return values

    def from_first(self, value: T) -> T:
        """Rank 0's `value`, on every rank (any picklable value: a trainer's state)."""
        if self.world == 1:
            return value
        box: list[Any] = [value if self.first else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]  # type: ignore[no-any-return]

    def before_leaving(self, let_go: Callable[[], None]) -> None:
        """Call `let_go` when this process leaves the group (`process_group`), before the group is destroyed."""
        self.leaving.append(let_go)


ONE_PROCESS = Ranks()


@contextmanager
def process_group() -> Iterator[Ranks]:
    """This process's place in the job's process group (torchrun's environment names it) for the block.

    On leaving, however the block ends, whatever holds the group lets go of it first (`Ranks.before_leaving`: a
    trainer's DDP wrapper, `Trainer.leave_ranks`), and only then is the group destroyed. The order matters: a DDP
    reducer freed after `destroy_process_group` frees the gloo group itself, with the GIL held, joining gloo's
    threads while one of them waits for the GIL (a rank that hangs as it ends: pytorch/pytorch#56297). Being the
    one way a rank leaves, this keeps the order for every rank, rank 0 and the followers alike."""
    ranks = _join_process_group()
    try:
        yield ranks
    finally:
        try:
            for let_go in ranks.leaving:
                let_go()
            ranks.leaving.clear()
        finally:
            dist.destroy_process_group()


def _join_process_group() -> Ranks:
    """Join the job's process group: NCCL on CUDA, gloo on the CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    control = dist.new_group(backend="gloo")  # on the CPU too, so that the tests run the path a GPU job takes
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), device=device, control=control)
