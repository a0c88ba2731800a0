"""cached / cachedmethod: cachetools 8's tests, run on kvcache and on cachetools itself.

Every scenario runs twice, once with `impl` = kvcache and once with
`impl` = cachetools (when installed), so each expectation is pinned by the
original.
"""

import copy
import gc
import pickle
import threading
import types
import weakref

import pytest

import kvcache
from kvcache import keys as kv_keys


def _kvcache_impl():
    return types.SimpleNamespace(
        name="kvcache",
        cached=kvcache.cached,
        cachedmethod=kvcache.cachedmethod,
        keys=kv_keys,
        Cache=kvcache.Cache,
        LRUCache=kvcache.LRUCache,
    )


def _cachetools_impl():
    cachetools = pytest.importorskip("cachetools")
    if int(cachetools.__version__.split(".")[0]) < 8:
        pytest.skip("the reference is cachetools 8")
    return types.SimpleNamespace(
        name="cachetools",
        cached=cachetools.cached,
        cachedmethod=cachetools.cachedmethod,
        keys=cachetools.keys,
        Cache=cachetools.Cache,
        LRUCache=cachetools.LRUCache,
    )


@pytest.fixture(params=["kvcache", "cachetools"])
def impl(request):
    return _kvcache_impl() if request.param == "kvcache" else _cachetools_impl()


@pytest.fixture(params=["Cache", "LRUCache", "dict"])
def make_cache(request, impl):
    if request.param == "dict":
        return lambda maxsize: {}
    cls = getattr(impl, request.param)
    return lambda maxsize: cls(maxsize=maxsize)


class CountedLock:
    def __init__(self):
        self.count = 0
        self._lock = threading.RLock()

    def __enter__(self):
        self.count += 1
        return self._lock.__enter__()

    def __exit__(self, *exc):
        return self._lock.__exit__(*exc)


class CountedCondition(CountedLock):
    def __init__(self):
        CountedLock.__init__(self)
        self._cond = threading.Condition(self._lock)
        self.wait_count = 0
        self.notify_count = 0

    def wait(self, timeout=None):
        self.wait_count += 1
        return self._cond.wait(timeout)

    def notify_all(self):
        self.notify_count += 1
        self._cond.notify_all()


class Counter:
    def __init__(self):
        self.count = -1

    def __call__(self, *args, **kwargs):
        self.count += 1
        return self.count


def error_func(*args, **kwargs):
    raise ValueError("test error")


# -- cached -------------------------------------------------------------------


def test_cache_info_type_is_exported_as_in_cachetools():
    @kvcache.cached(kvcache.LRUCache(4), info=True)
    def f(x):
        return x

    f(1)
    f(1)
    assert isinstance(f.cache_info(), kvcache.CacheInfo)
    assert f.cache_info() == kvcache.CacheInfo(1, 1, 4, 1)
    assert "CacheInfo" in kvcache.__all__


@pytest.mark.parametrize("info", [False, True])
def test_bound_cachedmethod_keeps_the_docstring(info):
    class A:
        def __init__(self):
            self.c = kvcache.LRUCache(4)

        @kvcache.cachedmethod(lambda self: self.c, info=info)
        def m(self, x):
            """Doc of m."""
            return x

    assert A().m.__doc__ == "Doc of m." and A.m.__doc__ == "Doc of m."


def test_cached_stores_through_an_overridden_setitem():
    log = []

    class Logged(kvcache.LRUCache):
        def __setitem__(self, key, value):
            log.append(key)
            super().__setitem__(key, value)

    @kvcache.cached(Logged(10))
    def f(x):
        return 2 * x

    assert f(1) == 2 and f(1) == 2
    assert log == [(1,)]


def test_decorator(impl, make_cache):
    cache = make_cache(2)
    wrapper = impl.cached(cache)(Counter())
    assert len(cache) == 0
    assert wrapper(0) == 0
    assert len(cache) == 1
    assert impl.keys.hashkey(0) in cache
    assert impl.keys.hashkey(1) not in cache
    assert wrapper(1) == 1
    assert len(cache) == 2
    assert impl.keys.hashkey(1.0) in cache
    assert wrapper(1) == 1
    assert wrapper(1.0) == 1
    assert len(cache) == 2


