"""Independent runs in worker processes (`compare --jobs N`): one GPU per worker when there are
GPUs, a share of the CPU cores otherwise. Each run is still a whole `train` with its own run
directory, so what a worker writes is exactly what a serial comparison writes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable

log = logging.getLogger("transferlab")


def _start_worker(slots, threads: int, level: int) -> None:
    gpu = slots.get()
    if gpu is not None:
        # Before torch touches CUDA in this process: the worker sees its one GPU as cuda:0.
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    logging.basicConfig(level=max(level, logging.WARNING), format="%(message)s")
    import torch

    torch.set_num_threads(threads)


def run_in_workers(attempt: Callable[[tuple], tuple], tasks: list[tuple], jobs: int, labels: list[str],
                   started: float) -> dict:
    """{(config index, seed): attempt(task)} for every task, `jobs` at a time."""
    import torch

    gpus = torch.cuda.device_count()
    jobs = min(jobs, len(tasks)) or 1
    # 'spawn': a forked child would inherit the parent's torch threads and any CUDA state.
    context = multiprocessing.get_context("spawn")
    slots = context.Queue()
    for k in range(jobs):
        slots.put(k % gpus if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    where = f"{min(jobs, gpus)} GPU(s)" if gpus else f"{threads} CPU thread(s) each"
    log.info(f"{len(tasks)} runs in {jobs} worker processes ({where})")
    outcomes: dict[tuple[int, int], tuple] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker,
                             initargs=(slots, threads, log.getEffectiveLevel())) as pool:
        futures = {pool.submit(attempt, task): task for task in tasks}
        for done, future in enumerate(as_completed(futures), 1):
            ci, seed = futures[future][:2]
            try:
                outcomes[ci, seed] = future.result()
            except Exception as err:  # the worker process itself died (out of memory, a crash)
                outcomes[ci, seed] = None, f"worker process died: {type(err).__name__}: {err}"
            status = "failed" if outcomes[ci, seed][1] else "done"
            log.info(f"[{done}/{len(tasks)}] config {ci + 1}/{len(labels)} ({labels[ci]}), seed {seed} {status}; "
                     f"{(time.perf_counter() - started) / 60:.1f} min so far")
    return outcomes
