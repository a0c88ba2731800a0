"""kvcache.memoize: caching, policies, single flight under threads, coroutines, methods."""

import asyncio
import functools
import gc
import inspect
import threading
import time
import weakref

import pytest

import kvcache
from kvcache import memoize


def wait_until(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.001)


def run_threads(n, target):
    threads = [threading.Thread(target=target) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def join_all(threads, timeout=10):
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a thread is stuck"


# -- basics -------------------------------------------------------------------------------------


def test_caches_and_reports():
    calls = []

    @memoize(maxsize=2)
    def f(x, y=0):
        """doc"""
        calls.append((x, y))
        return x + y

    assert f(1) == 1 and f(1) == 1 and f(2, y=3) == 5
    assert calls == [(1, 0), (2, 3)]
    assert f.cache_info() == (1, 2, 2, 2)
    assert type(f.cache_info()) is functools._CacheInfo
    s = f.stats()
    assert (s.hits, s.misses, s.currsize, s.maxsize) == (1, 2, 2, 2)
    f(3)  # evicts the least recently used
    assert f.stats().evictions == 1
    assert f.cache_parameters() == {"maxsize": 2, "policy": "lru", "typed": False, "single_flight": True}
    assert (f.__name__, f.__doc__, f.__wrapped__.__name__) == ("f", "doc", "f")
    f.cache_clear()
    assert f.cache_info() == (0, 0, 2, 0)


def test_bare_decorator_and_unbounded():
    @memoize
    def f(x):
        return [x]

    assert f(1) is f(1)
    assert f.cache_info() == (1, 1, 128, 1)

    @memoize(None)
    def g(x):
        return x

    for i in range(1000):
        g(i)
    assert g.cache_info() == (0, 1000, None, 1000)


def test_maxsize_zero_never_caches():
    calls = []

    @memoize(0)
    def f(x):
        calls.append(x)
        return x

    assert f(1) == 1 and f(1) == 1
    assert calls == [1, 1]
    assert f.cache_info() == (0, 2, 0, 0)


def test_cache_invalidate():
    calls = []

    @memoize()
    def f(x, *, k=0):
        calls.append(x)
        return x

    f(1), f(2), f(2, k=1)
    assert f.cache_invalidate(2) is True
    assert f.cache_invalidate(2) is False
    assert f.cache_info().currsize == 2
    f(2), f(1), f(2, k=1)
    assert calls == [1, 2, 2, 2]
    assert f.cache_invalidate(2, k=1) is True


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr"])
def test_policies_bound_the_cache(policy):
    @memoize(maxsize=8, policy=policy)
    def f(x):
        return x * 2

    for i in range(100):
        assert f(i % 20) == (i % 20) * 2
    info = f.cache_info()
    assert info.currsize == 8 and info.hits + info.misses == 100
    assert f.cache_parameters()["policy"] == policy


def test_policy_orders():
    def run(policy):
        calls = []
        f = memoize(maxsize=2, policy=policy)(lambda x: calls.append(x) or x)
        for x in [1, 2, 1, 3, 1, 2]:
            f(x)
        return calls

    assert run("lru") == [1, 2, 3, 2]    # 3 evicts 2, 2 evicts 1? no: 1 was used, so 2 goes
    assert run("fifo") == [1, 2, 3, 1, 2]  # 3 evicts 1 (first in), 1 evicts 2, 2 evicts 3
    assert run("lfu") == [1, 2, 3, 2]


def test_typed_and_custom_key():
    f = memoize(typed=True)(lambda x: type(x).__name__)
    assert f(1) == "int" and f(1.0) == "float"
    g = memoize(key=lambda x, y: x)(lambda x, y: y)
    assert g(1, "a") == "a" and g(1, "b") == "a"
    assert g.cache_invalidate(1, "zzz") is True


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown policy"):
        memoize(policy="mru")
    with pytest.raises(ValueError):
        memoize(-1)
    with pytest.raises(TypeError):
        memoize("10")
    with pytest.raises(TypeError):
        memoize(key=5)
    with pytest.raises(TypeError):
        memoize()(42)
    f = memoize()(lambda x: x)
    with pytest.raises(TypeError):
        f([])  # unhashable argument: TypeError, nothing cached
    assert f.cache_info() == (0, 0, 128, 0)


def test_exception_not_cached_nor_chained():
    calls = []

    @memoize()
    def f(i):
        calls.append(i)
        return "abc"[i]

    with pytest.raises(IndexError) as info:
        f(10)
    assert info.value.__context__ is None
    with pytest.raises(IndexError):
        f(10)
    assert calls == [10, 10]
    assert f.cache_info().currsize == 0


def test_keyword_order_and_positional_keys():
    f = memoize()(lambda **kw: object())
    assert f(a=1, b=2) is not f(b=2, a=1)  # as functools: keyword order is significant
    g = memoize()(lambda x=0: object())
    assert g(1) is not g(x=1)


# -- single flight under threads -----------------------------------------------------------------


def test_every_call_protocol_gives_the_same_keys():
    # the wrapper takes vectorcall (f(x) builds no tuple) as well as tp_call
    calls = []

    @memoize(maxsize=10)
    def f(*a, **k):
        calls.append((a, k))
        return object()

    one = f(1)
    assert f(*[1]) is one and f(1, **{}) is one and functools.partial(f)(1) is one
    assert type(f).__call__(f, 1) is one and f("1") is not one
    pair = f("a", "b")
    assert f(*("a", "b")) is pair and functools.partial(f, "a")("b") is pair
    kw = f(1, x=2)
    assert f(1, **{"x": 2}) is kw and functools.partial(f, x=2)(1) is kw
    assert f(x=1) is not f(1)
    assert len(calls) == 5 and f.cache_info()[:2] == (9, 5)
    typed = memoize(typed=True)(lambda x: object())
    assert typed(1) is typed(1) is not typed(1.0)
    keyed = memoize(key=lambda x: x % 2)(lambda x: x)
    assert keyed(1) == 1 and keyed(3) == 1 and keyed(2) == 2


def test_stampede_runs_once_and_shares_the_object():
    n = 8
    calls = []
    release = threading.Event()

    @memoize()
    def f(x):
        calls.append(x)
        release.wait(10)
        return object()

    results = []
    threads = run_threads(n, lambda: results.append(f(1)))
    wait_until(lambda: calls)
    # everyone has been counted, so is computing or waiting
    wait_until(lambda: f.cache_info().hits + f.cache_info().misses == n)
    release.set()
    join_all(threads)
    assert calls == [1]
    assert len(results) == n and all(r is results[0] for r in results)
    assert f(1) is results[0]


def test_stampede_exception_reaches_every_waiter_and_is_not_cached():
    n = 6
    calls = []
    release = threading.Event()

    @memoize()
    def f(x):
        calls.append(x)
        release.wait(10)
        raise ValueError("boom")

    errors = []

    def worker():
        try:
            f(1)
        except ValueError as exc:
            errors.append(exc)

    threads = run_threads(n, worker)
    wait_until(lambda: f.cache_info().hits + f.cache_info().misses == n)
    release.set()
    join_all(threads)
    assert len(calls) == 1
    assert len(errors) == n
    assert f.cache_info().currsize == 0
    with pytest.raises(ValueError):
        f(1)  # not cached: the next call computes again
    assert len(calls) == 2


def test_other_keys_are_not_blocked():
    release = threading.Event()
    started = threading.Event()

    @memoize()
    def f(x):
        if x == "slow":
            started.set()
            release.wait(10)
        return x

    slow = run_threads(1, lambda: f("slow"))
    started.wait(5)
    # a different key completes while "slow" is still being computed
    assert f("fast") == "fast"
    assert not release.is_set()
    release.set()
    join_all(slow)


def test_recursive_same_key_computes_directly():
    depth = []

    @memoize()
    def f(x):
        depth.append(x)
        if len(depth) < 3:
            return f(x)  # same key, same thread: no deadlock
        return "done"

    assert f(1) == "done"
    assert depth == [1, 1, 1]


def test_cross_thread_cycle_does_not_deadlock():
    # thread A computes "a" and needs "b"; thread B computes "b" and needs "a".  Waiting
    # would never end, so the second one to ask computes directly.
    barrier = threading.Barrier(2)
    local = threading.local()

    @memoize()
    def f(k):
        if getattr(local, "outer", True):
            local.outer = False
            barrier.wait(5)
            return ("x", f("b" if k == "a" else "a"))
        return k

    results = {}
    ta = threading.Thread(target=lambda: results.__setitem__("a", f("a")))
    tb = threading.Thread(target=lambda: results.__setitem__("b", f("b")))
    ta.start()
    tb.start()
    join_all([ta, tb], timeout=10)
    assert set(results) == {"a", "b"}
    assert results["a"][0] == "x" and results["b"][0] == "x"


def test_single_flight_off_calls_each_time():
    n = 5
    barrier = threading.Barrier(n)
    calls = []

    @memoize(single_flight=False)
    def f(x):
        calls.append(x)
        barrier.wait(10)
        return x

    threads = run_threads(n, lambda: f(1))
    join_all(threads)
    assert len(calls) == n
    assert f.cache_info().currsize == 1


def test_threads_hammering_mixed_keys():
    @memoize(maxsize=16)
    def f(x):
        return x * 3

    errors = []

    def worker(seed):
        for i in range(2000):
            k = (i * seed) % 40
            if f(k) != k * 3:
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(s,)) for s in (1, 3, 7, 11)]
    for t in threads:
        t.start()
    join_all(threads, timeout=60)
    assert not errors
    info = f.cache_info()
    assert info.hits + info.misses == 8000 and info.currsize <= 16
    f.cache._check()