def test_decorator_typed(impl, make_cache):
    cache = make_cache(3)
    wrapper = impl.cached(cache, key=impl.keys.typedkey)(Counter())
    assert wrapper(0) == 0
    assert wrapper(1) == 1
    assert impl.keys.typedkey(1) in cache
    assert impl.keys.typedkey(1.0) not in cache
    assert wrapper(1) == 1
    assert wrapper(1.0) == 2
    assert len(cache) == 3
    assert wrapper(1.0) == 2


def test_decorator_kwargs(impl, make_cache):
    cache = make_cache(10)
    wrapper = impl.cached(cache)(lambda *a, **kw: (a, sorted(kw.items())))
    assert wrapper(1, x=2, y=3) == ((1,), [("x", 2), ("y", 3)])
    assert wrapper(1, y=3, x=2) == ((1,), [("x", 2), ("y", 3)])
    assert len(cache) == 1  # keyword order does not matter for hashkey


def test_decorator_lock(impl, make_cache):
    cache = make_cache(2)
    lock = CountedLock()
    wrapper = impl.cached(cache, lock=lock)(Counter())
    assert wrapper(0) == 0
    assert lock.count == 2
    assert wrapper(1) == 1
    assert lock.count == 4
    assert wrapper(1) == 1
    assert lock.count == 5


@pytest.mark.parametrize("separate_lock", [False, True])
def test_decorator_cond(impl, make_cache, separate_lock):
    cache = make_cache(2)
    cond = CountedCondition()
    lock = CountedLock() if separate_lock else cond
    if separate_lock:
        lock._lock = cond._lock  # the condition must be built on the lock
        wrapper = impl.cached(cache, lock=lock, condition=cond)(Counter())
    else:
        wrapper = impl.cached(cache, condition=cond)(Counter())
    assert wrapper(0) == 0
    assert lock.count == 3
    assert cond.notify_count == 1
    assert wrapper(1) == 1
    assert lock.count == 6
    assert cond.notify_count == 2
    assert wrapper(1) == 1
    assert lock.count == 7
    assert cond.notify_count == 2
    assert cond.wait_count == 0  # nobody else was computing


def test_decorator_cond_error(impl, make_cache):
    cache = make_cache(2)
    cond = CountedCondition()
    wrapper = impl.cached(cache, condition=cond)(error_func)
    with pytest.raises(ValueError):
        wrapper(0)
    assert len(cache) == 0
    assert cond.count == 2
    assert cond.notify_count == 1
    # the pending key was released, otherwise this would deadlock
    with pytest.raises(ValueError):
        wrapper(0)
    assert cond.count == 4


def test_decorator_exception_not_chained(impl, make_cache):
    wrapper = impl.cached(make_cache(2))(lambda i: "abc"[i])
    with pytest.raises(IndexError) as info:
        wrapper(15)
    assert info.value.__context__ is None


def test_decorator_wrapped(impl, make_cache):
    cache = make_cache(2)
    func = Counter()
    wrapper = impl.cached(cache)(func)
    assert wrapper.__wrapped__ is func
    assert wrapper.__wrapped__(0) == 0
    assert len(cache) == 0
    assert wrapper(0) == 1
    assert wrapper(0) == 1


def test_decorator_attributes(impl, make_cache):
    cache = make_cache(2)
    lock = CountedLock()
    cond = CountedCondition()
    w = impl.cached(cache)(Counter())
    assert (w.cache, w.cache_key, w.cache_lock, w.cache_condition) == (
        cache,
        impl.keys.hashkey,
        None,
        None,
    )
    assert w.cache is cache
    assert not hasattr(w, "cache_info")
    w = impl.cached(cache, lock=lock)(Counter())
    assert w.cache_lock is lock and w.cache_condition is None
    w = impl.cached(cache, condition=cond)(Counter())
    assert w.cache_lock is cond and w.cache_condition is cond
    w = impl.cached(cache, lock=lock, condition=cond)(Counter())
    assert w.cache_lock is lock and w.cache_condition is cond


