"""Memoizing decorators: hit path and Zipf memoization, kvcache against the peer decorators.

Run:  pytest bench/bench_decorators.py --benchmark-group-by=group
Goals (ratios within one run): kvcache.lru_cache hit path <= 1.0x functools.lru_cache (C)
on a one-int and a two-str function, faster than cachetools.cached(LRUCache) and
cachebox.cached; kvcache.memoize hit path <= 1.3x functools; Zipf memoization (1M key
space, maxsize 10k) faster than every peer decorator.
Under --benchmark-disable each case runs once and checks its results (a smoke test).
"""

import functools

import numpy as np
import pytest

import kvcache

HIT_CALLS = 2000          # calls per timed round, so the harness' own cost is amortised
ZIPF_KEYS = 1_000_000     # key space
ZIPF_MAXSIZE = 10_000
ZIPF_CALLS = 200_000
ZIPF_EXPONENT = 1.0


def _peers():
    """Return {name: make(maxsize) -> decorator} for every importable implementation."""
    impls = {
        "functools.lru_cache": lambda n: functools.lru_cache(maxsize=n),
        "kvcache.lru_cache": lambda n: kvcache.lru_cache(maxsize=n),
        "kvcache.memoize": lambda n: kvcache.memoize(n),
        "kvcache.cached": lambda n: kvcache.cached(kvcache.LRUCache(n)),
    }
    try:
        import cachetools
        import cachetools.func

        impls["cachetools.cached"] = lambda n: cachetools.cached(cachetools.LRUCache(n))
        impls["cachetools.func.lru_cache"] = lambda n: cachetools.func.lru_cache(maxsize=n)
    except ImportError:
        pass
    try:
        import cachebox

        impls["cachebox.cached"] = lambda n: cachebox.cached(cachebox.LRUCache(n))
    except ImportError:
        pass
    try:
        import moka_py

        impls["moka_py.cached"] = lambda n: moka_py.cached(maxsize=n)
    except ImportError:
        pass
    try:
        import theine

        impls["theine.Memoize"] = lambda n: theine.Memoize(n, None)
    except ImportError:
        pass
    return impls


IMPLS = _peers()


def one_int(x):
    return x + 1


def two_str(a, b):
    return a


@pytest.mark.parametrize("impl", list(IMPLS))
def test_hit_one_int(benchmark, impl):
    benchmark.group = "hit path: f(int)"
    f = IMPLS[impl](128)(one_int)
    assert f(5) == 6

    def run():
        for _ in range(HIT_CALLS):
            f(5)

    benchmark(run)
    assert f(5) == 6


@pytest.mark.parametrize("impl", list(IMPLS))
def test_hit_two_str(benchmark, impl):
    benchmark.group = "hit path: f(str, str)"
    f = IMPLS[impl](128)(two_str)
    assert f("alpha", "beta") == "alpha"

    def run():
        for _ in range(HIT_CALLS):
            f("alpha", "beta")

    benchmark(run)
    assert f("alpha", "beta") == "alpha"


@pytest.fixture(scope="module")
def zipf_keys():
    rng = np.random.default_rng(12345)
    ranks = np.arange(1, ZIPF_KEYS + 1, dtype=np.float64)
    p = ranks ** -ZIPF_EXPONENT
    p /= p.sum()
    # shuffle which key gets which rank, so that key order says nothing about popularity
    perm = rng.permutation(ZIPF_KEYS)
    return perm[rng.choice(ZIPF_KEYS, size=ZIPF_CALLS, p=p)].tolist()


def _expected_misses(keys, maxsize):
    """Misses of an exact LRU of `maxsize` over `keys` (a reference for the LRU-based peers)."""
    from collections import OrderedDict

    od, misses = OrderedDict(), 0
    for k in keys:
        if k in od:
            od.move_to_end(k)
        else:
            misses += 1
            od[k] = None
            if len(od) > maxsize:
                od.popitem(last=False)
    return misses


@pytest.mark.parametrize("impl", list(IMPLS))
def test_zipf_memoization(benchmark, impl, zipf_keys):
    benchmark.group = "zipf memoization: 1M keys, maxsize 10k"
    calls = []

    def compute(x):
        calls.append(x)
        return x * 2

    holder = {}

    def setup():
        calls.clear()
        holder["f"] = IMPLS[impl](ZIPF_MAXSIZE)(compute)

    def run():
        f = holder["f"]
        for k in zipf_keys:
            f(k)

    benchmark.pedantic(run, setup=setup, rounds=3, iterations=1)
    misses = len(calls)
    assert holder["f"](zipf_keys[0]) == zipf_keys[0] * 2
    benchmark.extra_info["hit_ratio"] = 1 - misses / len(zipf_keys)
    if impl in ("functools.lru_cache", "kvcache.lru_cache", "kvcache.memoize", "kvcache.cached",
                "cachetools.cached", "cachetools.func.lru_cache"):
        # exact LRUs must all agree with the reference model
        assert misses == _expected_misses(zipf_keys, ZIPF_MAXSIZE)
