"""Expiry: TTLCache, TLRUCache, per-entry time-to-live on every class, ttl_cache.

A fake timer drives time; cachetools 8 is the reference for the timed classes' semantics.
"""
import copy
import math
import pickle
import random
import time
from datetime import datetime, timedelta

import pytest

import kvcache
from kvcache import LRUCache, TLRUCache, TTLCache, ttl_cache

cachetools = pytest.importorskip("cachetools")


class Timer:
    """A fake clock: time moves only when told to (module level, so caches using it pickle)."""

    def __init__(self, start=0, auto=False):
        self.time = start
        self.auto = auto

    def __call__(self):
        if self.auto:
            self.time += 1
        return self.time

    def tick(self, n=1):
        self.time += n


def live(cache):
    return dict(cache.items())


# -- cachetools' TTLCache behaviour ---------------------------------------------------------------

def test_ttl_basic_sequence():
    cache = TTLCache(maxsize=2, ttl=2, timer=Timer())
    assert cache.timer() == 0 and cache.ttl == 2
    cache[1] = 1
    assert cache[1] == 1 and len(cache) == 1 and set(cache) == {1}
    cache.timer.tick()
    assert cache[1] == 1 and len(cache) == 1
    cache[2] = 2
    assert (cache[1], cache[2], len(cache), set(cache)) == (1, 2, 2, {1, 2})
    cache.timer.tick()
    assert 1 not in cache and cache[2] == 2 and len(cache) == 1 and set(cache) == {2}
    cache[3] = 3
    assert 1 not in cache and set(cache) == {2, 3} and len(cache) == 2
    cache.timer.tick()
    assert set(cache) == {3} and len(cache) == 1
    cache.timer.tick()
    assert 3 not in cache
    with pytest.raises(KeyError):
        del cache[1]
    with pytest.raises(KeyError):
        cache.pop(2)
    with pytest.raises(KeyError):
        del cache[3]
    assert len(cache) == 0 and set(cache) == set()


def test_ttl_lru_eviction_among_live():
    cache = TTLCache(maxsize=2, ttl=1, timer=Timer())
    cache[1] = 1
    cache[2] = 2
    cache[3] = 3
    assert len(cache) == 2 and 1 not in cache and cache[2] == 2 and cache[3] == 3
    cache[2]
    cache[4] = 4
    assert len(cache) == 2 and 3 not in cache and cache[2] == 2 and cache[4] == 4
    cache[5] = 5
    assert set(cache) == {4, 5}


def test_expire_results_and_explicit_time():
    cache = TTLCache(maxsize=3, ttl=3, timer=Timer())
    with cache.timer as now:
        assert now == cache.timer()
    cache[1] = 1
    cache.timer.tick()
    cache[2] = 2
    cache.timer.tick()
    cache[3] = 3
    assert cache.expire() == []
    assert set(cache) == {1, 2, 3}
    assert cache.expire(3) == [(1, 1)]
    assert set(cache) == {2, 3}
    assert cache.expire(4) == [(2, 2)]
    assert cache.expire(5) == [(3, 3)]
    assert len(cache) == 0 and cache.expire(100) == []


def test_expire_returns_expiry_order_ties_in_set_order():
    cache = LRUCache(100)
    cache.timer = Timer()
    for k, ttl in [("c", 3), ("a", 1), ("b", 2), ("a2", 1), ("d", 5), ("b2", 2)]:
        cache.set(k, k.upper(), ttl=ttl)
    cache["forever"] = 0
    assert cache.expire(4) == [("a", "A"), ("a2", "A2"), ("b", "B"), ("b2", "B2"), ("c", "C")]
    assert live(cache) == {"d": "D", "forever": 0}
    assert cache.expire(10**9) == [("d", "D")]
    assert live(cache) == {"forever": 0}