def test_decorator_update_wrapper(impl):
    def f(x: int) -> int:
        """doc"""
        return x

    f.extra = 1
    w = impl.cached({})(f)
    assert (w.__name__, w.__qualname__, w.__doc__, w.__module__) == (
        f.__name__,
        f.__qualname__,
        "doc",
        f.__module__,
    )
    assert w.__annotations__ == f.__annotations__
    assert w.extra == 1


@pytest.mark.parametrize("kind", ["plain", "lock", "cond"])
def test_decorator_clear(impl, make_cache, kind):
    cache = make_cache(2)
    lock = CountedCondition()
    kwargs = {"plain": {}, "lock": {"lock": lock}, "cond": {"condition": lock}}[kind]
    wrapper = impl.cached(cache, **kwargs)(Counter())
    assert wrapper(0) == 0
    before = lock.count
    wrapper.cache_clear()
    assert len(cache) == 0
    assert lock.count == before + (kind != "plain")


@pytest.mark.parametrize("kind", ["plain", "lock", "cond", "lock_cond"])
def test_decorator_info(impl, kind):
    cache = impl.Cache(maxsize=2)
    lock = CountedLock()
    cond = CountedCondition()
    lock._lock = cond._lock
    kwargs = {
        "plain": {},
        "lock": {"lock": lock},
        "cond": {"condition": cond},
        "lock_cond": {"lock": lock, "condition": cond},
    }[kind]
    wrapper = impl.cached(cache, info=True, **kwargs)(Counter())
    assert wrapper.cache_info() == (0, 0, 2, 0)
    assert wrapper(0) == 0
    assert wrapper.cache_info() == (0, 1, 2, 1)
    assert wrapper(1) == 1
    assert wrapper.cache_info() == (0, 2, 2, 2)
    assert wrapper(0) == 0
    info = wrapper.cache_info()
    assert info == (1, 2, 2, 2)
    assert (info.hits, info.misses, info.maxsize, info.currsize) == (1, 2, 2, 2)
    wrapper.cache_clear()
    assert len(cache) == 0
    assert wrapper.cache_info() == (0, 0, 2, 0)
    used = lock if kind in ("lock", "lock_cond") else cond
    assert used.count == {"plain": 0, "lock": 11, "cond": 13, "lock_cond": 13}[kind]


def test_decorator_info_dict(impl):
    cache = {}
    wrapper = impl.cached(cache, info=True)(Counter())
    assert wrapper.cache_info() == (0, 0, None, 0)
    wrapper(0)
    wrapper(1)
    wrapper(0)
    assert wrapper.cache_info() == (1, 2, None, 2)
    wrapper.cache_clear()
    assert wrapper.cache_info() == (0, 0, None, 0)


@pytest.mark.parametrize("kind", ["plain", "lock", "cond"])
def test_zero_size_cache(impl, kind):
    cache = impl.Cache(maxsize=0)
    cond = CountedCondition()
    kwargs = {"plain": {}, "lock": {"lock": cond}, "cond": {"condition": cond}}[kind]
    wrapper = impl.cached(cache, info=True, **kwargs)(Counter())
    assert wrapper(0) == 0
    assert wrapper(0) == 1  # value too large: never stored
    assert len(cache) == 0
    assert wrapper.cache_info() == (0, 2, 0, 0)


def test_cache_none_rejected(impl):
    with pytest.raises(TypeError):
        impl.cached(None)


def test_wrapper_descriptor_copy_pickle(impl):
    w = impl.cached({})(Counter())

    class A:
        m = w

    a = A()
    assert isinstance(a.m, types.MethodType) and a.m.__self__ is a
    assert A.m is w
    assert copy.copy(w) is w
    assert copy.deepcopy(w) is w
    assert pickle.loads(pickle.dumps(module_cached[impl.name])) is module_cached[impl.name]


def test_condition_stampede(impl):
    # condition= makes concurrent callers of one missing key wait for the
    # first one's result: the function runs once.
    n = 8
    calls = []
    release = threading.Event()

    def slow(x):
        calls.append(x)
        release.wait(5)
        return object()

    wrapper = impl.cached({}, condition=threading.Condition())(slow)
    results = []
    threads = [threading.Thread(target=lambda: results.append(wrapper(1))) for _ in range(n)]
    for t in threads:
        t.start()
    while not calls:
        threading.Event().wait(0.001)
    threading.Event().wait(0.05)
    release.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert len(results) == n and all(r is results[0] for r in results)


