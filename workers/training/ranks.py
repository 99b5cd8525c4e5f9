"""The processes that train one job together (torch.distributed): which rows each takes, and rank 0's say.

A job with `resources.devices` N > 1 is trained by N processes, one per device, launched by `torchrun`
(`workers/distributed.py`). Each draws the same global batch (a pure function of the seed and the step),
takes its own equal slice of the rows, and weighs its loss by its share of the batch's loss terms, so
DistributedDataParallel's average of the gradients is the whole batch's: the same update as one process.
Rank 0 decides, before every step, what all ranks do next (`order`: step, compile, or stop), so every rank
stops together and compiles at the same point. With one process (`ONE_PROCESS`) every method is the identity
and nothing is communicated.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from dataclasses import dataclass
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
        self,
        loss: torch.Tensor,
        metrics: dict[str, torch.Tensor],
        labels: torch.Tensor,
        loss_terms: Callable[[torch.Tensor], int],
    ) -> tuple[float, torch.Tensor, dict[str, torch.Tensor]]:
        """This rank's weight for its loss, and the whole batch's loss and metrics (detached, on the device).

        `loss` and `metrics` are means over this rank's `loss_terms(labels)` loss terms (tokens, or masked tokens).
        DDP averages gradients over the ranks, so a weight of `world * terms / all terms` makes the average the
        gradient of the mean over the whole batch; the batch's loss and metrics are the same weighted mean. With
        one process nothing is counted or communicated (no host sync).
        """
        if self.world == 1:
            return 1.0, loss.detach(), metrics
        terms = loss_terms(labels)
        names = sorted(metrics)
        values = [loss.detach(), *(metrics[name].detach() for name in names)]
        scored = torch.stack([v.to(torch.float64) for v in values]) * terms if terms else torch.zeros(len(values))
        sums = torch.cat([torch.tensor([float(terms)], dtype=torch.float64), scored.to(torch.float64).cpu()])
        sums = sums.to(self.device)
        dist.all_reduce(sums)
        total = float(sums[0].item())
        if total == 0:  # no loss terms anywhere in the batch (never with a sane spec): nothing to learn from
            nan = torch.full((), float("nan"), device=loss.device)
            return 0.0, nan, dict.fromkeys(names, nan)
        means = (sums[1:] / total).to(device=loss.device, dtype=loss.dtype)
        return self.world * terms / total, means[0], {name: means[i + 1] for i, name in enumerate(names)}

    def order(self, given: Order = Order.STOP) -> Order:
        """Rank 0's order (`given`), the same on every rank; the other ranks call it without one, to receive."""
        if self.world == 1:
            return given
        flag = torch.tensor([int(given)], dtype=torch.int32, device=self.device)
        dist.broadcast(flag, src=0)
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
        dist.all_gather_object(values, value)
        return values

    def from_first(self, value: T) -> T:
        """Rank 0's `value`, on every rank (any picklable value: a trainer's state)."""
        if self.world == 1:
            return value
        box: list[Any] = [value if self.first else None]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]  # type: ignore[no-any-return]


ONE_PROCESS = Ranks()


def join_process_group() -> Ranks:
    """Join the job's process group (torchrun's environment names it): NCCL on CUDA, gloo on the CPU."""
    cuda = torch.cuda.is_available()
    if cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=device if cuda else None)
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), device=device)