# -- coroutines -----------------------------------------------------------------------------------


def test_async_caches_the_result_not_the_coroutine():
    calls = []

    @memoize()
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0)
        return [x]

    assert inspect.iscoroutinefunction(f)
    assert asyncio.iscoroutinefunction(f)

    async def main():
        a = await f(1)
        b = await f(1)
        return a, b

    a, b = asyncio.run(main())
    assert a == [1] and a is b
    assert calls == [1]
    assert f.cache_info() == (1, 1, 128, 1)
    # the cached result serves another event loop too
    assert asyncio.run(main())[0] is a


def test_async_concurrent_awaiters_share_one_call():
    calls = []

    @memoize()
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return object()

    async def main():
        return await asyncio.gather(*[f(1) for _ in range(10)], f(2))

    results = asyncio.run(main())
    assert sorted(calls) == [1, 2]
    assert all(r is results[0] for r in results[:10])
    assert results[10] is not results[0]
    assert not f._tasks  # finished tasks are not retained


def test_async_cancelling_one_awaiter_spares_the_others():
    calls = []
    gate = None

    @memoize()
    async def f(x):
        calls.append(x)
        await gate.wait()
        return "value"

    async def main():
        nonlocal gate
        gate = asyncio.Event()
        t1 = asyncio.ensure_future(f(1))
        t2 = asyncio.ensure_future(f(1))
        await asyncio.sleep(0.01)
        t1.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await t1
        return await t2

    assert asyncio.run(main()) == "value"
    assert calls == [1]
    assert f.cache_info().currsize == 1