def _module_func(x):
    return x


module_cached = {}
module_cached["kvcache"] = kvcache.cached({})(_module_func)
module_cached["kvcache"].__qualname__ = "module_cached_kvcache"
module_cached_kvcache = module_cached["kvcache"]
try:
    import cachetools as _ct

    module_cached["cachetools"] = _ct.cached({})(_module_func)
    module_cached["cachetools"].__qualname__ = "module_cached_cachetools"
    module_cached_cachetools = module_cached["cachetools"]
except ImportError:  # pragma: no cover
    pass


# -- cachedmethod -------------------------------------------------------------


def make_classes(impl):
    cachedmethod, keys = impl.cachedmethod, impl.keys

    class Cached:
        def __init__(self, cache, count=0):
            self.cache = cache
            self.count = count

        @cachedmethod(lambda self: self.cache)
        def get(self, value, *args):
            self.count += 1
            return self.count

        @cachedmethod(lambda self: self.cache, key=keys.typedmethodkey)
        def get_typed(self, value):
            self.count += 1
            return self.count

        @cachedmethod(lambda self: self.cache, info=True)
        def get_info(self, value):
            self.count += 1
            return self.count

    class Locked:
        def __init__(self, cache):
            self.cache = cache
            self.count = 0
            self.lock = CountedCondition()

        @cachedmethod(lambda self: self.cache, lock=lambda self: self.lock)
        def get(self, value):
            self.count += 1
            return self.count

        @cachedmethod(lambda self: self.cache, condition=lambda self: self.lock)
        def get_cond(self, value):
            self.count += 1
            return self.count

        @cachedmethod(lambda self: self.cache, lock=lambda self: self.lock, info=True)
        def get_lock_info(self, value):
            self.count += 1
            return self.count

    class Unhashable:
        def __init__(self, cache):
            self.cache = cache

        @cachedmethod(lambda self: self.cache)
        def get_default(self, value):
            return value

        @cachedmethod(lambda self: self.cache, key=keys.hashkey)
        def get_hashkey(self, value):
            return value

        def __hash__(self):
            raise TypeError("unhashable type")

    return Cached, Locked, Unhashable


def test_method_dict(impl):
    Cached, _, _ = make_classes(impl)
    c = Cached({})
    assert [c.get(0), c.get(1), c.get(1), c.get(1.0), c.get(1.0)] == [1, 2, 2, 2, 2]
    c.cache.clear()
    assert c.get(1) == 3


def test_method_typed(impl):
    Cached, _, _ = make_classes(impl)
    c = Cached(impl.LRUCache(maxsize=2))
    got = [c.get_typed(v) for v in (0, 1, 1, 1.0, 1.0, 0.0, 0)]
    assert got == [1, 2, 2, 3, 3, 4, 5]


def test_method_nospace(impl):
    Cached, _, _ = make_classes(impl)
    c = Cached(impl.LRUCache(maxsize=0))
    assert [c.get(0), c.get(1), c.get(1), c.get(1.0)] == [1, 2, 3, 4]


def test_method_per_instance(impl):
    Cached, _, _ = make_classes(impl)
    a, b = Cached({}), Cached({}, count=10)
    assert (a.get(0), b.get(0), a.get(0), b.get(0)) == (1, 11, 1, 11)
    shared = {}
    a, b = Cached(shared), Cached(shared, count=10)
    assert (a.get(0), b.get(0)) == (1, 1)  # methodkey leaves self out


def test_method_locked(impl):
    _, Locked, _ = make_classes(impl)
    c = Locked({})
    assert c.get(0) == 1
    assert c.lock.count == 2
    assert c.get(1) == 2
    assert c.lock.count == 4
    assert c.get(1) == 2
    assert c.lock.count == 5
    c.cache.clear()
    assert c.get(1) == 3
    assert c.lock.count == 7
    c.get.cache_clear()
    assert c.lock.count == 8


