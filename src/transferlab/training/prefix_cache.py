"""Cached-prefix training: the frozen front of the network runs once per augmented view of each
training image (and once per val image); every epoch then trains only the back of the network
and the head on the cached activations, drawing one view per image.

The prefix is frozen and in eval mode in every phase, so its output for a given view is exactly
what the uncached path computes (up to the fp16 storage). Prefix work drops from
epochs x (train + val) forward passes to views x train + val.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn

from ..common.atomic import make_dir
from ..common.progress import progress_bar
from ..data.types import ImageSet
from ..models.network import Network
from ..models.preprocess import Preprocess
from ..models.stages import module_chain
from ..runtime.frozen import whole_pass
from .batches import PixelBatches, epoch_order, shard_size
from .distributed import World
from .engine import Phase, epoch_seed

log = logging.getLogger("transferlab")


@dataclass
class Plan:
    use: bool
    reason: str
    cut: int = 0                                   # index into the chain where training starts
    chain: list[tuple[str, nn.Module]] | None = None
    views: int = 0
    bytes_needed: int = 0
    on_disk: bool = False
    end: str = "the pooled features"               # what the whole chain outputs
    build_seconds: float = 0.0                     # spent running the prefix over the views

    def describe(self) -> str:
        if not self.use:
            return f"pixels ({self.reason})"
        where = "on disk" if self.on_disk else "in memory"
        return (f"cached prefix up to {self.chain[self.cut][0] if self.cut < len(self.chain) else self.end}"
                f" ({self.views} views, {self.bytes_needed / 2**20:.0f} MB {where})")


def first_trained(network: Network, chain: list[tuple[str, nn.Module]], phases: list[Phase]) -> int:
    """Index of the first chain element whose parameters train, or whose BatchNorm updates, in any
    phase; len(chain) when the whole backbone stays frozen."""
    trained = {n for p in phases if p.epochs for names, _ in p.groups for n in names}
    updating = {m for p in phases if p.epochs for m in p.bn_update}
    for i, (name, module) in enumerate(chain):
        prefix = f"backbone.{name}"
        if any(n.startswith(prefix + ".") for n in trained) or any(
                m == prefix or m.startswith(prefix + ".") for m in updating):
            return i
    return len(chain)


def plan(network: Network, phases: list[Phase], pre: Preprocess, n_train: int, n_val: int,
         views: int, memory_mb: int, cache_dir: Path, enabled: bool = True, mixing: bool = False,
         train_scale: float = 1.0) -> Plan:
    """`train_scale`: the training views' share of memory relative to one full-size set (progressive
    resizing caches each view at every size)."""
    tapped = getattr(network.backbone, "run", None) is not None
    if tapped:
        chain = network.backbone.chain
        if chain is None:
            return Plan(False, "two backbones have no single prefix to cache")
    else:
        chain = module_chain(network.backbone, probe_size=min(pre.input_size, 96))
    if chain is None:
        return Plan(False, "this backbone's forward is not a chain that can be cut")
    cut = first_trained(network, chain, phases)
    if tapped:
        cut = min(cut, network.backbone.first_tap + 1)  # every tap must come out of the suffix
    if cut == 0:
        return Plan(False, "the whole network trains", 0, chain)
    if not enabled:
        return Plan(False, "prefix cache turned off", cut, chain)
    if mixing:
        return Plan(False, "mixup/cutmix mix pixels, which a cached prefix cannot", cut, chain)
    epochs = sum(p.epochs for p in phases)
    views = max(1, min(views, epochs))
    was_training = network.training
    network.eval()  # a one-image probe through BatchNorm in training mode would fail
    with torch.no_grad():
        probe = torch.zeros(1, 3, pre.input_size, pre.input_size)
        shape = _run(chain[:cut], network.normalize(probe)).shape[1:]
    network.train(was_training)
    per_view = int(np.prod(shape)) * 2  # float16
    needed = int(per_view * (n_train * views * train_scale + n_val))
    on_disk = needed > memory_mb * 2**20
    if on_disk:
        make_dir(cache_dir)
        free = shutil.disk_usage(cache_dir).free
        if needed * 1.2 > free:
            return Plan(False, f"the cache would need {needed / 2**30:.1f} GB, more than the memory budget "
                               f"(--cache-memory-mb {memory_mb}) and the free disk", cut, chain)
    return Plan(True, "", cut, chain, views, needed, on_disk, "the tapped maps" if tapped else "the pooled features")


class Prefix(nn.Module):
    """The frozen front as one module from pixels: what its onnxruntime graph is made from."""

    def __init__(self, network: Network, modules: list[tuple[str, nn.Module]]):
        super().__init__()
        self.normalize, self.chain = network.normalize, nn.ModuleList([m for _, m in modules])

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        h = self.normalize(pixels)
        for module in self.chain:
            h = module(h)
        return h


def _run(modules: list[tuple[str, nn.Module]], x: torch.Tensor) -> torch.Tensor:
    for _, module in modules:
        x = module(x)
    return x


def split_forward(network: Network, plan_: Plan) -> Callable[[torch.Tensor], torch.Tensor]:
    """The whole network on pixels, its frozen front under no_grad (no activations kept)."""
    if plan_.chain is None or plan_.cut == 0:
        return network
    front, suffix = plan_.chain[:plan_.cut], suffix_forward(network, plan_)

    def forward(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            h = _run(front, network.normalize(x))
        return suffix(h)

    return forward


def suffix_forward(network: Network, plan_: Plan) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network from the cut onwards: what trains on cached activations."""
    if getattr(network.backbone, "run", None) is not None:  # a tapped backbone returns its maps
        return lambda h: network.head(network.backbone.run(h, plan_.cut))
    rest = plan_.chain[plan_.cut:]
    return lambda h: network.head(_run(rest, h))


