"""Threads on caches whose buffers grow while they work (issue 14, item 1).

A rebuild allocates numpy arrays and lists, which can run the garbage collector (and so
finalizers and other threads) and lets numpy release the GIL.  Before the allocate-then-adopt
rule these runs segfaulted, hung in a probe loop, or lost entries.  Every test here switches
threads as often as CPython allows and checks, at the end, the structure (`_check`), the
count, and that every key reads back the value its thread last wrote.
"""
import gc
import random
import sys
import threading

import pytest

import kvcache

THREADS = 2
PER_THREAD = 6000


def _ttl(maxsize):
    return kvcache.TTLCache(maxsize, ttl=10_000)


def _tlru(maxsize):
    return kvcache.TLRUCache(maxsize, lambda k, v, now: now + 10_000)


def _sized(cls):
    def make(maxsize):
        return cls(float(maxsize), getsizeof=lambda v: 0.5)
    make.__name__ = cls.__name__ + "-float-sizes"
    return make


FACTORIES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache,
             kvcache.RRCache, kvcache.TinyLFUCache, kvcache.LRU, _ttl, _tlru,
             _sized(kvcache.LRUCache), _sized(kvcache.LFUCache), _sized(kvcache.TinyLFUCache)]


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def _run(workers):
    errors = []

    def wrap(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:          # any exception in a worker is a failure
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=w) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == [], errors


