"""cachetools 8 behaviour kvcache matches (issue 18): side by side with cachetools where installed.

Each test runs on kvcache and, through the `mod` fixture, on cachetools itself, so every
expectation is pinned by the reference (cachetools 8 needs Python 3.11+: its runs skip on 3.10).
"""
import copy
import math
import pickle
import threading

import pytest

import kvcache
import kvcache.func

from .cache_specs import SPECS


def _cachetools():
    cachetools = pytest.importorskip("cachetools")
    if int(cachetools.__version__.split(".")[0]) < 8:
        pytest.skip("the reference is cachetools 8")
    return cachetools


@pytest.fixture(params=["kvcache", "cachetools"])
def mod(request):
    return kvcache if request.param == "kvcache" else _cachetools()


@pytest.fixture(params=["kvcache.func", "cachetools.func"])
def func(request):
    if request.param == "kvcache.func":
        return kvcache.func
    _cachetools()
    import cachetools.func
    return cachetools.func


class Clock:
    """A timer that moves only when told (module level, so caches using it pickle)."""

    def __init__(self):
        self.now = 0

    def __call__(self):
        return self.now


# --- popitem on an empty cache: KeyError "from None", as MutableMapping.popitem raises it


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_popitem_empty_suppresses_context(spec):
    c = spec.make(3)
    try:
        # raised while another exception is handled: its context must be hidden
        try:
            raise ValueError("the caller's own error")
        except ValueError:
            c.popitem()
    except KeyError as e:
        err = e
    assert err.__suppress_context__ and err.__cause__ is None


def test_popitem_empty_same_as_cachetools(mod):
    for c in (mod.Cache(2), mod.LRUCache(2), mod.TTLCache(2, 10)):
        with pytest.raises(KeyError) as info:
            c.popitem()
        assert info.value.__suppress_context__ and info.value.__cause__ is None


# --- constructor errors name the missing argument


@pytest.mark.parametrize("name, missing", [
    ("Cache", "'maxsize'"), ("FIFOCache", "'maxsize'"), ("LRUCache", "'maxsize'"),
    ("LFUCache", "'maxsize'"), ("RRCache", "'maxsize'"),
    ("TTLCache", "2 required positional arguments: 'maxsize' and 'ttl'"),
    ("TLRUCache", "2 required positional arguments: 'maxsize' and 'ttu'"),
])
def test_missing_constructor_argument_is_named(mod, name, missing):
    with pytest.raises(TypeError, match=missing) as info:
        getattr(mod, name)()
    assert str(info.value).startswith("%s.__init__() missing" % name)


def test_missing_ttl_alone_is_named(mod):
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'ttl'"):
        mod.TTLCache(10)


def test_tinylfu_missing_maxsize_is_named():
    with pytest.raises(TypeError, match="'maxsize'"):
        kvcache.TinyLFUCache()


def test_subclass_with_own_init_still_builds():
    class Small(kvcache.LRUCache):
        def __init__(self):
            super().__init__(2)

    assert Small().maxsize == 2


@pytest.mark.parametrize("ttl, error", [(-1, ValueError), (-0.5, ValueError),
                                        (math.nan, ValueError), ("x", TypeError),
                                        (None, TypeError)])
def test_bad_ttl_rejected_at_construction(ttl, error):
    # cachebox rejects these; cachetools accepts them silently (and fails or keeps nothing later)
    with pytest.raises(error, match="ttl"):
        kvcache.TTLCache(10, ttl)


@pytest.mark.parametrize("ttl", [0, 0.5, 600, math.inf])
def test_good_ttl_accepted(ttl):
    assert kvcache.TTLCache(10, ttl).ttl == ttl


def test_timedelta_ttl_with_datetime_timer_still_accepted():
    import datetime
    c = kvcache.TTLCache(10, datetime.timedelta(seconds=60), timer=datetime.datetime.now)
    c[1] = 1
    assert c[1] == 1