def test_ttl_atomic_with_auto_timer():
    cache = TTLCache(maxsize=1, ttl=2, timer=Timer(auto=True))
    cache[1] = 1
    assert cache[1] == 1
    cache[1] = 1
    assert cache.get(1) == 1
    cache[1] = 1
    assert cache.pop(1) == 1
    cache[1] = 1
    assert cache.setdefault(1) == 1
    cache[1] = 1
    cache.clear()
    assert len(cache) == 0


def test_ttl_tuple_key():
    cache = TTLCache(maxsize=1, ttl=1, timer=Timer())
    cache[(1, 2, 3)] = 42
    assert cache[(1, 2, 3)] == 42
    cache.timer.tick()
    with pytest.raises(KeyError):
        cache[(1, 2, 3)]
    assert (1, 2, 3) not in cache


def test_datetime_timer_and_timedelta_ttl():
    cache = TTLCache(maxsize=1, ttl=timedelta(days=1), timer=datetime.now)
    cache[1] = 1
    assert len(cache) == 1
    assert cache.expire(datetime.now()) == []
    left = cache.ttl_of(1)
    assert isinstance(left, timedelta) and timedelta(hours=23) < left <= timedelta(days=1)
    assert cache.expire(datetime.now() + timedelta(days=1)) == [(1, 1)]
    assert len(cache) == 0


def test_datetime_boundary_is_exact():
    clock = [datetime(2025, 1, 1, 12, 0, 0)]
    cache = TTLCache(maxsize=4, ttl=timedelta(hours=1), timer=lambda: clock[0])
    cache["k"] = "v"
    clock[0] += timedelta(minutes=59, seconds=59, microseconds=999999)
    assert cache["k"] == "v" and cache.ttl_of("k") == timedelta(microseconds=1)
    clock[0] += timedelta(microseconds=1)
    assert "k" not in cache
    cache.set("n", 1, ttl=90)                  # a number of seconds also works with datetimes
    assert cache.ttl_of("n") == timedelta(seconds=90)


def test_clear_resets_lru_order_and_expiry():
    cache = TTLCache(maxsize=2, ttl=2, timer=Timer())
    cache[1] = 1
    cache[2] = 2
    cache.clear()
    assert len(cache) == 0 and cache.currsize == 0 and cache.expire(100) == []
    cache[3] = 3
    cache[4] = 4
    cache[3]
    cache[5] = 5
    assert set(cache) == {3, 5}
    cache._check()


# -- boundaries -----------------------------------------------------------------------------------

@pytest.mark.parametrize("start, ttl", [(0, 5), (0.1, 0.2), (1e9 + 0.3, 0.7), (-3, 2.5)])
def test_expiry_exactly_at_the_boundary(start, ttl):
    timer = Timer(start)
    cache = TTLCache(10, ttl, timer=timer)
    ref = cachetools.TTLCache(10, ttl, timer=timer)
    cache["k"] = ref["k"] = 1
    expires = start + ttl
    before = math.nextafter(expires, -math.inf)
    for t in (before, expires, math.nextafter(expires, math.inf)):
        timer.time = t
        assert ("k" in cache) == ("k" in ref) == (t < expires)
        assert cache.get("k") == ref.get("k")


def test_tlru_boundary_and_expired_on_set():
    timer = Timer()
    cache = TLRUCache(maxsize=1, ttu=lambda k, _, t: t + k, timer=timer)
    cache[1] = None
    assert cache[1] is None and len(cache) == 1
    cache[0] = None                           # expires now: not stored, evicts nothing
    assert 0 not in cache and cache[1] is None and len(cache) == 1
    cache[-1] = None
    assert -1 not in cache and cache[1] is None
    cache[1] = "x"
    timer.tick()
    assert 1 not in cache
    timer.time = 0
    cache[1] = "y"
    assert cache[1] == "y"
    cache.set(1, "z", ttl=0)                  # an already-expired item replaces the key: it goes
    assert 1 not in cache and len(cache) == 0