def test_async_cancelling_every_awaiter_still_completes_and_caches():
    calls = []

    @memoize()
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return "done"

    async def main():
        t = asyncio.ensure_future(f(1))
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.05)
        return await f(1)

    assert asyncio.run(main()) == "done"
    assert calls == [1]


def test_async_exception_reaches_all_and_is_not_cached():
    calls = []

    @memoize()
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        raise KeyError("nope")

    async def main():
        return await asyncio.gather(*[f(1) for _ in range(5)], return_exceptions=True)

    results = asyncio.run(main())
    assert len(calls) == 1
    assert all(isinstance(r, KeyError) for r in results)
    assert f.cache_info().currsize == 0
    asyncio.run(main())
    assert len(calls) == 2
    assert not f._tasks


def test_async_recursive_same_key_does_not_deadlock():
    depth = []

    @memoize()
    async def f(x):
        depth.append(x)
        if len(depth) < 3:
            return await f(x)
        return "done"

    assert asyncio.run(asyncio.wait_for(f(1), 5)) == "done"


def test_async_single_flight_off():
    calls = []

    @memoize(single_flight=False)
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return x

    async def main():
        return await asyncio.gather(*[f(1) for _ in range(4)])

    assert asyncio.run(main()) == [1, 1, 1, 1]
    assert len(calls) == 4


