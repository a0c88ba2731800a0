"""Sizes from getsizeof: floats, NaN, infinities, odd number types (issue 14, item 2).

Float sizes used to leave `currsize > 0` in an emptied cache through rounding; the eviction
loop then evicted from an empty table (SIGSEGV, an endless loop for LFU, SIGFPE for RR).
A NaN size made the cache unbounded.
"""
import decimal
import fractions
import math
import random

import numpy as np
import pytest

import kvcache
from tests.cache_specs import SPECS


# every class that takes getsizeof= (lru-dict's LRU counts items)
WEIGHTED = [spec for spec in SPECS if spec.weighted]


@pytest.mark.parametrize("spec", WEIGHTED, ids=repr)
def test_float_sizes_never_evict_from_an_empty_cache(spec):
    c = spec.make(1.0, getsizeof=lambda v: v)
    rnd = random.Random(7)
    for i in range(1000):
        c[i] = rnd.random() / 10
    c["big"] = 1.0                       # evicts everything else, then fits exactly
    assert list(c.keys()) == ["big"]
    assert c.currsize == 1.0
    c._check()
    del c["big"]
    assert c.currsize == 0 and len(c) == 0
    c._check()


@pytest.mark.parametrize("spec", WEIGHTED, ids=repr)
def test_float_sizes_keep_the_bound(spec):
    c = spec.make(3.3, getsizeof=lambda v: v)
    rnd = random.Random(3)
    for i in range(3000):
        k = rnd.randrange(50)
        if rnd.random() < 0.8:
            c[k] = rnd.random() * 1.1
        else:
            c.pop(k, None)
        assert c.currsize <= 3.3
        assert math.isclose(c.currsize, sum(c.getsizeof(v) for v in c.values()), abs_tol=1e-9)
    c._check()
    c.clear()
    assert c.currsize == 0


@pytest.mark.parametrize("spec", WEIGHTED, ids=repr)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, -1, -0.5, float("-nan")])
def test_nan_infinite_and_negative_sizes_raise_and_change_nothing(spec, bad):
    c = spec.make(100, getsizeof=lambda v: v)
    c["a"] = 1
    c["b"] = 2
    before = (list(c.items()), c.currsize, c.stats())
    with pytest.raises(ValueError):
        c["x"] = bad
    with pytest.raises(ValueError):
        c["a"] = bad                     # an update too
    assert (list(c.items()), c.currsize, c.stats()) == before
    c._check()


def test_a_non_number_size_is_a_type_error():
    c = kvcache.LRUCache(10, getsizeof=lambda v: "3")
    with pytest.raises(TypeError, match="getsizeof must return a number"):
        c["a"] = 1
    assert len(c) == 0 and c.currsize == 0


@pytest.mark.parametrize("size, stored", [
    (np.int64(3), 3), (np.float32(0.5), 0.5), (True, 1), (fractions.Fraction(1, 4), 0.25),
    (decimal.Decimal("0.5"), 0.5)])
def test_number_types_are_kept_as_exact_ints_and_floats(size, stored):
    """Sums then run no user code (an int subclass's __add__ could mutate the cache)."""
    c = kvcache.LRUCache(10, getsizeof=lambda v: size)
    c["a"] = 1
    assert c.currsize == stored and type(c.currsize) in (int, float)


def test_an_int_subclass_size_runs_none_of_its_methods():
    class Evil(int):
        def __add__(self, other):
            raise AssertionError("ran user code")
        __radd__ = __sub__ = __rsub__ = __add__

    c = kvcache.LFUCache(10, getsizeof=lambda v: Evil(2))
    for i in range(20):
        c[i] = i
    assert c.currsize == 10 and len(c) == 5
    c._check()


def test_float_sizes_round_trip_through_resize_and_pickle():
    import pickle
    c = kvcache.LRUCache(1.0, getsizeof=float)
    for i in range(10):
        c[i] = 0.1
    c.resize(0.55)
    assert len(c) == 5 and c.currsize <= 0.55
    d = pickle.loads(pickle.dumps(c))
    assert list(d.items()) == list(c.items())
    assert math.isclose(d.currsize, c.currsize)
    d._check()
