"""Request batching: images of concurrent requests run through the network together.

Each image waits at most `wait_ms` for company, and only while more images are known to be on
their way (being read or decoded by other requests): a lone request is never delayed, a burst
of them fills batches of up to `batch_size`. One thread runs the model, so the network is never
used by two requests at once and Grad-CAM (which changes module modes) cannot race a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class Batcher:
    def __init__(self, run_batch: Callable[[np.ndarray], np.ndarray], batch_size: int = 8, wait_ms: float = 5.0,
                 prepare_thread: Callable[[], None] | None = None):
        self.run_batch = run_batch
        self.batch_size = batch_size
        self.wait_s = wait_ms / 1000.0
        self.model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferlab-model",
                                               initializer=prepare_thread)
        self.coming = 0  # images announced by requests that are still decoding them
        self.batches = 0
        self.images = 0
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._serve())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.model_thread.shutdown(wait=True)

    def announce(self, images: int) -> None:
        """`images` will be submitted soon (or withdrawn): batches wait for them."""
        self.coming += images

    async def submit(self, views: np.ndarray, announced: bool = True) -> np.ndarray:
        """Mean class probabilities over the (V, S, S, 3) views of one image."""
        future = asyncio.get_running_loop().create_future()
        if announced:
            self.coming -= 1
        await self._queue.put((views, future))
        return await future

    async def run_alone(self, work: Callable, *args):
        """Run `work(*args)` on the model thread, between batches."""
        return await asyncio.get_running_loop().run_in_executor(self.model_thread, work, *args)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            count = len(items[0][0])
            deadline = loop.time() + self.wait_s
            while count < self.batch_size:
                if not self._queue.empty():
                    item = self._queue.get_nowait()
                elif self.coming > 0 and loop.time() < deadline:
                    try:
                        item = await asyncio.wait_for(self._queue.get(), deadline - loop.time())
                    except TimeoutError:
                        break
                else:
                    break
                items.append(item)
                count += len(item[0])
            await self._run(loop, items)

    async def _run(self, loop, items: list) -> None:
        try:
            proba = await loop.run_in_executor(self.model_thread, self.run_batch,
                                               np.concatenate([views for views, _ in items]))
        except Exception as err:  # noqa: BLE001 - every waiting request gets the failure
            for _, future in items:
                if not future.done():
                    future.set_exception(err)
            return
        self.batches += 1
        self.images += len(items)
        start = 0
        for views, future in items:
            rows = proba[start:start + len(views)]
            start += len(views)
            if not future.done():  # a client that went away cancelled its future
                future.set_result(rows.mean(0))