def test_tlru_ttu_sequence_matches_cachetools():
    def ttu(_, v, t):
        return t + v + 1

    timer = Timer()
    cache = TLRUCache(maxsize=6, ttu=ttu, timer=timer)
    ref = cachetools.TLRUCache(maxsize=6, ttu=ttu, timer=timer)
    assert cache.ttu is ttu
    for step in [("set", 1), ("tick",), ("set", 2), ("tick",), ("set", 3), ("tick",),
                 ("set", 1), ("tick",), ("tick",), ("set", 0), ("tick",), ("tick",)]:
        if step[0] == "set":
            cache[step[1]] = ref[step[1]] = step[1]
        else:
            timer.tick()
        assert set(cache) == set(ref) and len(cache) == len(ref)
        for k in range(4):
            assert (k in cache) == (k in ref)


def test_tlru_reverse_insert():
    cache = TLRUCache(maxsize=4, ttu=lambda k, v, t: t + v, timer=Timer())
    for v in (3, 2, 1, 0):
        cache[v] = v
    assert set(cache) == {1, 2, 3}
    cache.timer.tick()
    assert set(cache) == {2, 3}
    cache.timer.tick()
    assert set(cache) == {3}
    cache.timer.tick()
    assert set(cache) == set() and len(cache) == 0


# -- mixed per-entry TTLs -------------------------------------------------------------------------

def test_mixed_per_entry_ttls_against_brute_force():
    rnd = random.Random(7)
    timer = Timer(0.0)
    cache = TTLCache(10_000, ttl=50, timer=timer)
    expires = {}
    for i in range(3000):
        ttl = rnd.choice([None, rnd.uniform(0, 100), rnd.randrange(1, 100), math.inf])
        cache.set(i, -i, ttl=ttl)
        expires[i] = timer.time + (50 if ttl is None else ttl)
        if i % 10 == 0:
            timer.tick(rnd.random())
    cache._check()
    start = timer.time                         # entries due before were expired by set() itself
    total = []
    while timer.time < 450:
        timer.tick(rnd.uniform(0, 7))
        now = timer.time
        got = cache.expire()
        assert [k for k, _ in got] == sorted((k for k, _ in got), key=lambda k: (expires[k], k))
        total += got
        alive = {k for k, e in expires.items() if now < e}
        assert set(cache) == alive and len(cache) == len(alive)
        cache._check()
    assert sorted(total) == sorted((k, -k) for k, e in expires.items() if start < e < math.inf)


def test_expire_after_many_empty_checks():
    # many expire() calls with nothing due, then one that finds exactly the due entries
    timer = Timer(1000.0)
    cache = LRUCache(100_000)
    cache.timer = timer
    for i in range(20_000):
        cache.set(i, i, ttl=100 + (i % 1000))
    cache.expire()
    for _ in range(1000):
        assert cache.expire() == []
    timer.tick(100.5)
    assert sorted(cache.expire()) == [(i, i) for i in range(20_000) if i % 1000 == 0]
    cache._check()


def test_time_running_backwards_stays_exact():
    timer = Timer(10)
    cache = LRUCache(100)
    cache.timer = timer
    cache.set("a", 1, ttl=5)                   # expires at 15
    assert cache.expire(12) == []
    assert cache.expire(30) == [("a", 1)]      # an explicit time in the future
    cache.set("b", 2, ttl=5)                   # at 10 again: expires at 15, below the heap's floor
    cache.set("c", 3, ttl=1)                   # 11
    assert cache.expire() == [] and set(cache) == {"b", "c"}
    timer.time = 11
    assert cache.expire() == [("c", 3)]
    timer.time = 9
    cache.set("d", 4, ttl=1)
    assert set(cache) == {"b", "d"}
    timer.time = 15
    assert sorted(cache.expire()) == [("b", 2), ("d", 4)]
    cache._check()