# -- methods --------------------------------------------------------------------------------------


class Box:
    def __init__(self, base):
        self.base = base
        self.calls = 0

    @memoize(maxsize=4)
    def add(self, x):
        """Add x to the base."""
        self.calls += 1
        return self.base + x

    @memoize()
    async def aadd(self, x):
        self.calls += 1
        await asyncio.sleep(0)
        return self.base + x


def test_method_per_instance_cache():
    a, b = Box(10), Box(20)
    assert a.add(1) == 11 and a.add(1) == 11 and b.add(1) == 21
    assert (a.calls, b.calls) == (1, 1)
    assert a.add.cache_info() == (1, 1, 4, 1)
    assert b.add.cache_info() == (0, 1, 4, 1)
    assert Box.add.cache_info() == (1, 2, 4, 2)  # summed over live instances
    assert Box.add(a, 1) == 11 and a.calls == 1  # class access shares the instance's cache
    assert a.add.__doc__ == "Add x to the base."
    assert a.add.__name__ == "add"
    assert a.add.cache_invalidate(1) is True
    a.add(1)
    assert a.calls == 2
    Box.add.cache_clear()
    assert Box.add.cache_info() == (0, 0, 4, 0)


def test_method_does_not_keep_instances_alive():
    box = Box(1)
    for i in range(10):
        box.add(i)
        box.add(i)
    asyncio.run(box.aadd(5))
    ref = weakref.ref(box)
    gc.disable()
    try:
        del box
        assert ref() is None  # freed by reference counting alone: no cycle, no cache entry
    finally:
        gc.enable()
    assert Box.add.cache_info().currsize == 0


def test_bound_method_survives_its_instance_reference():
    f = Box(5).add  # the bound object keeps its instance, like a bound method
    assert f(1) == 6 and f(1) == 6
    assert f.cache_info() == (1, 1, 4, 1)


def test_async_method():
    a = Box(100)

    async def main():
        return await asyncio.gather(a.aadd(1), a.aadd(1), a.aadd(2))

    assert asyncio.run(main()) == [101, 101, 102]
    assert a.calls == 2


def test_method_needs_instance_dict():
    class Slotted:
        __slots__ = ()

        @memoize()
        def f(self):
            return 1

    with pytest.raises(TypeError, match="__dict__"):
        Slotted().f()


def test_hit_path_is_compiled():
    # the wrapper's type keeps the compiled tp_call of kvcache._memo.MemoBase
    f = memoize()(lambda x: x)
    assert isinstance(f, kvcache._memo.MemoBase)
    assert "__call__" not in type(f).__dict__


# -- single flight: the placeholder protocol's edges ----------------------------------------------


