"""lru_cache / cache: CPython's test_functools TestLRU, run on functools' C version and on kvcache.

Also lfu_cache / fifo_cache / rr_cache against cachetools.func.
"""

import builtins
import copy
import functools
import gc
import pickle
import random
import sys
import threading
import time
import unittest.mock
import weakref
from inspect import Signature

import pytest

import kvcache


@pytest.fixture(params=["functools", "kvcache"])
def module(request):
    return functools if request.param == "functools" else kvcache


def test_cache(module):
    @module.cache
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert [fib(n) for n in range(16)] == [0, 1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610]
    assert fib.cache_info() == functools._CacheInfo(hits=28, misses=16, maxsize=None, currsize=16)
    fib.cache_clear()
    assert fib.cache_info() == functools._CacheInfo(hits=0, misses=0, maxsize=None, currsize=0)


def test_cache_info_type(module):
    f = module.lru_cache()(lambda x: x)
    info = f.cache_info()
    assert type(info) is functools._CacheInfo
    assert info._fields == ("hits", "misses", "maxsize", "currsize")


def test_lru(module):
    def orig(x, y):
        return 3 * x + y

    f = module.lru_cache(maxsize=20)(orig)
    assert f.cache_info() == (0, 0, 20, 0)
    rng = random.Random(1)
    domain = range(5)
    for _ in range(1000):
        x, y = rng.choice(domain), rng.choice(domain)
        assert f(x, y) == orig(x, y)
    hits, misses, maxsize, currsize = f.cache_info()
    assert hits > misses
    assert hits + misses == 1000
    assert currsize == 20

    f.cache_clear()
    assert f.cache_info() == (0, 0, 20, 0)
    f(x, y)
    assert f.cache_info() == (0, 1, 20, 1)

    assert f.__wrapped__ is orig
    f.__wrapped__(x, y)
    assert f.cache_info() == (0, 1, 20, 1)

    # size zero means "never cache"
    cnt = 0

    @module.lru_cache(0)
    def f():
        nonlocal cnt
        cnt += 1
        return 20

    assert f.cache_info().maxsize == 0
    for _ in range(5):
        assert f() == 20
    assert cnt == 5
    assert f.cache_info() == (0, 5, 0, 0)

    cnt = 0

    @module.lru_cache(1)
    def f():
        nonlocal cnt
        cnt += 1
        return 20

    for _ in range(5):
        assert f() == 20
    assert cnt == 1
    assert f.cache_info() == (4, 1, 1, 1)

    cnt = 0

    @module.lru_cache(2)
    def f(x):
        nonlocal cnt
        cnt += 1
        return x * 10

    for x in 7, 9, 7, 9, 7, 9, 8, 8, 8, 9, 9, 9, 8, 8, 8, 7:
        assert f(x) == x * 10
    assert cnt == 4
    assert f.cache_info() == (12, 4, 2, 2)


def test_lru_no_args(module):
    @module.lru_cache
    def square(x):
        return x**2

    assert list(map(square, [10, 20, 10])) == [100, 400, 100]
    assert square.cache_info() == (1, 2, 128, 2)


def test_lru_bug_35780(module):
    # a recursive call that stores the key first must not leave the cache over-full
    once = True

    @module.lru_cache(maxsize=10)
    def f(x):
        nonlocal once
        rv = f".{x}."
        if x == 20 and once:
            once = False
            rv = f(x)
        return rv

    for x in range(15):
        assert f(x) == f".{x}."
    assert f.cache_info().currsize == 10
    assert f(20) == ".20."
    assert f.cache_info().currsize == 10


def test_lru_bug_36650(module):
    @module.lru_cache()
    def f(x):
        pass

    f(0)
    f(0, **{})
    assert f.cache_info().hits == 1


def test_lru_hash_only_once(module):
    # each argument is hashed exactly once per call, and never on eviction
    @module.lru_cache(maxsize=1)
    def f(x, y):
        return x * 3 + y

    mock_int = unittest.mock.Mock()
    mock_int.__mul__ = unittest.mock.Mock(return_value=15)
    mock_int.__hash__ = unittest.mock.Mock(return_value=999)

    assert f(mock_int, 1) == 16
    assert mock_int.__hash__.call_count == 1
    assert f.cache_info() == (0, 1, 1, 1)
    assert f(mock_int, 1) == 16
    assert mock_int.__hash__.call_count == 2
    assert f.cache_info() == (1, 1, 1, 1)
    assert f(6, 2) == 20  # evicts the mock
    assert mock_int.__hash__.call_count == 2
    assert f.cache_info() == (1, 2, 1, 1)
    assert f(mock_int, 1) == 16
    assert mock_int.__hash__.call_count == 3
    assert f.cache_info() == (1, 3, 1, 1)