# -- expiry and iteration -------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [TTLCache, TLRUCache])
def test_expiry_during_iteration(cls):
    timer = Timer()
    param = 10 if cls is TTLCache else (lambda k, v, t: t + 10)
    cache = cls(100, param, timer=timer)
    for i in range(10):
        cache.set(i, i, ttl=i + 1)            # i expires at i + 1
    seen = []
    for k in cache:
        seen.append(k)
        timer.tick(2)                          # key k is reached at 2 * len(seen): odd ones are due
    assert seen == [0, 2, 4, 6, 8]
    timer.time = 5
    assert list(cache) == [5, 6, 7, 8, 9]
    assert list(cache.keys()) == [5, 6, 7, 8, 9]
    assert list(cache.values()) == [5, 6, 7, 8, 9]
    assert list(cache.items()) == [(i, i) for i in range(5, 10)]
    assert list(reversed(cache.keys())) == [9, 8, 7, 6, 5]


def test_list_of_cache_while_entries_expire(cache_cls):
    # list() calls len(), which expires entries after the iterator was made: no RuntimeError
    cache = cache_cls(10)
    cache.timer = Timer()
    for i in range(5):
        cache.set(i, i, ttl=1 + (i % 2))
    cache.timer.tick()
    assert sorted(cache) == [1, 3]
    it = iter(cache.keys())
    cache.timer.tick()
    assert len(cache) == 0
    assert list(it) == []


def test_expired_entries_go_first_then_lru():
    evicted = []
    timer = Timer()
    cache = TTLCache(3, 10, timer=timer, on_evict=lambda k, v: evicted.append(k))
    cache.set("short", 1, ttl=1)
    cache["a"] = 2
    cache["b"] = 3
    cache["a"]                                 # LRU order: short, b, a
    timer.tick()                               # short has expired
    cache["c"] = 4                             # room from the expired entry: no eviction
    assert set(cache) == {"b", "a", "c"} and evicted == []
    cache["d"] = 5                             # now the least recently used live entry goes
    assert evicted == ["b"] and list(cache) == ["a", "c", "d"]
    assert cache.stats().evictions == 1


def test_popitem_skips_expired():
    cache = TTLCache(5, 10, timer=Timer())
    cache.set("x", 0, ttl=1)
    cache["y"] = 1
    cache["z"] = 2
    cache.timer.tick()
    assert cache.popitem() == ("y", 1)
    assert cache.popitem() == ("z", 2)
    with pytest.raises(KeyError):
        cache.popitem()


def test_resize_with_expired_entries_present():
    evicted = []
    timer = Timer()
    cache = TTLCache(6, 10, timer=timer, on_evict=lambda k, v: evicted.append(k))
    for i in range(6):
        cache.set(i, i, ttl=1 if i % 2 else 10)   # odd keys expire at 1
    cache[4]                                        # LRU order of the live ones: 0, 2, 4
    timer.tick()
    cache.resize(2)
    assert evicted == [0] and list(cache) == [2, 4]
    assert cache.maxsize == 2 and len(cache) == 2
    cache._check()


def test_getsizeof_with_expiry():
    cache = TTLCache(10, 5, timer=Timer(), getsizeof=len)
    cache["a"] = "xxxx"
    cache.set("b", "yyyy", ttl=1)
    assert cache.currsize == 8
    cache.timer.tick()
    assert cache.currsize == 4
    cache["c"] = "zzzzzz"
    assert set(cache) == {"a", "c"} and cache.currsize == 10
    cache._check()


# -- per-entry TTL on every class -----------------------------------------------------------------

