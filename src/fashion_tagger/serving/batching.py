"""Micro-batching: concurrent requests share one model call, so a busy service runs at batch speed.

Requests put their (already decoded) images on an asyncio queue; one worker task takes the first
waiting request, lets others join it for up to `max_wait_ms` or until `max_batch` images, and runs
the model once in a worker thread so the event loop keeps accepting requests meanwhile. While the
model runs, new requests queue up and form the next batch: the busier the service, the larger
its batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

BatchFn = Callable[[np.ndarray], list[np.ndarray]]
"""A model call in the backend contract: (N, C, H, W) float32 -> outputs, each with N rows."""


class MicroBatcher:
    """Group concurrent `submit` calls into model calls of at most `max_batch` images.

    Args:
        fn: the model call, run in a worker thread.
        max_batch: most images per model call.
        max_wait_ms: how long a lone request waits for company before running alone.
        on_batch: called with the size of every batch (metrics).
    """

    def __init__(
        self,
        fn: BatchFn,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.fn = fn
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[tuple[np.ndarray, asyncio.Future]] = asyncio.Queue()
        self._task: asyncio.Task | None = None
        # The model has its own thread: it never waits behind image decoding queued in another
        # pool, and one call runs at a time (the next batch forms meanwhile).
        self._executor: ThreadPoolExecutor | None = None
        # The batch is assembled in this buffer, reused from call to call (one runs at a time):
        # a fresh (32, 3, 224, 224) array per batch is 19 MB of new pages to fault in each time.
        self._buffer: np.ndarray | None = None

    async def submit(self, x: np.ndarray) -> list[np.ndarray]:
        """Run the model on `x` (N, C, H, W) as part of some batch; return its N rows of outputs."""
        if len(x) == 0:
            raise ValueError("submit needs at least one image")
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._worker(), name="micro-batcher")
        loop = asyncio.get_running_loop()
        futures = []
        for start in range(0, len(x), self.max_batch):
            fut: asyncio.Future = loop.create_future()
            self._queue.put_nowait((x[start : start + self.max_batch], fut))
            futures.append(fut)
        parts = await asyncio.gather(*futures)
        if len(parts) == 1:
            return parts[0]
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    async def close(self) -> None:
        """Stop the worker; requests still waiting fail instead of hanging."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("the service is shutting down"))

    async def _next(self, timeout: float) -> tuple[np.ndarray, asyncio.Future] | None:
        """The next queued request within `timeout` seconds, or None; never loses an item."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        if timeout <= 0:
            return None
        getter = asyncio.ensure_future(self._queue.get())
        done, _ = await asyncio.wait({getter}, timeout=timeout)
        if done:
            return getter.result()
        getter.cancel()
        try:
            return await getter  # it may have completed while being cancelled
        except asyncio.CancelledError:
            return None

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        carried: tuple[np.ndarray, asyncio.Future] | None = None
        while True:
            first = carried if carried is not None else await self._queue.get()
            carried = None
            batch = [first]
            n = len(first[0])
            deadline = loop.time() + self.max_wait
            while n < self.max_batch:
                item = await self._next(deadline - loop.time())
                if item is None:
                    break
                if n + len(item[0]) > self.max_batch:
                    carried = item
                    break
                batch.append(item)
                n += len(item[0])
            await self._run(batch, n)

    def _call(self, parts: list[np.ndarray], n: int) -> list[np.ndarray]:
        """Assemble the batch and run the model (in the model thread, off the event loop)."""
        if len(parts) == 1:
            return self.fn(parts[0])
        shape, dtype = (self.max_batch, *parts[0].shape[1:]), parts[0].dtype
        if self._buffer is None or self._buffer.shape != shape or self._buffer.dtype != dtype:
            self._buffer = np.empty(shape, dtype)
        x = np.concatenate(parts, out=self._buffer[:n])
        # The buffer is refilled by the next batch while this one's answers are still being
        # decoded: an output that is a view of it must be copied first.
        return [o.copy() if np.may_share_memory(o, x) else o for o in self.fn(x)]

    async def _run(self, batch: list[tuple[np.ndarray, asyncio.Future]], n: int) -> None:
        if self.on_batch is not None:
            self.on_batch(n)
        parts = [b[0] for b in batch]
        try:
            outs = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._call, parts, n
            )
        except Exception as exc:  # handed to each waiting request, which answers with it
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
            return
        start = 0
        for part, fut in batch:
            stop = start + len(part)
            if not fut.done():
                fut.set_result([o[start:stop] for o in outs])
            start = stop
