"""Micro-batching: concurrent /recommend calls share one model pass and get exactly their own answer."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from movierec.data.prepared import load_prepared
from movierec.index.base import Filters
from movierec.model.artifact import load_artifact
from movierec.serving.batcher import RecommendBatcher
from movierec.serving.recommender import MethodUnavailable, Recommender
from movierec.store import open_store
from movierec.store.cache import MemoryCache


@pytest.fixture(scope="module")
def store(pattern_prepared: Path, tmp_path_factory: pytest.TempPathFactory):
    with open_store(None, tmp_path_factory.mktemp("batcher") / "store.sqlite") as s:
        s.load_prepared(load_prepared(pattern_prepared), progress=False)
        yield s


def recommender(pattern_model: Path, store) -> Recommender:
    return Recommender(load_artifact(pattern_model), store, MemoryCache())


def test_concurrent_requests_share_a_pass_and_match_one_by_one(pattern_model: Path, store) -> None:
    batches: list[int] = []
    batcher = RecommendBatcher(recommender(pattern_model, store), on_batch=batches.append)
    alone = recommender(pattern_model, store)  # its own cache: computes every user by itself
    users = list(range(1, 13))
    comedy = Filters(genres=("Comedy",))

    async def all_at_once():
        calls = [batcher.recommend(u, 5 if u % 2 else 7, "torchserve", comedy if u % 3 == 0 else Filters(), True)
                 for u in users]
        return await asyncio.gather(*calls)

    try:
        results = asyncio.run(all_at_once())
    finally:
        batcher.close()
    # requests that wait while the model thread is busy share its next pass
    assert sum(batches) == len(users) and max(batches) > 1
    for u, got in zip(users, results):
        want = alone.recommend(u, 5 if u % 2 else 7, "torchserve", comedy if u % 3 == 0 else Filters()).to_dict()
        assert got["user_id"] == u and not got["cached"]
        assert [i["movie_id"] for i in got["items"]] == [i["movie_id"] for i in want["items"]]
        np.testing.assert_allclose([i["score"] for i in got["items"]], [i["score"] for i in want["items"]],
                                   atol=1e-5)
        assert [i["because"] for i in got["items"]] == [i["because"] for i in want["items"]]


def test_repeat_requests_come_from_the_cache_without_a_model_pass(pattern_model: Path, store) -> None:
    batches: list[int] = []
    batcher = RecommendBatcher(recommender(pattern_model, store), on_batch=batches.append)

    async def twice():
        first = await batcher.recommend(3, 5, "torchserve", Filters(), True)
        second = await batcher.recommend(3, 5, "torchserve", Filters(), True)
        return first, second

    try:
        first, second = asyncio.run(twice())
    finally:
        batcher.close()
    assert batches == [1]
    assert second["cached"] and not first["cached"] and second["items"] == first["items"]


def test_an_error_reaches_every_waiting_request_and_the_batcher_recovers(pattern_model: Path, store) -> None:
    batcher = RecommendBatcher(recommender(pattern_model, store))  # no FAISS index: method faiss fails

    async def scenario():
        failing = await asyncio.gather(*(batcher.recommend(u, 5, "faiss", Filters(), True) for u in (1, 2, 3)),
                                       return_exceptions=True)
        working = await batcher.recommend(4, 5, "torchserve", Filters(), True)
        return failing, working

    try:
        failing, working = asyncio.run(scenario())
    finally:
        batcher.close()
    assert all(isinstance(e, MethodUnavailable) for e in failing)
    assert working["strategy"] == "sequence" and len(working["items"]) == 5


def test_user_vectors_are_cached_until_the_history_changes(pattern_model: Path, store) -> None:
    passes: list[str] = []
    rec = Recommender(load_artifact(pattern_model), store, MemoryCache(),
                      observe=lambda stage, seconds: passes.append(stage))
    passes.clear()  # the warm-up pass
    first = rec.recommend(5, 5).to_dict()
    other_k = rec.recommend(5, 8, filters=Filters(genres=("Comedy",))).to_dict()  # new response, same user vector
    assert passes.count("model") == 1
    assert other_k["items"][0]["because"] and first["items"][0]["because"] == other_k["items"][0]["because"]
    store.add_rating(5, int(rec.catalog.movie_ids[1]), 4.0)
    rec.invalidate(5)
    rec.recommend(5, 8, filters=Filters(genres=("Comedy",)))
    assert passes.count("model") == 2


def test_identical_requests_in_flight_share_one_computation(pattern_model: Path, store) -> None:
    batches: list[int] = []
    batcher = RecommendBatcher(recommender(pattern_model, store), on_batch=batches.append)

    async def herd():  # e.g. a popular cached response has just expired
        return await asyncio.gather(*(batcher.recommend(9, 5, "torchserve", Filters(), True) for _ in range(10)))

    try:
        answers = asyncio.run(herd())
    finally:
        batcher.close()
    assert batches == [1]  # one user computed once, not ten times
    assert all(a["items"] == answers[0]["items"] for a in answers) and len(answers[0]["items"]) == 5


class SlowFirstRead:
    """A store whose first history read waits until released (an update lands meanwhile)."""

    def __init__(self, store) -> None:
        self.store, self.release, self.reading, self.calls = store, threading.Event(), threading.Event(), 0

    def user_history(self, user_id: int, limit: int | None = None):
        rows = self.store.user_history(user_id, limit)
        self.calls += 1
        if self.calls == 1:
            self.reading.set()
            self.release.wait(10)
        return rows


def slow_recommender(pattern_model: Path, store, user: int) -> tuple[Recommender, SlowFirstRead, int]:
    """A recommender whose first history read blocks, and the user's current top movie."""
    top = recommender(pattern_model, store).recommend(user, 5).items[0]["movie_id"]
    slow = SlowFirstRead(store)
    rec = Recommender(load_artifact(pattern_model), slow, MemoryCache())
    slow.calls = 0  # after the warm-up
    return rec, slow, top