def test_per_entry_ttl_on_every_class(cache_cls):
    timer = Timer()
    cache = cache_cls(10)
    assert cache.expire() == []
    cache["plain"] = 0
    assert cache.ttl_of("plain") is None
    cache.timer = timer
    cache.set("a", 1, ttl=2)
    cache.set("b", 2, ttl=5)
    cache.set("c", 3)                          # no default: never expires
    assert cache.ttl_of("a") == 2 and cache.ttl_of("b") == 5 and cache.ttl_of("c") is None
    with pytest.raises(KeyError):
        cache.ttl_of("missing")
    timer.tick(2)
    assert "a" not in cache and cache.get("a", "gone") == "gone" and cache.peek("a") is None
    assert cache.ttl_of("b") == 3
    with pytest.raises(KeyError):
        cache["a"]
    with pytest.raises(KeyError):
        cache.ttl_of("a")
    assert cache.pop("a", "dflt") == "dflt"
    assert len(cache) == 3 and set(cache) == {"plain", "b", "c"}
    assert cache.stats().misses == 2
    cache["b"] = 20                            # assignment without ttl: the key never expires
    assert cache.ttl_of("b") is None
    cache.set("c", 30, ttl=1)
    timer.tick(1)
    assert live(cache) == {"plain": 0, "b": 20}
    assert cache.setdefault("c", 31) == 31 and cache.ttl_of("c") is None
    cache.set("d", 4, ttl=1)
    timer.tick(1)
    with pytest.raises(KeyError):
        del cache["d"]                         # expired: removed, and missing (as cachetools)
    cache._check()


def test_per_entry_ttl_eviction_on_every_class(cache_cls):
    cache = cache_cls(3)
    cache.timer = Timer()
    cache.set(1, 1, ttl=1)
    cache[2] = 2
    cache[3] = 3
    cache.timer.tick()
    cache[4] = 4                               # the expired entry makes room: nobody is evicted
    assert sorted(cache) == [2, 3, 4] and cache.stats().evictions == 0
    cache._check()


def test_per_entry_ttl_with_get_many_int_path():
    np = pytest.importorskip("numpy")
    cache = LRUCache(10)
    cache.timer = Timer()
    cache.set(1, "a", ttl=1)
    cache[2] = "b"
    cache.timer.tick()
    assert cache.get_many(np.array([1, 2, 3], dtype=np.int64), "-") == ["-", "b", "-"]


def test_bad_ttl_input_loses_nothing():
    cache = LRUCache(4)
    cache["k"] = 1
    with pytest.raises(ValueError):
        cache.set("k", 2, ttl=float("nan"))
    with pytest.raises(TypeError):
        cache.set("k", 2, ttl="soon")
    assert cache["k"] == 1 and cache.ttl_of("k") is None
    with pytest.raises(TypeError):
        TTLCache(4, 1, timer=42)
    with pytest.raises(TypeError):
        TLRUCache(4, ttu=5)
    with pytest.raises(TypeError):
        cache.timer = "not callable"

    calls = []

    def broken_once():
        calls.append(1)
        if len(calls) == 1:
            raise OSError("clock broke")
        return 0

    cache.timer = broken_once
    with pytest.raises(OSError):
        cache.set("k", 3, ttl=1)
    assert cache.peek("k") == 1 and cache.ttl_of("k") is None
    cache._check()


# -- the timer ------------------------------------------------------------------------------------

def test_timer_wrapper_freezes_and_forwards():
    timer = Timer(auto=True)
    cache = TTLCache(4, 10, timer=timer)
    assert cache.timer.auto is True            # attributes come from the user's timer
    with cache.timer as t1:
        with cache.timer as t2:
            assert t1 == t2 == cache.timer() == cache.timer()
        assert cache.timer() == t1
    assert cache.timer() > t1
    assert copy.copy(cache.timer)() > t1


def test_builtin_monotonic_clock_agrees_with_time_monotonic():
    cache = TTLCache(4, 10)
    for _ in range(100):
        a = time.monotonic()
        b = cache.timer._now()
        c = time.monotonic()
        assert a <= b <= c
    cache["k"] = 1
    assert 9.9 < cache.ttl_of("k") <= 10
    with cache.timer as now:
        assert now == cache.timer() and 9.9 < cache.ttl_of("k") <= 10


