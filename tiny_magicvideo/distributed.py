"""Devices and processes: which device a run trains on, and the processes torchrun starts.

`resolve_device` turns --device auto into cuda, then mps, then cpu. Under torchrun (which sets
RANK, WORLD_SIZE and LOCAL_RANK), `join_processes` joins its process group and `this_process` says
which process this is; without torchrun there is one process, Process(0, 1).

The training noise is drawn through `randn`, `rand` and `randint`, which take a torch.Generator or,
under torchrun, a `BatchShare`: one process's slice of draws made for the whole global batch, so
that N processes draw between them exactly what one process draws (training.py).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    """'auto' picks cuda, then mps, then cpu; an explicit device that is absent is an error."""
    available = {"cuda": torch.cuda.is_available(),
                 "mps": getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available(),
                 "cpu": True}
    if name == "auto":
        return torch.device(next(kind for kind, present in available.items() if present))
    if not available.get(name, False):
        raise ValueError(f"device {name!r} is not available on this machine; use --device auto or cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Process:
    """This process among those torchrun started (torch.distributed's process group)."""

    rank: int  # 0 .. world_size - 1
    world_size: int

    @property
    def is_main(self) -> bool:
        """Process 0, the one that writes files and prints."""
        return self.rank == 0


def this_process() -> Process:
    """Process(rank, world_size) of the process group; Process(0, 1) without torchrun."""
    if dist.is_available() and dist.is_initialized():
        return Process(dist.get_rank(), dist.get_world_size())
    return Process(0, 1)


def wait_for_every_process() -> None:
    """A barrier: returns once every process has reached it (nothing to wait for without torchrun)."""
    if this_process().world_size > 1:
        dist.barrier()


def join_processes(device: torch.device) -> torch.device:
    """Under torchrun, join its process group: NCCL between GPUs, one per process (cuda:LOCAL_RANK),
    gloo between CPU processes; processes other than 0 print nothing (their errors still reach
    stderr). On CUDA, float32 matmuls and convolutions run on tensor cores (TF32, a 10-bit mantissa).
    Returns the device this process trains on."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if "RANK" not in os.environ:
        return device
    if device.type == "mps":
        raise ValueError("torchrun does not run on mps here (no process group backend for it); use --device cpu")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if not this_process().is_main:
        sys.stdout = open(os.devnull, "w")
    return device


def leave_processes() -> None:
    """End the process group, where one was joined."""
    if dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# The training noise's draws.


class BatchShare:
    """One process's share of a global batch under torchrun: the draws of a training
    loss are made for the whole global batch, world_size times the local one along dim 0, from the
    generator every process holds in the same state, and this rank's rows kept. So N processes draw,
    between them, exactly what one process draws for the global batch, and their generators stay in
    step: a checkpoint holds one state, valid for any number of processes."""

    def __init__(self, generator: torch.Generator, rank: int, world_size: int):
        self.generator, self.rank, self.world_size = generator, rank, world_size

    def draw(self, draw, shape: tuple[int, ...], **options) -> torch.Tensor:
        """draw(global shape, generator=..., **options), this rank's rows: (shape[0], *shape[1:])."""
        rows = shape[0]
        drawn = draw((rows * self.world_size, *shape[1:]), generator=self.generator, **options)
        return drawn[self.rank * rows:(self.rank + 1) * rows]


def randn(shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
          **options) -> torch.Tensor:
    """torch.randn(shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(torch.randn, shape, **options)
    return torch.randn(shape, generator=generator, **options)


def rand(shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
         **options) -> torch.Tensor:
    """torch.rand(shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(torch.rand, shape, **options)
    return torch.rand(shape, generator=generator, **options)


def randint(low: int, high: int, shape: tuple[int, ...], generator: torch.Generator | BatchShare | None = None,
            **options) -> torch.Tensor:
    """torch.randint(low, high, shape, generator=generator, **options), or a BatchShare's rows of it."""
    if isinstance(generator, BatchShare):
        return generator.draw(lambda size, **kw: torch.randint(low, high, size, **kw), shape, **options)
    return torch.randint(low, high, shape, generator=generator, **options)
