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


# --- cachedmethod: cachetools 8's descriptor semantics


def _counter_class(mod, **kw):
    class Counter:
        def __init__(self):
            self.cache = {}
            self.calls = 0

        @mod.cachedmethod(lambda self: self.cache, **kw)
        def get(self, x):
            self.calls += 1
            return (x, self.calls)

    return Counter


@pytest.mark.parametrize("info", [False, True])
def test_cachedmethod_wrapper_kept_in_instance_dict(mod, info):
    obj = _counter_class(mod, info=info)()
    assert "get" not in obj.__dict__
    bound = obj.get
    assert obj.__dict__["get"] is bound and obj.get is bound
    if mod is kvcache:
        assert bound.__self__ is obj


def test_cachedmethod_overriding_subclass_sees_the_wrapper(mod):
    Counter = _counter_class(mod)

    class Sub(Counter):
        def get(self, x):
            # an override reaching the wrapper the instance already holds under the name
            held = self.__dict__.get("get")
            return ("sub", held(x) if held is not None else super().get(x))

    obj = Sub()
    assert obj.get(1) == ("sub", (1, 1))
    assert "get" not in obj.__dict__         # the base's wrapper is not put under the name...
    base_bound = super(Sub, obj).get
    assert super(Sub, obj).get is base_bound
    obj.__dict__["get"] = base_bound         # ...but one stored there is what the name gives
    assert obj.get is base_bound and obj.get(1) == (1, 1)
    plain = Counter()
    held = plain.get
    assert plain.__dict__["get"] is held and held(2) == (2, 1)


def test_cachedmethod_first_wrapper_wins_a_race(mod):
    Counter = _counter_class(mod)
    desc = Counter.__dict__["get"]
    obj = Counter()
    first = desc.__get__(obj, Counter)
    assert desc.__get__(obj, Counter) is first            # setdefault: not replaced


def test_cachedmethod_slots_without_dict_raise(mod):
    class Slotted:
        __slots__ = ("cache",)

        def __init__(self):
            self.cache = {}

        @mod.cachedmethod(lambda self: self.cache)
        def get(self, x):
            return x

    with pytest.raises(TypeError, match="No '__dict__' attribute on 'Slotted' instance to "
                                        "cache 'get'"):
        Slotted().get


def test_cachedmethod_immutable_dict_raises(mod):
    class Meta(type):
        @mod.cachedmethod(lambda cls: {})
        def get(cls, x):
            return x

    class K(metaclass=Meta):
        pass

    # a class's __dict__ is a mapping proxy (no setdefault)
    with pytest.raises(TypeError, match="No '__dict__' attribute on 'Meta' instance"):
        K.get

    class FrozenDict(dict):
        def setdefault(self, *args):
            raise TypeError("frozen")

    class Frozen:
        def __init__(self):
            object.__setattr__(self, "_d", FrozenDict())

        @property
        def __dict__(self):
            return object.__getattribute__(self, "_d")

        @mod.cachedmethod(lambda self: {})
        def get(self, x):
            return x

    with pytest.raises(TypeError, match="The '__dict__' attribute on 'Frozen' instance does "
                                        "not support item assignment for caching 'get'"):
        Frozen().get


class SuperBase:
    def __init__(self):
        self.base_cache = {}
        self.cache = {}


def _super_classes(mod):
    class Base(SuperBase):
        @mod.cachedmethod(lambda self: self.base_cache, info=True)
        def get(self, x):
            return ("base", x)

    class Derived(Base):
        @mod.cachedmethod(lambda self: self.cache, info=True)
        def get(self, x):
            return ("derived", super().get(x))

    return Base, Derived


SuperBaseKv, SuperDerivedKv = _super_classes(kvcache)
SuperBaseKv.__qualname__ = "SuperBaseKv"
SuperDerivedKv.__qualname__ = "SuperDerivedKv"
try:
    import cachetools as _ct
    SuperBaseCt, SuperDerivedCt = _super_classes(_ct)
    SuperBaseCt.__qualname__ = "SuperBaseCt"
    SuperDerivedCt.__qualname__ = "SuperDerivedCt"