@pytest.mark.parametrize("maxsize", [0, 1, 128, None])
def test_stampede_runs_once_for_every_size(maxsize):
    n = 5
    calls = []
    release = threading.Event()

    @memoize(maxsize)
    def f(x):
        calls.append(x)
        release.wait(10)
        return object()

    results = []
    threads = run_threads(n, lambda: results.append(f(1)))
    wait_until(lambda: f.cache_info().hits + f.cache_info().misses == n)
    release.set()
    join_all(threads)
    assert calls == [1]
    assert all(r is results[0] for r in results)
    assert f.cache_info().currsize == (0 if maxsize == 0 else 1)


def test_other_keys_stored_while_computing_do_not_lose_the_result():
    # maxsize 1: another key is stored while "slow" computes; "slow" is stored when it is done
    release = threading.Event()
    started = threading.Event()
    calls = []

    @memoize(1)
    def f(x):
        calls.append(x)
        if x == "slow":
            started.set()
            release.wait(10)
        return [x]

    results = []
    slow = run_threads(1, lambda: results.append(f("slow")))
    started.wait(5)
    assert f("other") == ["other"]
    assert list(f.cache.keys()) == ["other"]
    release.set()
    join_all(slow)
    assert results == [["slow"]]
    assert list(f.cache.keys()) == ["slow"]  # the newest result, as any LRU insertion
    assert f("slow") == ["slow"] and calls.count("slow") == 1
    f.cache._check()


@pytest.mark.parametrize("action", ["invalidate", "clear"])
def test_invalidated_while_computing(action):
    release = threading.Event()
    started = threading.Event()

    @memoize()
    def f(x):
        started.set()
        release.wait(10)
        return x

    results = []
    t = run_threads(1, lambda: results.append(f(1)))
    started.wait(5)
    if action == "invalidate":
        assert f.cache_invalidate(1) is False  # nothing cached yet: the computation runs on
    else:
        f.cache_clear()
    release.set()
    join_all(t)
    assert results == [1]
    assert f.cache_info().currsize == 0  # not stored: it was invalidated meanwhile


def test_waiters_of_a_failing_leader_with_maxsize_zero():
    release = threading.Event()
    calls = []

    @memoize(0)
    def f(x):
        calls.append(x)
        release.wait(10)
        raise RuntimeError("x")

    errors = []

    def worker():
        try:
            f(1)
        except RuntimeError as exc:
            errors.append(exc)

    threads = run_threads(4, worker)
    wait_until(lambda: f.cache_info().hits + f.cache_info().misses == 4)
    release.set()
    join_all(threads)
    assert len(calls) == 1 and len(errors) == 4


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr"])
def test_threads_with_evictions_and_a_tiny_switch_interval(policy):
    # placeholders get evicted, replaced and invalidated while other threads wait on them
    import random
    import sys

    @memoize(maxsize=4, policy=policy)
    def f(x):
        if x % 5 == 0:
            time.sleep(0)  # let other threads in mid-computation
        if x % 11 == 0:
            raise ValueError(x)
        return x * 7

    errors = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(1500):
            x = rng.randint(0, 30)
            try:
                if f(x) != x * 7:
                    errors.append(("wrong", x))
            except ValueError as exc:
                if x % 11 or exc.args != (x,):
                    errors.append(("raised", x))
            if rng.random() < 0.01:
                f.cache_invalidate(rng.randint(0, 30))
            if rng.random() < 0.002:
                f.cache_clear()

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        join_all(threads, timeout=120)
    finally:
        sys.setswitchinterval(old)
    assert not errors
    f.cache._check()
    assert len(f.cache) <= 4


# -- a computation in progress is invisible through the cache -------------------------------------


def _start_blocked_call(f, key, started, n_waiters=0):
    """Run f(key) in a thread that blocks in the function; return (threads, results)."""
    results = []
    calls_before = sum(f.cache_info()[:2])
    threads = run_threads(1, lambda: results.append(f(key)))
    started.wait(5)
    if n_waiters:
        threads += run_threads(n_waiters, lambda: results.append(f(key)))
        # every waiter has been counted, so it has found the computation and waits for it
        wait_until(lambda: sum(f.cache_info()[:2]) == calls_before + 1 + n_waiters)
    return threads, results