@pytest.mark.parametrize("make", FACTORIES, ids=lambda f: f.__name__)
def test_inserting_threads_while_buffers_grow(make, fast_switching):
    cache = make(10 * THREADS * PER_THREAD)          # room for all: nothing is evicted

    def insert(t):
        for i in range(PER_THREAD):
            cache[(t, i)] = i
            if i % 7 == 0:
                cache[(t, i)] = -i                    # an update: the last write must win
            if i % 5 == 0:
                assert cache.get((t, i // 2)) in (i // 2, -(i // 2))

    _run([(insert, t) for t in range(THREADS)])
    cache._check()
    assert len(cache) == THREADS * PER_THREAD
    for t in range(THREADS):
        for i in range(PER_THREAD):
            assert cache[(t, i)] == (-i if i % 7 == 0 else i)


@pytest.mark.parametrize("make", FACTORIES, ids=lambda f: f.__name__)
def test_mixed_operations_while_buffers_grow(make, fast_switching):
    """Inserts, deletes, lookups, clear and resize from several threads: the structure holds."""
    cache = make(100_000)

    def work(seed):
        rnd = random.Random(seed)
        for i in range(4000):
            k = (seed, rnd.randrange(3000))
            r = rnd.random()
            if r < 0.6:
                cache[k] = i
            elif r < 0.8:
                v = cache.get(k)
                assert v is None or isinstance(v, int)
            elif r < 0.95:
                cache.pop(k, None)
            elif r < 0.997:
                try:
                    list(cache.items())
                except RuntimeError:
                    pass                      # changed size during iteration: allowed
            else:
                cache.clear()

    _run([(work, s) for s in range(3)])
    cache._check()
    assert len(cache) == len(list(cache))
    for k, v in list(cache.items()):
        assert cache.peek(k) == v


class _Finalizer:
    """Garbage in a reference cycle whose __del__ writes into the cache.

    Its finalizer runs when the collector runs, which any allocation can trigger: in the
    middle of a rebuild, if a rebuild allocated after its first write.
    """

    def __init__(self, cache, key):
        self.cache = cache
        self.key = key
        self.cycle = self

    def __del__(self):
        self.cache[self.key] = "from __del__"
        self.cache.pop(("del", self.key[1] - 1), None)


@pytest.mark.parametrize("make", FACTORIES, ids=lambda f: f.__name__)
def test_finalizers_that_write_during_growth(make):
    cache = make(1_000_000)
    old = gc.get_threshold()
    gc.set_threshold(5, 1, 1)                 # collect on almost every allocation
    try:
        for i in range(3000):
            _Finalizer(cache, ("del", i))
            cache[("own", i)] = i
    finally:
        gc.set_threshold(*old)
    gc.collect()
    cache._check()
    for i in range(3000):
        assert cache[("own", i)] == i
    assert len(cache) == len(list(cache))


def test_ttl_set_with_per_entry_ttls_while_growing(fast_switching):
    """Per-entry expiry switched on while other threads insert (the expiry buffers grow too)."""
    cache = kvcache.LRUCache(1_000_000)

    def plain(t):
        for i in range(PER_THREAD):
            cache[(t, i)] = i

    def timed(t):
        for i in range(PER_THREAD):
            cache.set((t, i), i, ttl=10_000)

    _run([(plain, 0), (timed, 1)])
    cache._check()
    assert len(cache) == 2 * PER_THREAD
    for t in range(2):
        for i in range(PER_THREAD):
            assert cache[(t, i)] == i
    assert cache.ttl_of((0, 5)) is None
    assert 9_000 < cache.ttl_of((1, 5)) <= 10_000


def test_load_while_other_threads_write(tmp_path, fast_switching):
    """_import_state swaps a fully built table in: concurrent writers see old or new, never half."""
    src = kvcache.LRUCache(100_000)
    for i in range(5000):
        src[("saved", i)] = i
    path = tmp_path / "snap.kvc"
    src.save(path)
    cache = kvcache.LRUCache(100_000)

    def loader():
        for _ in range(5):
            cache.load(path)

    def writer():
        for i in range(PER_THREAD):
            cache[("live", i)] = i

    _run([(loader,), (writer,)])
    cache._check()
    for k, v in list(cache.items()):
        assert v == k[1]


@pytest.mark.parametrize("make", FACTORIES, ids=lambda f: f.__name__)
def test_copies_taken_while_other_threads_write(make, fast_switching):
    """An export (copy, pickle, save) reads one state, even while the buffers grow under it."""
    import copy
    cache = make(1_000_000)
    copies = []

    def writer(t):
        for i in range(PER_THREAD):
            cache[(t, i)] = i

    def copier():
        for _ in range(6):
            copies.append(copy.copy(cache))

    _run([(writer, 0), (writer, 1), (copier,)])
    for c in copies:
        c._check()
        for k, v in c.items():
            assert v == k[1]


def test_rr_with_a_choice_function_under_threads(fast_switching):
    """RRCache's user choice sees a list of live keys, taken in one state."""
    cache = kvcache.RRCache(500, choice=random.choice)

    def work(t):
        for i in range(PER_THREAD):
            cache[(t, i)] = i

    _run([(work, t) for t in range(THREADS)])
    cache._check()
    assert len(cache) == 500
    for k, v in cache.items():
        assert v == k[1]


class _Popper:
    """Cyclic garbage whose finalizer removes some keys from the cache."""

    def __init__(self, cache, keys):
        self.cache = cache
        self.keys = keys
        self.cycle = self

    def __del__(self):
        for k in self.keys:
            self.cache.pop(k, None)


def test_finalizers_that_remove_during_expiry_with_time_running_backwards():
    """Expiry removes entry after entry; a collection between two removals (here: finalizers
    removing the entries expiry would visit next) must not leave it following a stale link."""
    clock = [0.0]
    cache = kvcache.TTLCache(1_000_000, ttl=10, timer=lambda: clock[0])
    rnd = random.Random(5)
    cache.set("early", 0, ttl=1000)
    cache.expire(60)                          # the heap's clock now runs ahead of the timer
    old = gc.get_threshold()
    try:
        for rep in range(30):
            clock[0] = rep
            for i in range(300):
                cache.set(("own", rep, i), i, ttl=rnd.uniform(0.5, 3))
            gc.disable()
            for _ in range(30):
                _Popper(cache, [("own", rep, rnd.randrange(300)) for _ in range(10)])
            gc.set_threshold(1, 1, 1)
            gc.enable()
            cache.expire(clock[0] + 2)        # below the heap's clock: entry-by-entry scan
            gc.set_threshold(*old)
            cache._check()
    finally:
        gc.set_threshold(*old)
        gc.enable()
    gc.collect()
    cache._check()
    for k, v in list(cache.items()):
        assert k == "early" or v == k[2]