def test_lru_reentrancy_with_len(module):
    old_len = builtins.len
    try:
        builtins.len = module.lru_cache(4)(len)
        for i in [0, 0, 1, 2, 3, 3, 4, 5, 6, 1, 7, 2, 1]:
            assert len("abcdefghijklmn"[:i]) == i
    finally:
        builtins.len = old_len


def test_lru_star_arg_handling(module):
    @module.lru_cache()
    def f(*args):
        return args

    assert f(1, 2) == (1, 2)
    assert f((1, 2)) == ((1, 2),)


def test_lru_type_error(module):
    @module.lru_cache(maxsize=None)
    def infinite_cache(o):
        pass

    @module.lru_cache(maxsize=10)
    def limited_cache(o):
        pass

    with pytest.raises(TypeError):
        infinite_cache([])
    with pytest.raises(TypeError):
        limited_cache([])


def test_lru_with_maxsize_none(module):
    @module.lru_cache(maxsize=None)
    def fib(n):
        return n if n < 2 else fib(n - 1) + fib(n - 2)

    assert [fib(n) for n in range(16)][-1] == 610
    assert fib.cache_info() == (28, 16, None, 16)
    fib.cache_clear()
    assert fib.cache_info() == (0, 0, None, 0)


def test_lru_with_maxsize_negative(module):
    @module.lru_cache(maxsize=-10)
    def eq(n):
        return n

    for _ in (0, 1):
        assert [eq(n) for n in range(150)] == list(range(150))
    assert eq.cache_info() == (0, 300, 0, 0)


def test_lru_maxsize_is_an_index_sized_int(module):
    f = module.lru_cache(maxsize=True)(lambda x: x)
    assert f.cache_info().maxsize == 1 and type(f.cache_info().maxsize) is int
    assert f.cache_parameters()["maxsize"] is True               # as given (functools.py)
    with pytest.raises(OverflowError):
        module.lru_cache(maxsize=2**70)(lambda x: x)


@pytest.mark.parametrize("maxsize", [None, 128, 0])
def test_lru_with_exceptions(module, maxsize):
    # exceptions pass through without a chained context, and are not cached
    @module.lru_cache(maxsize)
    def func(i):
        return "abc"[i]

    assert func(0) == "a"
    with pytest.raises(IndexError) as cm:
        func(15)
    assert cm.value.__context__ is None
    with pytest.raises(IndexError):
        func(15)
    assert func.cache_info().currsize == (0 if maxsize == 0 else 1)


@pytest.mark.parametrize("maxsize", [None, 128])
def test_lru_with_types(module, maxsize):
    @module.lru_cache(maxsize=maxsize, typed=True)
    def square(x):
        return x * x

    assert square(3) == 9 and type(square(3)) is int
    assert square(3.0) == 9.0 and type(square(3.0)) is float
    assert square(x=3) == 9 and type(square(x=3)) is int
    assert square(x=3.0) == 9.0 and type(square(x=3.0)) is float
    assert square.cache_info().hits == 4
    assert square.cache_info().misses == 4


def test_lru_cache_typed_is_not_recursive(module):
    cached = module.lru_cache(typed=True)(repr)
    assert cached(1) == "1"
    assert cached(True) == "True"
    assert cached(1.0) == "1.0"
    assert cached(0) == "0"
    assert cached(False) == "False"
    assert cached(0.0) == "0.0"
    assert cached((1,)) == "(1,)"
    assert cached((True,)) == "(1,)"
    assert cached((1.0,)) == "(1,)"

    class T(tuple):
        pass

    assert cached(T((1,))) == "(1,)"
    assert cached(T((True,))) == "(1,)"


@pytest.mark.parametrize("maxsize", [128, None])
def test_lru_with_keyword_args(module, maxsize):
    @module.lru_cache(maxsize)
    def fib(n):
        return n if n < 2 else fib(n=n - 1) + fib(n=n - 2)

    assert [fib(n=number) for number in range(16)][-1] == 610
    assert fib.cache_info() == (28, 16, maxsize, 16)
    fib.cache_clear()
    assert fib.cache_info() == (0, 0, maxsize, 0)