except ImportError:  # pragma: no cover
    pass


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_cachedmethod_super_keeps_identity_across_copies(mod, how):
    Derived = SuperDerivedKv if mod is kvcache else SuperDerivedCt
    d = Derived()
    assert d.get(1) == ("derived", ("base", 1))
    base_bound = super(Derived, d).get
    assert super(Derived, d).get is base_bound and d.get is not base_bound
    assert base_bound.cache_info() == (0, 1, None, 1)
    dup = copy.deepcopy if how == "deepcopy" else lambda o: pickle.loads(pickle.dumps(o))
    d2 = dup(d)
    for obj in (d, d2):
        assert obj.get is obj.__dict__["get"]
        assert super(Derived, obj).get is super(Derived, obj).get
        assert super(Derived, obj).get is not obj.get
        if mod is kvcache:
            assert super(Derived, obj).get.__self__ is obj
    assert d2.get(1) == ("derived", ("base", 1))
    assert d2.get.cache_info() == (1, 0, None, 1)          # counts restart in a copy
    assert super(Derived, d2).get.cache_info() == (0, 0, None, 1)
    assert d2.base_cache is not d.base_cache


def test_cachedmethod_class_access_and_alias(mod):
    Counter = _counter_class(mod)

    class Other:
        get = Counter.get          # an alias in another class body binds like a method

        def __init__(self):
            self.cache = {}
            self.calls = 0

    assert Counter.get is Counter.get
    assert repr(Counter.get).startswith("<cachedmethod <function")
    obj = Counter()
    assert Counter.get(obj, 1) == (1, 1) and obj.get(1) == (1, 1)
    o = Other()
    assert o.get(2) == (2, 1) and o.get(2) == (2, 1)
    for dup in (copy.copy, copy.deepcopy):      # (pickling: tests/test_cached.py)
        assert dup(Counter.get)(obj, 1) == (1, 1)


def test_cachedmethod_misuse_errors(mod):
    desc = mod.cachedmethod(lambda self: {})(lambda self: 1)
    with pytest.raises(TypeError, match="Cannot call @cachedmethod descriptor directly"):
        desc(object())
    # Python before 3.12 wraps an error of __set_name__ in a RuntimeError
    with pytest.raises((TypeError, RuntimeError)) as info:
        type("TwoNames", (), {"a": desc, "b": desc})
    err = info.value if isinstance(info.value, TypeError) else info.value.__cause__
    assert "Cannot assign the same descriptor to two different names ('a' and 'b')" in str(err)
    with pytest.raises(TypeError, match="Cannot call @cachedmethod descriptor directly"):
        class A:
            @classmethod
            @mod.cachedmethod(lambda cls: {})
            def f(cls):
                return 1

        A.f()
    with pytest.raises(TypeError, match="Cannot call @cachedmethod descriptor directly"):
        class P:
            @property
            @mod.cachedmethod(lambda self: {})
            def f(self):
                return 1

        P().f
    loose = mod.cachedmethod(lambda self: {})(lambda self: 1)
    with pytest.raises(TypeError, match="without calling __set_name__"):
        loose.__get__(object(), object)


def test_cachedmethod_cache_must_be_callable(mod):
    with pytest.raises(TypeError, match="must be callable"):
        mod.cachedmethod({})


# --- TTLCache / TLRUCache order: kvcache iterates in the order cachetools evicts
#
# cachetools iterates every class in the order keys were first inserted (its data dict: an
# update keeps a key's place); kvcache iterates in eviction order (README, "Migrating").  What
# both must agree on at every step: which keys are alive, their values, and the order
# popitem() takes them in, which for kvcache is also list(c).


def _eviction_order(c):
    """Return the keys in the order popitem() takes them, leaving c as it was."""
    d = copy.copy(c)        # cachetools' copy shares the timer only: popping it leaves c alone
    order = []
    while True:
        try:
            order.append(d.popitem()[0])
        except KeyError:
            return order


def _timed_pair(kind, maxsize, clock):
    ct = _cachetools()
    if kind == "TTLCache":
        return kvcache.TTLCache(maxsize, 5, timer=clock), ct.TTLCache(maxsize, 5, timer=clock)
    ttu = _value_ttu
    return kvcache.TLRUCache(maxsize, ttu, timer=clock), ct.TLRUCache(maxsize, ttu, timer=clock)


def _value_ttu(key, value, now):
    return now + 1 + value % 6


def test_ttl_first_insertion_order_is_not_kept():
    # the documented difference, pinned: an update or a read moves a key for kvcache only
    ct = _cachetools()
    clock = Clock()
    kv, ref = kvcache.TTLCache(10, 100, timer=clock), ct.TTLCache(10, 100, timer=clock)
    for c in (kv, ref):
        for k in (1, 2, 3):
            c[k] = k
        c[1] = 11
        c[2]
    assert list(ref) == [1, 2, 3]
    assert list(kv) == _eviction_order(ref) == [3, 1, 2]