def test_method_condition(impl):
    _, Locked, _ = make_classes(impl)
    c = Locked(impl.LRUCache(maxsize=0))
    assert c.get_cond(0) == 1
    assert c.lock.count == 3
    assert c.lock.notify_count == 1
    assert c.get_cond(0) == 2  # nothing fits
    assert c.lock.count == 6
    c = Locked({})
    assert [c.get_cond(0), c.get_cond(0)] == [1, 1]
    assert c.lock.count == 4
    assert c.lock.notify_count == 1


def test_method_info(impl):
    Cached, Locked, _ = make_classes(impl)
    c = Cached(impl.LRUCache(maxsize=2))
    assert c.get_info.cache_info() == (0, 0, 2, 0)
    c.get_info(0)
    c.get_info(0)
    c.get_info(1)
    assert c.get_info.cache_info() == (1, 2, 2, 2)
    other = Cached(impl.LRUCache(maxsize=2))
    assert other.get_info.cache_info() == (0, 0, 2, 0)  # counts are per instance
    c.get_info.cache_clear()
    assert c.get_info.cache_info() == (0, 0, 2, 0)
    assert not hasattr(c.get, "cache_info")
    lk = Locked({})
    lk.get_lock_info(0)
    lk.get_lock_info(0)
    assert lk.get_lock_info.cache_info() == (1, 1, None, 1)
    assert lk.lock.count == 4


def test_method_unhashable_self(impl):
    _, _, Unhashable = make_classes(impl)
    c = Unhashable(impl.LRUCache(maxsize=0))
    assert c.get_default(0) == 0
    assert c.get_default(1) == 1
    with pytest.raises(TypeError):
        c.get_hashkey(0)


def test_method_wrapped_and_attributes(impl):
    Cached, Locked, _ = make_classes(impl)
    cache = {}
    c = Cached(cache)
    assert c.get.__wrapped__(c, 0) == 1
    assert len(cache) == 0
    assert c.get(0) == 2
    assert c.get.cache is cache
    assert c.get.cache_lock is None
    assert c.get.cache_condition is None
    assert c.get.cache_key(0) == impl.keys.methodkey(c, 0)
    assert c.get.__name__ == "get"
    assert c.get.__qualname__.endswith("Cached.get")
    lk = Locked({})
    assert lk.get.cache_lock is lk.lock
    assert lk.get_cond.cache_lock is lk.lock
    assert lk.get_cond.cache_condition is lk.lock


def test_method_clear(impl):
    Cached, _, _ = make_classes(impl)
    cache = {}
    c = Cached(cache)
    c.get(0)
    assert len(cache) == 1
    c.get.cache_clear()
    assert len(cache) == 0


def test_method_class_access(impl):
    Cached, _, _ = make_classes(impl)
    c = Cached({})
    assert Cached.get(c, 0) == 1
    assert Cached.get(c, 0) == 1
    assert Cached.get(self=c, value=0) == 2  # a keyword is another key
    assert Cached.get.__wrapped__.__name__ == "get"
    with pytest.raises(TypeError):
        Cached.get()


def test_method_super(impl):
    cachedmethod = impl.cachedmethod

    class Base:
        def __init__(self):
            self.cache = {}
            self.base_cache = {}

        @cachedmethod(lambda self: self.base_cache, info=True)
        def get(self, x):
            return ("base", x)

    class Derived(Base):
        @cachedmethod(lambda self: self.cache, info=True)
        def get(self, x):
            return ("derived", super().get(x))

    d = Derived()
    assert d.get(1) == ("derived", ("base", 1))
    assert d.get(1) == ("derived", ("base", 1))
    assert d.get.cache_info() == (1, 1, None, 1)
    assert super(Derived, d).get.cache_info() == (0, 1, None, 1)


def test_method_errors(impl):
    cachedmethod = impl.cachedmethod
    with pytest.raises(TypeError):
        cachedmethod({})  # cache must be a callable taking self

    desc = cachedmethod(lambda self: {})(lambda self: 1)
    with pytest.raises(TypeError):
        desc()  # called directly, e.g. under @staticmethod

    with pytest.raises((TypeError, RuntimeError)):

        class TwoNames:
            a = desc
            b = desc

    with pytest.raises(TypeError):

        class A:
            @classmethod
            @cachedmethod(lambda cls: {})
            def f(cls):
                return 1

        A.f()


