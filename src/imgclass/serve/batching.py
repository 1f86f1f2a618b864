"""Micro-batching: concurrent requests share one model call.

Each request puts its decoded image on an asyncio queue and awaits a future. One background task
takes the first waiting item, then keeps collecting for up to ``wait_s`` seconds or until
``max_batch`` items, runs ``fn(items)`` once in a model thread (the event loop stays free to
accept and decode more requests meanwhile) and resolves every future with its row. With
``concurrency`` > 1, that many batches may run at once (one model thread each). While the model
is busy, new requests pile up in the queue and form the next batch at once, so under load batches
fill without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class QueueFull(Exception):
    """More images are waiting than ``max_queue``: the server is overloaded (answered with 503)."""


class MicroBatcher:
    """``await submit(item)`` → ``fn([... item ...])[i]``, with items of concurrent calls batched together.

    ``fn`` takes a list and returns a sequence of the same length; up to ``concurrency`` calls run at
    once, each in its own thread (``fn`` must then be thread-safe). A new batch starts collecting only
    when a slot is free, so while every slot is busy the queue fills the next batch.
    ``on_batch(size, seconds)`` is told about every call. The worker task starts on the first
    ``submit`` in a running loop (and again if a new loop appears, as with a test client that opens
    one loop per request).
    """

    def __init__(self, fn: Callable[[list[Any]], Sequence[Any]], max_batch: int = 32, wait_s: float = 0.005,
                 max_queue: int = 1024, concurrency: int = 1, on_batch: Callable[[int, float], None] | None = None):
        if max_batch < 1 or concurrency < 1:
            raise ValueError("max_batch and concurrency must be at least 1")
        self.fn, self.max_batch, self.wait_s, self.max_queue = fn, int(max_batch), max(0.0, float(wait_s)), max_queue
        self.concurrency = int(concurrency)
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="imgclass-model")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self.batches = 0
        self.items = 0

    @property
    def depth(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _ensure_started(self) -> asyncio.Queue:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._task = loop.create_task(self._worker(self._queue), name="imgclass-micro-batcher")
        return self._queue

    async def start(self) -> None:
        self._ensure_started()

    async def submit(self, item: Any) -> Any:
        queue = self._ensure_started()
        if queue.qsize() >= self.max_queue:
            raise QueueFull(f"{queue.qsize()} images are waiting for the model")
        fut = asyncio.get_running_loop().create_future()
        queue.put_nowait((item, fut))
        return await fut

    async def run(self, items: list[Any]) -> Sequence[Any]:
        """Call ``fn`` directly in a model thread (outside the batches), e.g. to warm up."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, items)

    async def _collect(self, queue: asyncio.Queue) -> list:
        loop = asyncio.get_running_loop()
        batch = [await queue.get()]
        deadline = loop.time() + self.wait_s
        while len(batch) < self.max_batch:
            try:  # whatever is already waiting joins at once
                batch.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    async def _worker(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        slots = asyncio.Semaphore(self.concurrency)
        while True:
            await slots.acquire()
            try:
                batch = await self._collect(queue)
            except BaseException:
                slots.release()
                raise
            task = loop.create_task(self._run_batch(batch, slots))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(self, batch: list, slots: asyncio.Semaphore) -> None:
        try:
            batch = [(item, fut) for item, fut in batch if not fut.done()]  # drop requests already gone
            if not batch:
                return
            t0 = time.perf_counter()
            try:
                rows = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn,
                                                                        [item for item, _ in batch])
                if len(rows) != len(batch):
                    raise RuntimeError(f"batch function returned {len(rows)} rows for {len(batch)} items")
            except Exception as exc:  # every waiting request gets the error, the worker keeps running
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            finally:
                self.batches += 1
                self.items += len(batch)
                if self.on_batch is not None:
                    self.on_batch(len(batch), time.perf_counter() - t0)
            for (_, fut), row in zip(batch, rows):
                if not fut.done():
                    fut.set_result(row)
        finally:
            slots.release()

    async def stop(self) -> None:
        tasks = [t for t in [self._task, *self._running] if t is not None and not t.done()]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._task = None

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