class CachedActivations:
    """(activations, labels) batches: one cached view per image per epoch, chosen by the seed."""

    def __init__(self, store: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                 balanced: bool = False, world: World | None = None):
        self.store, self.labels, self.batch_size = store, labels, batch_size
        self.shuffle, self.balanced = shuffle or balanced, balanced
        self.world = world or World()

    def __len__(self) -> int:
        return math.ceil(shard_size(len(self.labels), self.world, self.shuffle) / self.batch_size)

    def batches(self, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, views = self.store.shape[:2]
        gen = torch.Generator().manual_seed(seed)
        order = epoch_order(self.labels, gen, self.shuffle, self.balanced)
        chosen = torch.randint(0, views, (n,), generator=gen).numpy() if views > 1 else np.zeros(n, int)
        order = self.world.shard(order, pad=self.shuffle)
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            h = torch.from_numpy(np.ascontiguousarray(self.store[idx, chosen[idx]])).float()
            yield h, torch.from_numpy(self.labels[idx])


class PrefixCache:
    """Builds and holds the cached prefix activations of the train and val splits."""

    def __init__(self, plan_: Plan, cache_dir: Path):
        self.plan = plan_
        self._tmp = tempfile.mkdtemp(prefix="prefix-", dir=cache_dir) if plan_.on_disk else None

    def close(self) -> None:
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def _array(self, name: str, shape: tuple) -> np.ndarray:
        if self._tmp is None:
            return np.empty(shape, dtype=np.float16)
        return np.lib.format.open_memmap(Path(self._tmp) / f"{name}.npy", mode="w+", dtype=np.float16, shape=shape)

    def build(self, network: Network, images: ImageSet, pre: Preprocess, augment, views: int, seed: int,
              batch_size: int, name: str, progress: bool = True, runtime: str = "torch",
              cache: Path | None = None) -> np.ndarray:
        """Run the prefix over `views` augmented views (or the eval view when augment is None), in
        onnxruntime where `runtime` resolves to it on a CPU (runtime/frozen.py whole_pass: its
        graph kept in `cache`, made when the passes pay it back), else in PyTorch."""
        prefix = self.plan.chain[:self.plan.cut]
        network.eval().to(memory_format=torch.channels_last)
        device = next(network.parameters()).device.type
        graph = whole_pass(Prefix(network, prefix), pre.input_size, len(images) * views, runtime, cache, device)
        store = None
        source = PixelBatches(images, pre, batch_size, augment)
        bar = progress_bar(total=len(images) * views, desc=f"caching {name}", enabled=progress)
        with torch.inference_mode():
            for v in range(views):
                # Each view pass is seeded on its own: rebuilding the cache (a resumed run) gives
                # the same views.
                torch.manual_seed(epoch_seed(seed, 100_000 + v, 0))
                start = 0
                for x, _ in source.batches(0):
                    if graph.runtime == "onnx":
                        h = torch.from_numpy(graph(x))
                    else:
                        h = _run(prefix, network.normalize(x.contiguous(memory_format=torch.channels_last)))
                    if store is None:
                        store = self._array(name, (len(images), views) + tuple(h.shape[1:]))
                    store[start:start + len(x), v] = h.to(torch.float16).numpy()
                    start += len(x)
                    bar.update(len(x))
        bar.close()
        return store