def test_kwargs_order(module):
    # PEP 468: keyword order is significant for lru_cache
    @module.lru_cache(maxsize=10)
    def f(**kwargs):
        return list(kwargs.items())

    assert f(a=1, b=2) == [("a", 1), ("b", 2)]
    assert f(b=2, a=1) == [("b", 2), ("a", 1)]
    assert f.cache_info() == (0, 2, 10, 2)


def test_positional_and_keyword_are_different_keys(module):
    f = module.lru_cache(10)(lambda x=0: object())
    assert f(1) is not f(x=1)
    assert f(1) is f(1)
    assert f(x=1) is f(x=1)
    assert f.cache_info() == (4, 2, 10, 2)


def test_every_call_protocol_gives_the_same_keys(module):
    # kvcache's wrapper takes vectorcall as well as tp_call; both must build functools' keys
    f = module.lru_cache(10)(lambda *a, **k: object())
    first = f(1)
    assert f(*[1]) is first and f(1, **{}) is first
    assert functools.partial(f)(1) is first and f.__call__(1) is first
    assert type(f).__call__(f, 1) is first
    two = f("a", "b")
    assert f(*("a", "b")) is two and functools.partial(f, "a")("b") is two
    kw = f(1, x=2)
    assert f(1, **{"x": 2}) is kw and functools.partial(f, x=2)(1) is kw
    assert f(x=2, y=3) is not f(y=3, x=2)
    assert f.cache_info() == (9, 5, 10, 5)
    # bound as a method (vectorcall through a method object): self is an argument
    class C:
        m = f
    c = C()
    assert c.m(1) is c.m(1) is not first
    assert f.cache_info() == (10, 6, 10, 6)


def test_equal_keys_share_an_entry(module):
    f = module.lru_cache(10)(lambda x: x)
    assert f(1) == 1  # a lone exact int is its own key ...
    assert type(f(1.0)) is float  # ... so 1.0 (key (1.0,)) is another entry, as in functools
    assert f(True) == 1.0 and type(f(True)) is float  # (True,) == (1.0,)
    g = module.lru_cache(10)(lambda x, y: x)
    assert g(1, 0) == 1 and g(1.0, 0) == 1 and g(True, False) == 1  # tuples compare equal
    assert f.cache_info() == (2, 2, 10, 2)
    assert g.cache_info() == (2, 1, 10, 1)


def test_lru_cache_decoration(module):
    def f(zomg: "zomg_annotation"):  # noqa: F821
        """f doc string"""
        return 42

    g = module.lru_cache()(f)
    for attr in functools.WRAPPER_ASSIGNMENTS:
        assert getattr(g, attr) == getattr(f, attr)
    assert g.__wrapped__ is f
    f.custom = 1
    assert module.lru_cache()(f).custom == 1


def test_lru_cache_threaded(module):
    n, m = 5, 11

    def orig(x, y):
        return 3 * x + y

    f = module.lru_cache(maxsize=n * m)(orig)
    start = threading.Event()
    errors = []

    def full(k):
        start.wait(10)
        for _ in range(m):
            if f(k, 0) != orig(k, 0):
                errors.append(k)

    def clear():
        start.wait(10)
        for _ in range(2 * m):
            f.cache_clear()

    orig_si = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=full, args=[k]) for k in range(n)]
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
        hits, misses, maxsize, currsize = f.cache_info()
        # hit and miss counts are exact, as in CPython's C version
        assert misses == n
        assert hits == m * n - misses
        assert currsize == n

        threads = [threading.Thread(target=clear)]
        threads += [threading.Thread(target=full, args=[k]) for k in range(n)]
        start.clear()
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(orig_si)
    assert not errors


def test_lru_cache_threaded2(module):
    # simultaneous calls with the same argument each miss and call the function
    n, m = 5, 7
    start = threading.Barrier(n + 1)
    pause = threading.Barrier(n + 1)
    stop = threading.Barrier(n + 1)
    errors = []

    @module.lru_cache(maxsize=m * n)
    def f(x):
        pause.wait(10)
        return 3 * x

    assert f.cache_info() == (0, 0, m * n, 0)

    def test():
        for i in range(m):
            start.wait(10)
            if f(i) != 3 * i:
                errors.append(i)
            stop.wait(10)

    threads = [threading.Thread(target=test) for _ in range(n)]
    for t in threads:
        t.start()
    try:
        for i in range(m):
            start.wait(10)
            stop.reset()
            pause.wait(10)
            start.reset()
            stop.wait(10)
            pause.reset()
            assert f.cache_info() == (0, (i + 1) * n, m * n, i + 1)
    finally:
        for t in threads:
            t.join()
    assert not errors