# -- copies, pickles, state -----------------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda t: TTLCache(10, 5, timer=t),
    lambda t: TLRUCache(10, _ttu_plus_three, timer=t),
    lambda t: _lru_with_timer(t),
], ids=["TTLCache", "TLRUCache", "LRUCache"])
@pytest.mark.parametrize("dup", [copy.copy, copy.deepcopy, lambda c: pickle.loads(pickle.dumps(c))],
                         ids=["copy", "deepcopy", "pickle"])
def test_copies_keep_ttls(make, dup):
    timer = Timer(0.1)
    cache = make(timer)
    cache["a"] = 1
    cache.set("b", 2, ttl=0.2)
    cache.set("gone", 0, ttl=0.01)
    timer.tick(0.05)
    other = dup(cache)
    t = other.timer
    assert set(other) == {"a", "b"}
    assert other.ttl_of("b") == cache.ttl_of("b")
    assert other.ttl_of("a") == cache.ttl_of("a")
    if isinstance(cache, TTLCache):
        assert other.ttl == 5
    if isinstance(cache, TLRUCache):
        assert other.ttu is _ttu_plus_three
    timer.tick(0.15)
    if t.time != timer.time:                   # a copied timer: move it the same way
        t.tick(0.15)
    assert t.time == timer.time
    assert ("b" in other) == ("b" in cache)
    other["c"] = 3
    assert "c" not in cache
    other._check()


def _ttu_plus_three(key, value, now):
    return now + 3


def _lru_with_timer(timer):
    cache = LRUCache(10)
    cache.timer = timer
    return cache


def test_export_import_state_carries_remaining_ttls():
    timer = Timer(100)
    cache = LRUCache(10)
    cache.timer = timer
    cache.set("a", 1, ttl=5)
    cache["b"] = 2
    cache.set("c", 3, ttl=1)
    timer.tick(2)
    keys, values, aux = cache._export_state()          # three values, as before
    assert keys == ["a", "b"] and values == [1, 2] and aux is None
    keys, values, aux, ttl = cache._export_state(ttl=True)
    assert keys == ["a", "b"] and list(ttl) == [3, math.inf]
    other = LRUCache(10)
    other.timer = Timer(7)
    other._import_state(keys, values, aux, ttl)
    assert other.ttl_of("a") == 3 and other.ttl_of("b") is None
    with pytest.raises(ValueError):
        other._import_state(keys, values, aux, [1.0])
    assert other.ttl_of("a") == 3                        # a failed import changes nothing


# -- ttl_cache ------------------------------------------------------------------------------------

def test_ttl_cache_decorator():
    timer = Timer()
    calls = []

    @ttl_cache(maxsize=2, ttl=10, timer=timer)
    def f(x):
        calls.append(x)
        return x * 2

    assert f(1) == 2 and f(1) == 2 and calls == [1]
    assert f.cache_info() == (1, 1, 2, 1)
    assert f.cache_parameters() == {"maxsize": 2, "typed": False}
    timer.tick(10)
    assert f(1) == 2 and calls == [1, 1]
    f(2)
    f(3)
    assert f.cache_info().currsize == 2
    f.cache_clear()
    assert f.cache_info() == (0, 0, 2, 0)


def test_ttl_cache_forms():
    @ttl_cache
    def g(x):
        return x

    assert g(1) == 1 and g.cache_info().maxsize == 128

    @ttl_cache(maxsize=None, ttl=1, typed=True)
    def h(x):
        return type(x).__name__

    assert h(1) == "int" and h(1.0) == "float"
    assert h.cache_info().maxsize is None and h.cache_info().currsize == 2

    @ttl_cache(maxsize=0)
    def z(x):
        return x

    assert z(1) == 1 and z(1) == 1 and z.cache_info().misses == 2


def test_public_names():
    assert {"TTLCache", "TLRUCache", "ttl_cache"} <= set(kvcache.__all__)
    assert issubclass(TTLCache, kvcache.Cache) and issubclass(TLRUCache, kvcache.Cache)


# -- cost of having expiry ------------------------------------------------------------------------

