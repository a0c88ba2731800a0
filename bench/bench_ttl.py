"""Expiry benchmarks: TTLCache against cachetools and cachebox, and the cost of expiring.

    pytest bench/bench_ttl.py --benchmark-group-by=group --benchmark-columns=min,median,mean

Goals (ratios within one run): kvcache.TTLCache get-hit and set-with-eviction faster than
cachetools.TTLCache and cachebox.TTLCache; its get-hit at most 1.3x kvcache.LRUCache's.
The sweep: 1e5 and 1e6 entries with random per-entry TTLs, time moved in steps until a
fraction of them is due; the cost per expired entry stays flat (linear total cost).
Under --benchmark-disable every workload runs once as a smoke test.
"""
import random

import pytest

import kvcache

cachetools = pytest.importorskip("cachetools")
try:
    import cachebox
except ImportError:                      # an optional peer: its rows are skipped
    cachebox = None

N = 10_000
TTL = 600


def _ttl_impls():
    impls = {
        "kvcache.TTLCache": lambda n: kvcache.TTLCache(n, TTL),
        "kvcache.LRUCache": lambda n: kvcache.LRUCache(n),
        "cachetools.TTLCache": lambda n: cachetools.TTLCache(n, TTL),
    }
    if cachebox is not None:
        impls["cachebox.TTLCache"] = lambda n: cachebox.TTLCache(n, TTL)
    return impls


IMPLS = _ttl_impls()


@pytest.mark.parametrize("impl", list(IMPLS))
def test_ttl_get_hit(benchmark, impl):
    benchmark.group = "ttl get-hit (10k lookups)"
    cache = IMPLS[impl](N)
    keys = list(range(N))
    for k in keys:
        cache[k] = k
    get = cache.__getitem__

    def run():
        for k in keys:
            get(k)

    benchmark(run)
    assert len(cache) == N


@pytest.mark.parametrize("impl", list(IMPLS))
def test_ttl_set_with_eviction(benchmark, impl):
    benchmark.group = "ttl set-with-eviction (10k new keys into 1k)"
    cache = IMPLS[impl](1000)
    setitem = cache.__setitem__
    base = [0]

    def run():
        start = base[0]
        base[0] += N
        for k in range(start, start + N):
            setitem(k, k)

    benchmark(run)
    assert len(cache) == 1000


class Clock:
    def __init__(self):
        self.time = 0.0

    def __call__(self):
        return self.time


@pytest.mark.parametrize("fraction", [0.25, 1.0])
@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_expiry_sweep(benchmark, n, fraction):
    """Entries with random TTLs in [0, 1000); time moves in 100 steps until `fraction` is due."""
    benchmark.group = "expiry sweep (random per-entry TTLs)"
    rnd = random.Random(n)
    ttls = [rnd.uniform(0, 1000) for _ in range(n)]
    steps = 100
    dt = 1000 * fraction / steps
    expired = []

    def setup():
        clock = Clock()
        cache = kvcache.LRUCache(n, capacity=n)
        cache.timer = clock
        for i, ttl in enumerate(ttls):
            cache.set(i, i, ttl=ttl)
        return (cache, clock), {}

    def sweep(cache, clock):
        count = 0
        for _ in range(steps):
            clock.time += dt
            count += len(cache.expire())
        expired.append((count, clock.time))

    benchmark.pedantic(sweep, setup=setup, rounds=3 if n <= 100_000 else 1, iterations=1)
    count, end = expired[-1]
    due = sum(1 for t in ttls if t <= end)
    assert count == due
    benchmark.extra_info.update(entries=n, expired=due)


@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_expiry_sweep_baseline_pop(benchmark, n):
    """The floor to compare with: pop the same entries one by one, in the order they expire."""
    benchmark.group = "expiry sweep (random per-entry TTLs)"
    rnd = random.Random(n)
    ttls = [rnd.uniform(0, 1000) for _ in range(n)]
    order = sorted(range(n), key=ttls.__getitem__)

    def setup():
        cache = kvcache.LRUCache(n, capacity=n)
        for i in range(n):
            cache[i] = i
        return (cache,), {}

    def pop_all(cache):
        pop = cache.pop
        for k in order:
            pop(k)
        assert len(cache) == 0

    benchmark.pedantic(pop_all, setup=setup, rounds=3 if n <= 100_000 else 1, iterations=1)
    benchmark.extra_info.update(entries=n, expired=n)