def test_lru_cache_threaded3(module):
    @module.lru_cache(maxsize=2)
    def f(x):
        time.sleep(0.01)
        return 3 * x

    results = {}

    def test(i, x):
        results[i] = f(x) == 3 * x

    threads = [threading.Thread(target=test, args=(i, v)) for i, v in enumerate([1, 2, 2, 3, 2])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: True for i in range(5)}


def test_concurrent_misses_each_call(module):
    # the opposite of memoize's single flight: N concurrent misses, N calls (as functools)
    n = 6
    barrier = threading.Barrier(n)
    calls = []

    @module.lru_cache(maxsize=16)
    def f(x):
        calls.append(x)
        barrier.wait(10)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(f(1))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == n
    assert f.cache_info() == (0, n, 16, 1)
    assert f(1) is results[0]  # the first stored result is kept


def test_need_for_rlock(module):
    # a reentrant call from inside a key's __eq__ must not deadlock
    @module.lru_cache(maxsize=10)
    def test_func(x):
        return x

    class DoubleEq:
        def __init__(self, x):
            self.x = x

        def __hash__(self):
            return self.x

        def __eq__(self, other):
            if self.x == 2:
                test_func(DoubleEq(1))
            return self.x == other.x

    test_func(DoubleEq(1))
    test_func(DoubleEq(2))
    assert test_func(DoubleEq(2)) == DoubleEq(2)


def test_key_eq_mutating_the_cache(module):
    # __eq__ that clears the cache mid-lookup: the lookup restarts, nothing breaks
    @module.lru_cache(maxsize=4)
    def f(x):
        return ("v", x.v if isinstance(x, Evil) else x)

    class Evil:
        armed = False

        def __init__(self, v):
            self.v = v

        def __hash__(self):
            return 7

        def __eq__(self, other):
            if Evil.armed:
                Evil.armed = False
                f.cache_clear()
            return isinstance(other, Evil) and self.v == other.v

    assert f(Evil(1)) == ("v", 1)
    Evil.armed = True
    assert f(Evil(2)) == ("v", 2)
    assert f(Evil(1)) == ("v", 1)
    for i in range(10):
        f(i)
    assert f.cache_info().currsize == 4


def test_lru_method(module):
    class X(int):
        f_cnt = 0

        @module.lru_cache(2)
        def f(self, x):
            self.f_cnt += 1
            return x * 10 + self

    a, b, c = X(5), X(5), X(7)
    assert X.f.cache_info() == (0, 0, 2, 0)
    for x in 1, 2, 2, 3, 1, 1, 1, 2, 3, 3:
        assert a.f(x) == x * 10 + 5
    assert (a.f_cnt, b.f_cnt, c.f_cnt) == (6, 0, 0)
    assert X.f.cache_info() == (4, 6, 2, 2)
    for x in 1, 2, 1, 1, 1, 1, 3, 2, 2, 2:
        assert b.f(x) == x * 10 + 5
    assert (a.f_cnt, b.f_cnt, c.f_cnt) == (6, 4, 0)
    assert X.f.cache_info() == (10, 10, 2, 2)
    for x in 2, 1, 1, 1, 1, 2, 1, 3, 2, 1:
        assert c.f(x) == x * 10 + 7
    assert (a.f_cnt, b.f_cnt, c.f_cnt) == (6, 4, 5)
    assert X.f.cache_info() == (15, 15, 2, 2)
    assert a.f.cache_info() == X.f.cache_info()


@functools.lru_cache()
def functools_cached_func(x, y):
    return 3 * x + y


@kvcache.lru_cache()
def kvcache_cached_func(x, y):
    return 3 * x + y


class Methods:
    @functools.lru_cache()
    def functools_meth(self, x, y):
        return 3 * x + y

    @staticmethod
    @functools.lru_cache()
    def functools_staticmeth(x, y):
        return 3 * x + y

    @kvcache.lru_cache()
    def kvcache_meth(self, x, y):
        return 3 * x + y

    @staticmethod
    @kvcache.lru_cache()
    def kvcache_staticmeth(x, y):
        return 3 * x + y