# --- a copied TTLCache evicts in the order cachetools' copy does


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_ttl_copy_keeps_eviction_order(mod, how):
    dup = {"copy": copy.copy, "deepcopy": copy.deepcopy,
           "pickle": lambda c: pickle.loads(pickle.dumps(c))}[how]
    clock = Clock()
    c = mod.TTLCache(10, 100, timer=clock)
    for k in (1, 2, 3):
        c[k] = k
        clock.now += 1
    c[1]
    d = dup(c)
    d[2]
    d[4] = 4
    order = []
    while d:
        order.append(d.popitem()[0])
    assert order == [3, 1, 2, 4]
    assert sorted(c) == [1, 2, 3]


# --- kvcache.func: cachetools.func's semantics


def test_func_lru_cache_keys_with_hashkey(func):
    @func.lru_cache
    def f(x):
        return x

    assert f(1) == 1 and f(1.0) == 1 and f(1) == 1     # hashkey: 1 and 1.0 are one key
    assert f.cache_info() == (2, 1, 128, 1)
    assert f.cache_parameters() == {"maxsize": 128, "typed": False}
    f.cache_clear()
    assert f.cache_info() == (0, 0, 128, 0)


def test_func_differs_from_functools_for_keyword_order(func):
    # hashkey sorts keywords: f(a=1, b=2) and f(b=2, a=1) are one entry (functools: two)
    @func.lru_cache(maxsize=None)
    def f(**kw):
        return sorted(kw.items())

    f(a=1, b=2)
    f(b=2, a=1)
    assert f.cache_info() == (1, 1, None, 1)


@pytest.mark.parametrize("name", ["lru_cache", "lfu_cache", "fifo_cache", "rr_cache",
                                  "ttl_cache"])
def test_func_decorators_match_cachetools(func, name):
    deco = getattr(func, name)

    @deco(maxsize=2, typed=True)
    def f(x):
        return x * 2

    assert [f(1), f(1.0), f(1)] == [2, 2.0, 2]
    assert f.cache_info() == (1, 2, 2, 2)
    assert f.cache_parameters() == {"maxsize": 2, "typed": True}
    assert f.__wrapped__.__name__ == "f" and f.__name__ == "f"

    @deco(None)
    def g(x):
        return x

    for i in range(300):
        g(i)
    assert g.cache_info() == (0, 300, None, 300)

    @deco
    def h(x):
        return x

    h(3)
    h(3)
    assert h.cache_info() == (1, 1, 128, 1)


def test_func_stacked_decorators(func):
    calls = []

    @func.lru_cache(maxsize=4)
    @func.fifo_cache(maxsize=4)
    def f(x):
        calls.append(x)
        return x

    f(1)
    f(1)
    f(2)
    assert calls == [1, 2]
    assert f.cache_info() == (1, 2, 4, 2)
    assert f.__wrapped__.cache_info() == (0, 2, 4, 2)
    f.cache_clear()
    f(1)
    assert f.__wrapped__.cache_info() == (1, 2, 4, 2)


def test_func_ttl_cache_expires(func):
    clock = Clock()

    @func.ttl_cache(maxsize=None, ttl=10, timer=clock)
    def f(x):
        return x

    f(1)
    clock.now = 9
    f(1)
    clock.now = 10
    f(1)
    assert f.cache_info() == (1, 2, None, 1)


def test_func_concurrent_misses_call_once(func):
    # the condition makes concurrent misses on one key wait for the first call (functools: all run)
    started = threading.Event()
    release = threading.Event()
    calls = []

    @func.lru_cache
    def f(x):
        calls.append(x)
        started.set()
        release.wait(5)
        return x

    first = threading.Thread(target=f, args=(1,))
    first.start()
    started.wait(5)
    second = threading.Thread(target=f, args=(1,))
    second.start()
    release.set()
    first.join()
    second.join()
    assert calls == [1]


def test_func_rr_cache_choice(func):
    @func.rr_cache(maxsize=2, choice=lambda seq: min(seq))
    def f(x):
        return x

    f(3)
    f(1)
    f(2)
    assert f.cache_info().currsize == 2


def test_package_lru_cache_stays_functools():
    @kvcache.lru_cache
    def f(x):
        return x

    f(1)
    f(1.0)
    assert f.cache_info().misses == 2