@pytest.mark.parametrize("maxsize", [1, 2, 128, None])
@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr", "tinylfu"])
def test_in_flight_key_is_invisible_through_every_cache_method(maxsize, policy, tmp_path):
    import copy
    import pickle

    release = threading.Event()
    started = threading.Event()

    @memoize(maxsize, policy=policy)
    def f(x):
        if x == "busy":
            started.set()
            release.wait(10)
        return x.upper()

    cache = f.cache
    if maxsize != 1:
        assert f("done") == "DONE"
    expect = [] if maxsize == 1 else [("done", "DONE")]
    threads, results = _start_blocked_call(f, "busy", started, n_waiters=2)
    try:
        assert len(cache) == len(expect)
        assert list(cache.items()) == expect
        assert list(cache.keys()) == [k for k, _ in expect]
        assert list(cache) == [k for k, _ in expect]
        assert list(reversed(cache)) == [k for k, _ in expect][::-1]
        assert list(cache.values()) == [v for _, v in expect]
        assert "busy" not in cache
        assert cache.get("busy") is None and cache.get("busy", 7) == 7
        assert cache.peek("busy", 7) == 7
        with pytest.raises(KeyError):
            cache["busy"]
        assert cache.get_many(["busy", "done"]) == [None, "DONE" if expect else None]
        assert cache.stats().currsize == len(expect)
        assert f.cache_info().currsize == len(expect) and f.stats().currsize == len(expect)
        assert list(copy.copy(cache).items()) == expect
        assert list(pickle.loads(pickle.dumps(cache)).items()) == expect
        assert dict(cache) == dict(expect) and cache == dict(expect)
        cache.save(tmp_path / "snap")
        loaded = type(cache).load(tmp_path / "snap", maxsize=maxsize or 1000)
        assert list(loaded.items()) == expect
        # removals neither hand out nor remove the computation
        with pytest.raises(KeyError):
            cache.pop("busy")
        assert cache.pop("busy", 7) == 7
        with pytest.raises(KeyError):
            del cache["busy"]
        if expect:
            assert cache.popitem() == expect[0]
        with pytest.raises(KeyError):
            cache.popitem()
        cache._check()
    finally:
        release.set()
        join_all(threads)
    assert results == ["BUSY"] * 3
    assert f("busy") == "BUSY"
    assert f.cache_info().misses == (2 if expect else 1)   # "busy" ran once, and "done"
    cache._check()


def test_clearing_the_cache_during_a_computation_spares_its_waiters():
    release = threading.Event()
    started = threading.Event()
    calls = []

    @memoize()
    def f(x):
        calls.append(x)
        started.set()
        release.wait(10)
        return [x]

    threads, results = _start_blocked_call(f, 1, started, n_waiters=3)
    f.cache.clear()
    assert list(f.cache.items()) == []
    release.set()
    join_all(threads)
    assert results == [[1]] * 4 and all(r is results[0] for r in results)
    assert calls == [1]
    f.cache._check()


# -- hit and miss counts: a caller that shares another's computation is a hit ----------------------


@pytest.mark.parametrize("maxsize", [0, 128, None])
def test_threads_waiting_for_a_computation_count_as_hits(maxsize):
    n = 5
    release = threading.Event()
    started = threading.Event()
    calls = []

    @memoize(maxsize)
    def f(x):
        calls.append(x)
        started.set()
        release.wait(10)
        return x

    threads, results = _start_blocked_call(f, 1, started, n_waiters=n - 1)
    release.set()
    join_all(threads)
    assert results == [1] * n and calls == [1]
    info = f.cache_info()
    assert (info.hits, info.misses) == (n - 1, 1)   # misses: the times the function ran