def _funcs(name):
    return [globals()[f"{name}_cached_func"], getattr(Methods, f"{name}_meth"),
            getattr(Methods, f"{name}_staticmeth")]


def test_pickle(module):
    for f in _funcs(module.__name__):
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            assert pickle.loads(pickle.dumps(f, proto)) is f


def test_copy_and_deepcopy(module):
    part = functools.partial(lambda x, y: 3 * x + y, 2)
    for f in _funcs(module.__name__) + [module.lru_cache(2)(part)]:
        assert copy.copy(f) is f
        assert copy.deepcopy(f) is f


def test_lru_cache_parameters(module):
    @module.lru_cache(maxsize=2)
    def f():
        return 1

    assert f.cache_parameters() == {"maxsize": 2, "typed": False}

    @module.lru_cache(maxsize=1000, typed=True)
    def f():
        return 1

    assert f.cache_parameters() == {"maxsize": 1000, "typed": True}
    assert module.cache(lambda: 1).cache_parameters() == {"maxsize": None, "typed": False}
    assert module.lru_cache(lambda: 1).cache_parameters() == {"maxsize": 128, "typed": False}


def test_lru_cache_weakrefable(module):
    @module.lru_cache
    def test_function(x):
        return x

    class A:
        @module.lru_cache
        def test_method(self, x):
            return (self, x)

        @staticmethod
        @module.lru_cache
        def test_staticmethod(x):
            return x

    refs = [weakref.ref(test_function), weakref.ref(A.test_method), weakref.ref(A.test_staticmethod)]
    assert all(r() is not None for r in refs)
    del A
    del test_function
    gc.collect()
    assert all(r() is None for r in refs)


def test_common_signatures(module):
    def orig(a, /, b, c=True): ...

    lru = module.lru_cache(1)(orig)
    assert str(Signature.from_callable(lru)) == "(a, /, b, c=True)"
    if module is functools and sys.version_info < (3, 13):
        return  # functools' C methods carry signatures from 3.13 on
    assert str(Signature.from_callable(lru.cache_info)) == "()"
    assert str(Signature.from_callable(lru.cache_clear)) == "()"


def test_lru_recursion(module):
    @module.lru_cache
    def fib(n):
        return n if n <= 1 else fib(n - 1) + fib(n - 2)

    assert fib(300) == 222232244629420445529739893461909967206666939096499764990979600
    fib.cache_clear()
    with pytest.raises(RecursionError):
        fib(100000)


def test_bad_arguments(module):
    with pytest.raises(TypeError):
        module.lru_cache("x")
    with pytest.raises(TypeError):
        module.lru_cache(1.5)
    with pytest.raises(TypeError):
        module.lru_cache()(42)  # not callable
    with pytest.raises(TypeError):
        module.cache()


def test_unhashable_argument_leaves_no_trace(module):
    f = module.lru_cache(4)(lambda *a, **k: 1)
    with pytest.raises(TypeError):
        f(1, x=[])
    assert f.cache_info() == (0, 0, 4, 0)


def test_eviction_order_is_lru(module):
    calls = []

    @module.lru_cache(3)
    def f(x):
        calls.append(x)
        return x

    for x in [1, 2, 3, 1, 4, 2, 3, 1]:
        f(x)
    # 1 2 3 miss; 1 hit; 4 evicts 2; 2 evicts 3; 3 evicts 1; 1 evicts 4
    assert calls == [1, 2, 3, 4, 2, 3, 1]


def test_same_results_as_functools_randomized():
    rng = random.Random(7)
    for maxsize in (1, 2, 7, 64, None):
        for typed in (False, True):
            calls_a, calls_b = [], []
            fa = functools.lru_cache(maxsize, typed)(lambda *a, **k: calls_a.append((a, k)) or len(calls_a))
            fb = kvcache.lru_cache(maxsize, typed)(lambda *a, **k: calls_b.append((a, k)) or len(calls_b))
            for _ in range(2000):
                args = tuple(rng.choice([0, 1, 1.0, True, "a", (1, 2), None]) for _ in range(rng.randint(0, 2)))
                kw = {k: rng.randint(0, 2) for k in rng.sample("xy", rng.randint(0, 2))}
                assert fa(*args, **kw) == fb(*args, **kw)
                if rng.random() < 0.01:
                    fa.cache_clear()
                    fb.cache_clear()
            assert calls_a == calls_b
            assert fa.cache_info() == fb.cache_info()


