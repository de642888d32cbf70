"""Data-parallel training on PyTorch's own engine: the process group torchrun describes in the
environment, DistributedDataParallel around what trains, sharded epochs, reduced metrics, and the
`--devices N` launcher that starts torchrun.

A single process is a world of size 1, and then every function here is a no-op, so the engine
has one code path."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..errors import TransferlabError


@dataclass(frozen=True)
class World:
    """This process's place among the ranks (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the run directory, checkpoints and reports, and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1 and dist.is_available() and dist.is_initialized()

    # -- sharding ------------------------------------------------------------------------------

    def shard(self, order: np.ndarray, pad: bool) -> np.ndarray:
        """This rank's part of an epoch's order.

        pad=True (training): DistributedSampler's rule: the order is padded with its own first
        items to a multiple of the world size, so every rank takes the same number of steps (a
        rank with fewer would leave the others waiting in the gradient all-reduce). pad=False
        (evaluation): every image exactly once, the counts are summed across ranks afterwards."""
        if not self.active:
            return order
        if pad:
            from torch.utils.data import DistributedSampler

            sampler = DistributedSampler(range(len(order)), num_replicas=self.size, rank=self.rank,
                                         shuffle=False)
            return order[np.fromiter(sampler, dtype=np.int64, count=len(sampler))]
        return order[self.rank::self.size]

    def shard_len(self, n: int) -> int:
        """How many items of n a rank takes when padded."""
        return -(-n // self.size) if self.active else n

    # -- collectives ---------------------------------------------------------------------------

    def sum(self, *values: float) -> list[float]:
        """The values summed over all ranks (float64 on the CPU: gloo and exact enough for counts)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.cpu().tolist()

    def agree(self, flag: bool) -> bool:
        """Rank 0's decision, on every rank: choices from wall-clock time (a --budget) differ
        between processes, and ranks that disagree on running another epoch deadlock."""
        if not self.active:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int64, device=_collective_device())
        dist.broadcast(t, src=0)
        return bool(t.item())

    def digests(self, module: nn.Module) -> list[str]:
        """A hash of `module`'s weights and buffers from every rank, in rank order (none when
        this process trains alone: there is nothing to compare)."""
        if not self.active:
            return []
        digest = hashlib.sha256()
        for name, tensor in module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()[:16]
        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, mine)
        return gathered

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them
        before each forward, but the forward then updates them from each rank's own shard, so
        after an epoch the ranks would evaluate, choose a best epoch and end with different
        statistics."""
        if not self.active:
            return
        for buffer in module.buffers():
            dist.broadcast(buffer.data, src=0)

    def barrier(self) -> None:
        if self.active:
            dist.barrier()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def from_env() -> World:
    return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                 int(os.environ.get("LOCAL_RANK", 0)))


def current() -> World:
    """The world of the process group this process joined (size 1 when it joined none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), from_env().local_rank)
    return World()


def init(device: str) -> World:
    """Join the process group torchrun set up (NCCL for GPUs, gloo on the CPU); a no-op when
    the process was not started by torchrun."""
    world = from_env()
    if world.size <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    if not dist.is_available():
        raise TransferlabError("this PyTorch build has no torch.distributed: run one process, or install "
                               "a PyTorch with distributed support")
    cuda = device.startswith("cuda")
    if cuda:
        if world.local_rank >= torch.cuda.device_count():
            raise TransferlabError(f"rank {world.rank} needs GPU {world.local_rank} but this machine has "
                                   f"{torch.cuda.device_count()}: start at most that many processes per node")
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo")
    return current()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


class _Step(nn.Module):
    """What one training step runs (the whole network, or the part after a cached prefix), as
    the module DistributedDataParallel needs to wrap; the parameters are the network's."""

    def __init__(self, network: nn.Module, forward):
        super().__init__()
        self.network = network
        self._forward = forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)


def parallel(world: World, network: nn.Module, forward, device: torch.device):
    """`forward` under DistributedDataParallel when several ranks train, else `forward` itself.

    Built afresh for every phase, after the phase set requires_grad: DDP registers its gradient
    hooks on the parameters that train when it is built, so a wrapper kept across an unfreeze
    would never synchronise the newly trainable layers (and one built before a freeze would wait
    for gradients that never come)."""
    if not world.active or not any(p.requires_grad for p in network.parameters()):
        return forward
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else None
    return DistributedDataParallel(_Step(network, forward), device_ids=ids)


def launch(devices: int, argv: list[str]) -> int:
    """Run this command again under torchrun with `devices` processes on this machine (one per
    GPU when there are GPUs, gloo on the CPU otherwise) and return its exit code."""
    if devices < 1:
        raise TransferlabError(f"--devices {devices} must be at least 1")
    gpus = torch.cuda.device_count()
    if gpus and devices > gpus:
        raise TransferlabError(f"--devices {devices} but this machine has {gpus} GPU(s): give at most {gpus}")
    env = dict(os.environ)
    if not gpus and "OMP_NUM_THREADS" not in env:
        # torchrun would give each process 1 thread; share the cores out instead.
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // devices))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
               "-m", "transferlab", *argv]
    return subprocess.run(command, env=env).returncode
