"""Micro-batching: concurrent /recommend calls share one model pass.

Every model computation runs in one dedicated thread. While it is busy, new requests wait in a
queue; the next pass takes all of them at once (grouped by k, method, filters), so one
transformer pass and one scan of the item matrix serve many users. There is no added delay: a
lone request starts at once, and batches form only when requests arrive faster than the model
answers. Repeat requests are answered from the response cache without queueing.

The model thread does no cache I/O: cache and store reads run before a pass on the thread pool
(`Recommender.gather`), cache writes after it (`Recommender.save`), so a slow or frozen Redis
delays nobody's model pass. A large /recommend_batch (`recommend_batch`) runs in slices of
`slice_users`; each slice is queued behind whatever is already waiting, so single requests that
arrive meanwhile are served between two slices instead of after the whole batch.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from movierec.index.base import Filters
from movierec.serving.recommender import Recommendation, Recommender, Work

T = TypeVar("T")
Params = tuple[int, str, Filters, bool]  # k, method, filters, exclude_rated


class RecommendBatcher:
    def __init__(self, recommender: Recommender, max_batch: int = 64,
                 on_batch: Callable[[int], None] | None = None, slice_users: int = 16,
                 thread_setup: Callable[[], None] | None = None) -> None:
        self.recommender = recommender
        self.max_batch, self.slice_users = max_batch, max(1, slice_users)
        self._saving: set[asyncio.Task] = set()  # cache writes in flight (held: the loop keeps weak references)
        self.on_batch = on_batch or (lambda size: None)
        # thread_setup runs once in the model thread: settings that are per thread (OpenMP's thread count)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="model", initializer=thread_setup)
        self._pending: list[tuple[Params, int, np.ndarray, int, asyncio.Future]] = []
        self._inflight: dict[tuple, tuple[int, asyncio.Future]] = {}  # request -> (generation, its answer)
        self._draining = False
        self._drainer: asyncio.Task | None = None  # held: the loop keeps only weak references to tasks

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run model work in the model thread, in turn with the batches (one core, like every pass)."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, lambda: fn(*args))

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Cache (and store) I/O: on the thread pool when the cache is a network one, else inline."""
        return await asyncio.to_thread(fn, *args) if self.recommender.cache.blocking else fn(*args)

    def _save_later(self, work: Work) -> None:
        """Write what a pass computed to the cache after its callers have their answers."""
        if not work.writes:
            return
        task = asyncio.get_running_loop().create_task(self._io(self.recommender.save, work))
        self._saving.add(task)
        task.add_done_callback(self._saving.discard)

    async def recommend_batch(self, user_ids: list[int], k: int, method: str, filters: Filters,
                              exclude_rated: bool) -> list[Recommendation]:
        """Many users (/recommend_batch): cache and store reads off the model thread, then the model in slices
        of `slice_users`, each queued behind the passes already waiting (fair to single requests)."""
        rec = self.recommender
        work = await asyncio.to_thread(rec.gather, user_ids, k, method, filters, exclude_rated)
        # one core, like the micro-batches: with every core, the slices' spinning thread pools slowed the
        # single requests between them and the batch itself (bench/faults.py)
        for start in range(0, len(work.todo), self.slice_users):
            await self.run(rec.compute, work, work.todo[start:start + self.slice_users])
        self._save_later(work)
        return work.answers()

    async def recommend(self, user_id: int, k: int, method: str, filters: Filters, exclude_rated: bool
                        ) -> dict[str, Any]:
        """One user's recommendation as a response dict (from the cache when it is there).

        Identical requests while one is being computed wait for that one (when a popular cached
        response expires, one computation answers all who ask), unless the user's history changed
        after it started.
        """
        rec = self.recommender
        key = (user_id, k, method, filters, exclude_rated)
        # a network cache: do not hold the event loop during the round trip
        cached, generation = await asyncio.to_thread(rec.lookup, *key) if rec.cache.blocking else rec.lookup(*key)
        if cached is not None:
            return cached
        running = self._inflight.get(key)
        if running is not None and running[0] == generation:
            try:
                return await asyncio.shield(running[1])
            except asyncio.CancelledError:
                if not running[1].cancelled():
                    raise  # this request itself was cancelled
                # the one it joined was abandoned before its history was read: compute it here
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._inflight[key] = (generation, future)
        future.add_done_callback(lambda done: self._settled(key, done))
        try:
            # read here, on the thread pool, while the model thread computes other batches
            history = await asyncio.to_thread(rec.history, user_id, generation)
        except asyncio.CancelledError:
            future.cancel()  # whoever joined computes it again
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: whoever waits on it gets it, nobody else is warned
            raise
        self._pending.append(((k, method, filters, exclude_rated), user_id, history, generation, future))
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        return await asyncio.shield(future)  # a client that goes away does not cancel it for the others

    def _settled(self, key: tuple, future: asyncio.Future) -> None:
        if self._inflight.get(key, (None, None))[1] is future:
            del self._inflight[key]

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
                self.on_batch(len(batch))
                groups: dict[Params, list[tuple[int, asyncio.Future]]] = defaultdict(list)
                histories: dict[int, np.ndarray] = {}
                read_at: dict[int, int] = {}  # the generation each history was read at (the newest wins)
                for params, user_id, history, generation, future in batch:
                    groups[params].append((user_id, future))
                    if generation >= read_at.get(user_id, -1):
                        histories[user_id], read_at[user_id] = history, generation
                for (k, method, filters, exclude_rated), waiting in groups.items():
                    users = [user_id for user_id, _ in waiting]
                    rec = self.recommender
                    try:
                        work = await self._io(rec.gather, users, k, method, filters, exclude_rated, False,
                                              histories, read_at)
                        await self.run(rec.compute, work)
                        recs = work.answers()
                    except Exception as exc:  # noqa: BLE001 - each caller gets the error (mapped to 4xx/503)
                        for _, future in waiting:
                            if not future.done():
                                future.set_exception(exc)
                        continue
                    for (_, future), answer in zip(waiting, recs):
                        if not future.done():  # the client may have gone away
                            future.set_result(answer.to_dict())
                    self._save_later(work)
        finally:
            self._draining = False

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)