# -- cachetools.func: lfu_cache, fifo_cache, rr_cache ---------------------------------------------

FUNCS = ["lfu_cache", "fifo_cache", "rr_cache"]


@pytest.fixture(params=["kvcache", "cachetools"])
def func_module(request):
    if request.param == "kvcache":
        return kvcache
    return pytest.importorskip("cachetools.func")


@pytest.mark.parametrize("name", FUNCS)
def test_func_decorator(func_module, name):
    deco = getattr(func_module, name)
    cached = deco(maxsize=2)(lambda n: n)
    assert cached.cache_parameters() == {"maxsize": 2, "typed": False}
    assert cached.cache_info() == (0, 0, 2, 0)
    assert cached(1) == 1
    assert cached.cache_info() == (0, 1, 2, 1)
    assert cached(1) == 1
    assert cached.cache_info() == (1, 1, 2, 1)
    assert cached(1.0) == 1.0
    assert cached.cache_info() == (2, 1, 2, 1)
    cached.cache_clear()
    assert cached.cache_info() == (0, 0, 2, 0)


@pytest.mark.parametrize("name", FUNCS)
def test_func_bare_and_unbounded(func_module, name):
    deco = getattr(func_module, name)
    bare = deco(lambda n: n)
    assert bare.cache_parameters() == {"maxsize": 128, "typed": False}
    assert bare(1) == 1 and bare.cache_info() == (0, 1, 128, 1)
    unbounded = deco(maxsize=None)(lambda n: n)
    assert unbounded.cache_parameters() == {"maxsize": None, "typed": False}
    for i in range(300):
        unbounded(i)
    assert unbounded.cache_info() == (0, 300, None, 300)


@pytest.mark.parametrize("name", FUNCS)
def test_func_typed_and_zero(func_module, name):
    deco = getattr(func_module, name)
    typed = deco(maxsize=2, typed=True)(lambda n: n)
    assert typed(1) == 1
    assert typed(1.0) == 1.0
    assert typed.cache_info() == (0, 2, 2, 2)
    zero = deco(maxsize=0)(lambda n: n)
    assert zero(1) == 1 and zero(1) == 1
    assert zero.cache_info() == (0, 2, 0, 0)


def test_func_eviction_orders_match_cachetools():
    ct = pytest.importorskip("cachetools.func")
    rng = random.Random(3)
    seq = [rng.randint(0, 9) for _ in range(500)]
    for name in ("lfu_cache", "fifo_cache"):
        got = []
        for mod in (kvcache, ct):
            calls = []
            f = getattr(mod, name)(maxsize=4)(lambda x: calls.append(x) or x)
            for x in seq:
                f(x)
            got.append((calls, f.cache_info()))
        assert got[0] == got[1], name


def test_rr_cache_choice():
    chosen = []

    def choice(seq):
        chosen.append(sorted(seq))
        return min(seq)

    f = kvcache.rr_cache(maxsize=2, choice=choice)(lambda x: x)
    f(1), f(2), f(3)
    assert chosen == [[(1,), (2,)]]
    assert f.cache_info() == (0, 3, 2, 2)
    assert f(2) == 2 and f.cache_info().hits == 1


def test_func_stampede_runs_once():
    # cachetools.func's wrappers use a Condition: concurrent misses on one key call once
    n = 6
    calls = []
    release = threading.Event()

    @kvcache.lfu_cache(maxsize=8)
    def f(x):
        calls.append(x)
        release.wait(5)
        return object()

    results = []
    threads = [threading.Thread(target=lambda: results.append(f(1))) for _ in range(n)]
    for t in threads:
        t.start()
    while not calls:
        time.sleep(0.001)
    time.sleep(0.05)
    release.set()
    for t in threads:
        t.join()
    assert calls == [1]
    assert all(r is results[0] for r in results)


def test_threads_with_evictions_keep_the_table_consistent():
    import sys

    @kvcache.lru_cache(maxsize=8)
    def f(x):
        return x * 3

    errors = []

    def worker(seed):
        rng = random.Random(seed)
        for _ in range(3000):
            x = rng.randint(0, 40)
            if f(x) != x * 3:
                errors.append(x)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=worker, args=(s,)) for s in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(old)
    assert not errors
    info = f.cache_info()
    assert info.currsize == 8
    assert info.hits + info.misses == 6 * 3000  # counts are exact under threads, as in CPython