async def update_while_reading(batcher: RecommendBatcher, slow: SlowFirstRead, store, user: int, movie: int
                               ) -> asyncio.Task:
    """Start a request, and while its history (the old one) is being read, rate `movie` as /update_user does."""
    before = asyncio.create_task(batcher.recommend(user, 5, "torchserve", Filters(), True))
    await asyncio.to_thread(slow.reading.wait, 10)
    store.add_rating(user, movie, 5.0)  # write, then invalidate
    batcher.recommender.invalidate(user)
    return before


def test_a_result_computed_before_an_update_is_not_cached(pattern_model: Path, store) -> None:
    user = 11
    rec, slow, top = slow_recommender(pattern_model, store, user)
    batcher = RecommendBatcher(rec)

    async def scenario():
        before = await update_while_reading(batcher, slow, store, user, top)
        slow.release.set()
        return await before, await batcher.recommend(user, 5, "torchserve", Filters(), True)

    try:
        first, after = asyncio.run(scenario())
    finally:
        batcher.close()
    assert top in {i["movie_id"] for i in first["items"]}  # asked before the update: the old history
    # it finished after the update, so it was not cached: the next request is computed afresh
    assert not after["cached"] and top not in {i["movie_id"] for i in after["items"]}


def test_a_request_after_an_update_does_not_wait_for_one_from_before(pattern_model: Path, store) -> None:
    user = 12
    rec, slow, top = slow_recommender(pattern_model, store, user)
    batcher = RecommendBatcher(rec)

    async def scenario():
        before = await update_while_reading(batcher, slow, store, user, top)
        # identical parameters, but the history changed: joining `before` would block until release
        during = await asyncio.wait_for(batcher.recommend(user, 5, "torchserve", Filters(), True), 5)
        slow.release.set()
        await before
        return during, await batcher.recommend(user, 5, "torchserve", Filters(), True)

    try:
        during, after = asyncio.run(scenario())
    finally:
        batcher.close()
    assert top not in {i["movie_id"] for i in during["items"]}
    assert after["items"] == during["items"]


def test_a_request_that_joined_an_abandoned_one_computes_its_own(pattern_model: Path, store) -> None:
    user = 13
    slow = SlowFirstRead(store)
    rec = Recommender(load_artifact(pattern_model), slow, MemoryCache())
    slow.calls = 0
    batcher = RecommendBatcher(rec)

    async def scenario():
        first = asyncio.create_task(batcher.recommend(user, 5, "torchserve", Filters(), True))
        await asyncio.to_thread(slow.reading.wait, 10)
        joined = asyncio.create_task(batcher.recommend(user, 5, "torchserve", Filters(), True))
        await asyncio.sleep(0.05)  # `joined` now waits for `first`
        first.cancel()  # e.g. the server shuts that request down
        slow.release.set()
        return await asyncio.wait_for(joined, 10), first

    try:
        answer, first = asyncio.run(scenario())
    finally:
        batcher.close()
    assert first.cancelled()
    assert answer["user_id"] == user and len(answer["items"]) == 5 and not answer["cached"]