@pytest.mark.parametrize("kind", ["TTLCache", "TLRUCache"])
def test_timed_caches_agree_with_cachetools_step_by_step(kind):
    from hypothesis import given, settings, strategies as st

    op = st.one_of(
        st.tuples(st.just("set"), st.integers(0, 7), st.integers(0, 20)),
        st.tuples(st.just("get"), st.integers(0, 7)),
        st.tuples(st.just("del"), st.integers(0, 7)),
        st.tuples(st.just("pop"), st.integers(0, 7)),
        st.tuples(st.just("popitem")),
        st.tuples(st.just("tick"), st.integers(1, 4)),
        st.tuples(st.just("expire")),
        st.tuples(st.just("copy")),
    )

    @settings(max_examples=150, deadline=None)
    @given(st.integers(1, 5), st.lists(op, max_size=40))
    def run(maxsize, ops):
        clock = Clock()
        kv, ref = _timed_pair(kind, maxsize, clock)
        for o in ops:
            results = []
            for c in (kv, ref):
                try:
                    if o[0] == "set":
                        c[o[1]] = o[2]
                        r = None
                    elif o[0] == "get":
                        r = c.get(o[1])
                    elif o[0] == "del":
                        del c[o[1]]
                        r = None
                    elif o[0] == "pop":
                        r = c.pop(o[1], "absent")
                    elif o[0] == "popitem":
                        r = c.popitem()
                    elif o[0] == "expire":
                        r = sorted(c.expire())
                    else:
                        r = None
                except KeyError:
                    r = KeyError
                results.append(r)
            if o[0] == "tick":
                clock.now += o[1]
            elif o[0] == "copy":
                kv, ref = copy.copy(kv), copy.copy(ref)
            assert results[0] == results[1], o
            assert len(kv) == len(ref) and set(kv) == set(ref)
            # cachetools' base lookup: its own reads would count as uses and reorder
            peek = type(ref).__mro__[2].__getitem__
            assert dict(kv.items()) == {k: peek(ref, k) for k in list(ref)}
            assert list(kv) == _eviction_order(ref)

    run()


# --- the audit of cachetools 8's documented behaviours (issue 18): what was not pinned yet


@pytest.mark.parametrize("name", ["Cache", "FIFOCache", "LRUCache", "LFUCache", "RRCache"])
def test_sizes_and_missing_as_cachetools(mod, name):
    cls = getattr(mod, name)
    c = cls(10, getsizeof=len)
    c["a"] = "xx"
    assert (c.currsize, c.maxsize, c.getsizeof("abc"), cls.getsizeof(object())) == (2, 10, 3, 1)
    with pytest.raises(ValueError, match="value too large"):
        c["b"] = "x" * 11
    with pytest.raises(ValueError, match="value size must be"):
        cls(10, getsizeof=lambda v: -1)["a"] = 1

    class Filling(cls):
        def __missing__(self, key):
            self[key] = key * 2
            return key * 2

    f = Filling(2)
    # get, pop and setdefault do not call __missing__; [] does
    assert (f[1], f.get(3), 3 in f, f.pop(4, "x"), f.setdefault(5, "y")) == (2, None, False, "x", "y")
    assert sorted(f) == [1, 5]


def test_ttl_timer_as_cachetools(mod):
    clock = Clock()
    clock.label = "mine"
    c = mod.TTLCache(5, 10, timer=clock)
    for k in range(4):
        c[k] = k
        clock.now += 1
    with c.timer as frozen:
        clock.now = 50
        assert (frozen, c.timer()) == (4, 4)      # time stands still inside `with`
    assert c.timer() == 50 and c.timer.label == "mine"   # other attributes reach the timer
    clock.now = 12
    assert c.expire() == [(0, 0), (1, 1), (2, 2)]        # the expired pairs, oldest first
    assert c.expire(100) == [(3, 3)]


def test_rr_choice_property(mod):
    import random
    assert mod.RRCache(3).choice is random.choice
    c = mod.RRCache(3, choice=min)
    for k in (5, 1, 2, 9):
        c[k] = k
    assert c.choice is min and sorted(c) == [2, 5, 9]


def test_keys_are_tuples_that_hash_once(mod):
    # cachetools 8 returns the plain argument tuple; kvcache's keys are a tuple subclass that
    # keeps its hash (a slow __hash__ runs once per call, not once per lookup): equal to the
    # plain tuple, hashing like it, a tuple everywhere one is expected
    calls = []

    class Slow:
        def __hash__(self):
            calls.append(1)
            return 7

    arg = Slow()
    key = mod.keys.hashkey(arg, 2)
    hash(key)
    hash(key)
    assert len(calls) == (1 if mod is kvcache else 2)
    assert key == (arg, 2) and hash(key) == hash((arg, 2)) and isinstance(key, tuple)
    assert (type(key) is tuple) == (mod is not kvcache)