@pytest.mark.parametrize("maxsize", [0, 128, None])
def test_async_awaiters_of_one_computation_count_as_hits(maxsize):
    n = 5
    calls = []

    @memoize(maxsize)
    async def f(x):
        calls.append(x)
        await asyncio.sleep(0.01)
        return x

    async def main():
        return await asyncio.gather(*[f(1) for _ in range(n)])

    assert asyncio.run(main()) == [1] * n and calls == [1]
    info = f.cache_info()
    assert (info.hits, info.misses) == (n - 1, 1)   # the same counts as threads


def test_waiters_of_a_failing_computation_count_as_hits():
    release = threading.Event()
    started = threading.Event()

    @memoize()
    def f(x):
        started.set()
        release.wait(10)
        raise KeyError(x)

    errors = []

    def call():
        try:
            f(1)
        except KeyError as exc:
            errors.append(exc)

    threads = run_threads(1, call)
    started.wait(5)
    threads += run_threads(3, call)
    wait_until(lambda: f.cache_info().hits == 3)
    release.set()
    join_all(threads)
    assert len(errors) == 4 and all(e is errors[0] for e in errors)
    assert f.cache_info()[:2] == (3, 1)


def test_a_call_after_invalidation_computes_afresh():
    # the computation that was running when the key was invalidated may have read stale data:
    # a call made afterwards does not join it, and only the fresh result is stored
    release_first = threading.Event()
    started = threading.Event()
    version = ["old"]

    @memoize()
    def f(x):
        seen = version[0]
        if seen == "old":
            started.set()
            release_first.wait(10)
        return seen

    threads, results = _start_blocked_call(f, 1, started)
    version[0] = "new"
    assert f.cache_invalidate(1) is False
    assert f(1) == "new"             # not the stale computation's result
    release_first.set()
    join_all(threads)
    assert results == ["old"]        # its own caller still gets it
    assert f(1) == "new" and list(f.cache.items()) == [(1, "new")]
    f.cache._check()


@pytest.mark.parametrize("action", ["invalidate", "clear"])
def test_async_invalidated_while_computing(action):
    calls = []
    gates = []

    @memoize()
    async def f(x):
        calls.append(x)
        n = len(calls)                           # which computation this is
        await gates[n - 1].wait()
        return n

    async def main():
        gates.extend([asyncio.Event(), asyncio.Event()])
        first = asyncio.ensure_future(f(1))
        await asyncio.sleep(0.01)
        if action == "invalidate":
            assert f.cache_invalidate(1) is False
        else:
            f.cache_clear()
        second = asyncio.ensure_future(f(1))     # does not join the invalidated computation
        await asyncio.sleep(0.01)
        gates[1].set()
        b = await second
        gates[0].set()
        return await first, b

    assert asyncio.run(main()) == (1, 2)
    assert calls == [1, 1]
    # the stale computation ended after the fresh one, and was not stored over it
    assert list(f.cache.items()) == [(1, 2)]


def test_async_ttl_expires():
    calls = []
    now = [0.0]

    @memoize(ttl=10)
    async def f(x):
        calls.append(x)
        return x

    f.cache.timer = lambda: now[0]
    assert asyncio.run(f(1)) == 1 and asyncio.run(f(1)) == 1 and calls == [1]
    now[0] = 11.0
    assert asyncio.run(f(1)) == 1 and calls == [1, 1]   # expired: computed again
    assert f.cache_info()[:2] == (1, 2)


def test_key_hash_calling_back_under_the_memo_lock_raises():
    # a key's __hash__ runs under the memo's lock when the key joins `pending`; calling the
    # memoized function from there would wait for that lock forever: it raises instead
    hashes = []

    class Key:
        def __hash__(self):
            hashes.append(1)
            if len(hashes) == 2:
                f("other")
            return 1

        def __eq__(self, other):
            return self is other

    @memoize()
    def f(x):
        return x

    with pytest.raises(RuntimeError, match="__hash__ or __eq__"):
        f(Key())
    assert f("other") == "other" and f(2) == 2       # the memo still works
    f.cache._check()