def test_no_expiry_memory_until_a_ttl_is_used(cache_cls):
    cache = cache_cls(100)
    for i in range(50):
        cache[i] = i
    before = cache._nbytes()
    cache.timer = Timer()                      # a timer alone allocates no buffers either
    cache[50] = 50
    assert cache._nbytes() == before
    cache.set(51, 51, ttl=5)
    assert cache._nbytes() > before
    assert cache.ttl_of(51) == 5 and cache.ttl_of(0) is None
    cache._check()


def test_threads_setting_and_reading_with_ttls():
    import threading

    cache = TTLCache(500, 0.05)
    errors = []

    def work(seed):
        rnd = random.Random(seed)
        try:
            for _ in range(3000):
                k = rnd.randrange(1000)
                op = rnd.random()
                if op < 0.4:
                    cache.set(k, k, ttl=rnd.choice([None, 0.001, 0.02, 1]))
                elif op < 0.8:
                    v = cache.get(k)
                    assert v is None or v == k
                elif op < 0.9:
                    cache.pop(k, None)
                else:
                    cache.expire()
        except Exception as exc:               # reported below, with the thread's failure
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache._check()
    assert len(cache) <= 500


@pytest.mark.parametrize("base", [TTLCache, TLRUCache, LRUCache])
def test_overridden_expire_sees_every_implicit_expiry(base):
    # cachetools documents this way of tracking expired items: every mutating operation
    # calls expire(), and a subclass may override it
    class Tracking(base):
        def expire(self, time=None):
            items = super().expire(time)
            self.seen.extend(items)
            return items

    timer = Timer()
    if base is TTLCache:
        cache = Tracking(10, 10, timer=timer)
    elif base is TLRUCache:
        cache = Tracking(10, lambda k, v, t: t + 10, timer=timer)
    else:
        cache = Tracking(10)
        cache.timer = timer
    cache.seen = []
    cache.set("a", 1, ttl=1)
    cache.set("b", 2, ttl=2)
    timer.tick()
    cache["c"] = 3                             # a set expires first
    assert cache.seen == [("a", 1)]
    timer.tick()
    assert len(cache) == 1 and cache.seen == [("a", 1), ("b", 2)]
    cache.set("d", 4, ttl=1)
    timer.tick(5)
    cache.popitem()
    assert ("d", 4) in cache.seen


def test_cached_decorator_over_ttlcache_expires():
    # the compiled `cached` call path must stamp expiry like __setitem__ does
    import kvcache

    now = [0]
    c = TTLCache(10, ttl=5, timer=lambda: now[0])

    @kvcache.cached(c)
    def f(x):
        return x * 2

    assert f(1) == 2
    assert c.ttl_of((1,)) == 5
    now[0] = 10
    assert (1,) not in c and list(c.items()) == []
    c._check()


def test_cached_decorator_over_ttlcache_recomputes_after_expiry():
    import kvcache

    now = [0]
    c = TTLCache(10, ttl=5, timer=lambda: now[0])
    calls = []

    @kvcache.cached(c)
    def f(x):
        calls.append(x)
        return x * 2

    f(1)
    f(1)
    now[0] = 10
    assert f(1) == 2
    assert calls == [1, 1]                  # the expired entry was a miss, not a stale hit


@pytest.mark.parametrize("policy", ["lru", "lfu", "fifo", "rr", "tinylfu"])
def test_memoize_ttl_any_policy(policy, monkeypatch):
    import kvcache

    calls = []

    @kvcache.memoize(maxsize=8, policy=policy, ttl=1000)
    def f(x):
        calls.append(x)
        return x

    f(1)
    f(1)
    assert calls == [1]
    assert 0 < f.cache.ttl_of(next(iter(f.cache))) <= 1000
    # expire everything by asking the cache to expire at a time far in the future
    f.cache.expire(f.cache.timer() + 2000)
    f(1)
    assert calls == [1, 1]
    with pytest.raises(ValueError):
        kvcache.memoize(ttl=0)
