"""The decorators under threads on caches that grow: 4 threads, many distinct keys, and a
switch interval of a microsecond, so that threads interleave inside lookups, insertions and
the table's growth.  Every call must return what the function computes, the table must stay
consistent (`_check()`), and the counts must add up (hits + misses == calls)."""

import itertools
import math
import random
import sys
import threading

import pytest

import kvcache
from kvcache import cache as functools_cache
from kvcache import cached, cachedmethod, lru_cache, memoize

N_THREADS = 4
N_KEYS = 3000         # grows the table from 64 entries to 4096: six rebuilds
ROUNDS = 2            # each thread calls every key twice (in its own order): misses, then hits


def value_of(x):
    return ("v", x)


class SlowEqKey:
    """A key whose __eq__ is Python code that lets other threads in, in the middle of a probe."""

    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n

    def __hash__(self):
        return self.n % 97          # few distinct hashes: long probe sequences, many __eq__ calls

    def __eq__(self, other):
        if not isinstance(other, SlowEqKey):
            return NotImplemented
        if self.n % 7 == 0:
            sys._getframe()         # some Python work: a switch point under a tiny interval
        return self.n == other.n

    def __repr__(self):
        return f"SlowEqKey({self.n})"


def hammer(call, keys, n_threads=N_THREADS, rounds=ROUNDS):
    """Call `call(k)` for every key `rounds` times in each thread; return (calls, errors)."""
    errors = []
    done = itertools.count()

    def worker(seed):
        order = list(keys)
        rng = random.Random(seed)
        try:
            for _ in range(rounds):
                rng.shuffle(order)
                for k in order:
                    got = call(k)
                    if got != value_of(k):
                        errors.append((k, got))
                    next(done)
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(("raised", repr(exc)))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stuck = [t for t in threads if t.is_alive()]
    finally:
        sys.setswitchinterval(old)
    assert not stuck, "a thread is stuck"
    return next(done), errors


def int_keys():
    return list(range(N_KEYS))


def mixed_keys():
    # exact ints and strs (compared without Python code), tuples, and keys with a Python __eq__
    keys = []
    for i in range(N_KEYS):
        kind = i % 4
        keys.append(i if kind == 0 else str(i) if kind == 1 else (i, "t") if kind == 2
                    else SlowEqKey(i))
    return keys


KEY_SETS = {"ints": int_keys, "mixed": mixed_keys}


@pytest.fixture(params=sorted(KEY_SETS))
def keys(request):
    return KEY_SETS[request.param]()


def counted(fn):
    """Wrap fn so that the number of times it ran can be read: (wrapper, runs)."""
    runs = []

    def wrapper(*args, **kwargs):
        runs.append(1)
        return fn(*args, **kwargs)

    return wrapper, runs


# -- functools drop-ins ----------------------------------------------------------------------------


@pytest.mark.parametrize("make", [lambda f: lru_cache(maxsize=None)(f),
                                  lambda f: lru_cache(maxsize=1 << 20)(f),
                                  lambda f: functools_cache(f)],
                         ids=["lru_cache(None)", "lru_cache(large)", "cache"])
def test_lru_cache_on_a_growing_table(make, keys):
    fn, runs = counted(value_of)
    f = make(fn)
    calls, errors = hammer(f, keys)
    assert not errors
    info = f.cache_info()
    assert info.hits + info.misses == calls
    assert info.misses == len(runs) >= len(keys)   # concurrent misses each call, as functools
    assert info.currsize == len(keys)
    f._cache._check()
    assert all(f(k) == value_of(k) for k in keys)
    assert f.cache_info().hits == info.hits + len(keys)


# -- cachetools drop-ins ---------------------------------------------------------------------------


@pytest.mark.parametrize("lock", [False, True], ids=["unlocked", "locked"])
@pytest.mark.parametrize("info", [False, True], ids=["plain", "info"])
@pytest.mark.parametrize("make_cache", [lambda: kvcache.Cache(math.inf),
                                        lambda: kvcache.LRUCache(1 << 20),
                                        lambda: kvcache.LFUCache(1 << 20)],
                         ids=["Cache", "LRUCache", "LFUCache"])
def test_cached_on_a_growing_table(make_cache, info, lock, keys):
    fn, runs = counted(value_of)
    c = make_cache()
    f = cached(c, info=info, lock=threading.Lock() if lock else None)(fn)
    calls, errors = hammer(f, keys)
    assert not errors
    assert len(c) == len(keys)
    c._check()
    if info:
        i = f.cache_info()
        assert i.hits + i.misses == calls
        assert i.misses == len(runs) >= len(keys)
        assert i.currsize == len(keys)
    assert len(runs) >= len(keys)


@pytest.mark.parametrize("info", [False, True], ids=["plain", "info"])
def test_cachedmethod_on_a_growing_table(info, keys):
    runs = []

    class Service:
        def __init__(self):
            self.cache = kvcache.Cache(math.inf)

        @cachedmethod(lambda self: self.cache, info=info)
        def get(self, x):
            runs.append(1)
            return value_of(x)

    s = Service()
    calls, errors = hammer(s.get, keys)
    assert not errors
    assert len(s.cache) == len(keys)
    s.cache._check()
    if info:
        i = s.get.cache_info()
        assert i.hits + i.misses == calls
        assert i.misses == len(runs)
    assert len(runs) >= len(keys)


# -- memoize -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("maxsize, policy",
                         [(None, "lru")] + [(1 << 20, p) for p in ("lru", "lfu", "fifo", "rr",
                                                                   "tinylfu")])
def test_memoize_on_a_growing_table(maxsize, policy, keys):
    fn, runs = counted(value_of)
    f = memoize(maxsize, policy=policy)(fn)
    calls, errors = hammer(f, keys)
    assert not errors
    info = f.cache_info()
    assert info.hits + info.misses == calls
    # single flight and nothing evicted: each key ran once, and each run is one miss
    assert len(runs) == info.misses == len(keys)
    assert info.currsize == len(f.cache) == len(keys)
    f.cache._check()


def test_memoize_method_on_a_growing_table(keys):
    runs = []

    class Service:
        @memoize(maxsize=None)
        def get(self, x):
            runs.append(1)
            return value_of(x)

    s = Service()
    calls, errors = hammer(s.get, keys)
    assert not errors
    info = s.get.cache_info()
    assert info.hits + info.misses == calls
    assert len(runs) == info.misses == len(keys)
    s.get.cache._check()


def test_memoize_ttl_on_a_growing_table(keys):
    fn, runs = counted(value_of)
    f = memoize(maxsize=None, ttl=3600)(fn)
    calls, errors = hammer(f, keys)
    assert not errors
    info = f.cache_info()
    assert info.hits + info.misses == calls
    assert len(runs) == info.misses == len(keys)
    f.cache._check()