def test_method_no_instance_kept_alive(impl):
    # As in cachetools 8, an instance holds its bound wrappers and they hold it: a cycle the
    # collector frees.  What must not happen is the cache (shared here, outliving every
    # instance) or the decorator keeping an instance alive (functools gh-102618).
    Cached, Locked, _ = make_classes(impl)
    shared = {}
    for cls, methods in ((Cached, ("get", "get_info")), (Locked, ("get_cond", "get_lock_info"))):
        obj = cls(shared)
        for m in methods:
            getattr(obj, m)(1)
            getattr(obj, m)(1)
        getattr(obj, methods[0])(2)
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None
        assert len(shared) > 0       # the cache outlives the instance, holding no reference


def _pickle_me_class(cachedmethod):
    class PickleMe:
        def __init__(self):
            self.cache = {}

        @cachedmethod(lambda self: self.cache, info=True)
        def get(self, x):
            return x

    return PickleMe


PickleMeKvcache = _pickle_me_class(kvcache.cachedmethod)
PickleMeKvcache.__qualname__ = PickleMeKvcache.__name__ = "PickleMeKvcache"
try:
    import cachetools as _ct

    PickleMeCachetools = _pickle_me_class(_ct.cachedmethod)
    PickleMeCachetools.__qualname__ = PickleMeCachetools.__name__ = "PickleMeCachetools"
except ImportError:  # pragma: no cover
    pass


def test_method_pickle_instance(impl):
    cls = PickleMeKvcache if impl.name == "kvcache" else PickleMeCachetools
    c = cls()
    assert c.get(1) == 1
    assert c.get(1) == 1
    assert c.get.cache_info() == (1, 1, None, 1)
    for c2 in (pickle.loads(pickle.dumps(c)), copy.deepcopy(c)):
        assert c2.get.cache_info() == (0, 0, None, 1)  # counts restart in a copy
        assert c2.get(1) == 1
        assert c2.get.cache_info() == (1, 0, None, 1)
    bound = pickle.loads(pickle.dumps(c.get))
    assert bound(2) == 2
    assert bound.cache_info().currsize == 2


def test_method_class_access_copy_pickle(impl):
    # Cls.method, an alias of it, and its copies and pickles all call through the class (issue 18)
    cls = PickleMeKvcache if impl.name == "kvcache" else PickleMeCachetools
    alias = cls.get
    for m in (alias, copy.copy(alias), copy.deepcopy(alias), pickle.loads(pickle.dumps(alias))):
        obj = cls()
        assert m(obj, 3) == 3 and m(obj, 3) == 3
        assert obj.get.cache_info() == (1, 1, None, 1)


def test_method_threads_share_one_computation(impl):
    cachedmethod = impl.cachedmethod
    calls = []
    release = threading.Event()

    class A:
        def __init__(self):
            self.cache = {}
            self.cond = threading.Condition()

        @cachedmethod(lambda self: self.cache, condition=lambda self: self.cond)
        def get(self, x):
            calls.append(x)
            release.wait(5)
            return object()

    a = A()
    results = []
    threads = [threading.Thread(target=lambda: results.append(a.get(7))) for _ in range(6)]
    for t in threads:
        t.start()
    while not calls:
        threading.Event().wait(0.001)
    threading.Event().wait(0.05)
    release.set()
    for t in threads:
        t.join()
    assert calls == [7]
    assert all(r is results[0] for r in results) and len(results) == 6


def test_recursive_store_overwrites_as_cachetools(impl):
    # the outer call's value replaces what a recursive call stored meanwhile
    cache = impl.LRUCache(maxsize=4)
    depth = []

    @impl.cached(cache)
    def f(x):
        depth.append(x)
        if len(depth) == 1:
            f(x)
        return len(depth)

    assert f(1) == 2
    assert cache[impl.keys.hashkey(1)] == 2
    assert f(1) == 2


def test_on_evict_called_through_cached():
    evicted = []
    cache = kvcache.LRUCache(2, on_evict=lambda k, v: evicted.append((k, v)))
    f = kvcache.cached(cache)(lambda x: x * 10)
    for x in (1, 2, 3):
        f(x)
    assert evicted == [(kv_keys.hashkey(1), 10)]
