"""get_many / set_many on every mapping class: same results, stats and order as one call per key."""
import math
import sys

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kvcache

CLASSES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache, kvcache.RRCache]


def make(cls, maxsize=8, **kw):
    return cls(maxsize, seed=3, **kw)


def state(c):
    keys, values, aux = c._export_state()
    return keys, values, None if aux is None else aux.tolist(), tuple(c.stats())


def twins(cls, maxsize, items):
    """Two caches with the same contents, one to drive in batch, one key by key."""
    a, b = make(cls, maxsize), make(cls, maxsize)
    for k, v in items:
        a[k] = v
        b[k] = v
    return a, b


INT_POOL = [0, 1, 2, -1, -(2**63), 2**63 - 1, 2**63, 2**64 - 1, 12345678901234567]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [numpy.int64, numpy.uint64])
def test_int_arrays_match_a_loop_of_get(cls, dtype):
    info = numpy.iinfo(dtype)
    pool = [k for k in INT_POOL if info.min <= k <= info.max]
    a, b = twins(cls, 6, [(k, f"v{k}") for k in pool[:6]])
    keys = numpy.array(pool * 2 + pool[:3], dtype=dtype)         # duplicates included
    got = a.get_many(keys, default="D")
    expect = [b.get(k, "D") for k in keys.tolist()]
    assert got == expect
    assert "D" in got and any(v != "D" for v in got)
    assert state(a) == state(b)


@pytest.mark.parametrize("cls", CLASSES)
def test_int_array_finds_keys_stored_as_equal_non_ints(cls):
    # 1.0 and True are the key 1 for a dict: the fast int path must not miss them.
    c = make(cls)
    c[1.0] = "one"
    c[True] = "true"            # same key as 1.0: replaces the value
    c[2] = "two"
    got = c.get_many(numpy.array([1, 2, 3], dtype=numpy.int64))
    assert got == ["true", "two", None]
    assert c.get_many(numpy.array([1], dtype=numpy.uint64)) == ["true"]


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("dtype", [numpy.int64, numpy.uint64])
def test_ints_with_equal_hashes_are_told_apart(cls, dtype):
    # k and k + hash modulus hash alike; only ints below the modulus may be matched on the
    # hash alone (the engine tags them), so each key must find its own value and growth
    # (which rebuilds the index and its tags) must keep it so.
    m = sys.hash_info.modulus
    pairs = [(5, 5 + m), (0, m), (m - 1, 2 * m - 1)]
    c = cls(math.inf, seed=3)
    for small, big in pairs:
        c[big] = ("big", big)
        c[small] = ("small", small)
    for i in range(3000):               # grow past several rebuilds
        c[10**6 + i] = i
    keys = numpy.array([k for p in pairs for k in p] + [m + 7, 7], dtype=dtype)
    assert c.get_many(keys) == [c.get(k) for k in keys.tolist()]
    assert c.get_many(keys)[:2] == [("small", 5), ("big", 5 + m)]
    assert c.get_many(keys)[-2:] == [None, None]
    c._check()


@pytest.mark.parametrize("cls", CLASSES)
def test_lists_and_mixed_objects(cls):
    items = [(1, "a"), ("x", "b"), ((1, 2), "c"), (2.5, "d"), (None, "e"), (b"k", "f")]
    a, b = twins(cls, 8, items)
    keys = [1, "x", (1, 2), 2.5, None, b"k", "missing", 1.0, True, "x", frozenset()]
    assert a.get_many(keys) == [b.get(k) for k in keys]
    assert a.get_many(tuple(keys), default=0) == [b.get(k, 0) for k in keys]
    assert a.get_many(iter(keys)) == [b.get(k) for k in keys]
    assert state(a) == state(b)


@pytest.mark.parametrize("cls", CLASSES)
def test_object_and_other_dtype_arrays(cls):
    a, b = twins(cls, 8, [(1, "a"), (2, "b"), ("s", "c")])
    for keys in (numpy.array([1, 2, 3], dtype=numpy.int32), numpy.array([1, "s"], dtype=object),
                 numpy.array([1.0, 2.0]), numpy.array([[1, 2]], dtype=numpy.int64).ravel()):
        assert a.get_many(keys) == [b.get(k) for k in keys.tolist()]
    assert state(a) == state(b)


@pytest.mark.parametrize("cls", CLASSES)
def test_default_is_returned_as_is(cls):
    c = make(cls)
    marker = object()
    got = c.get_many(numpy.arange(3), default=marker)
    assert got == [marker] * 3 and all(v is marker for v in got)
    assert c.stats().misses == 3
    assert c.get_many([]) == [] and c.get_many(numpy.array([], dtype=numpy.int64)) == []


@pytest.mark.parametrize("cls", CLASSES)
def test_set_many_matches_setitem_in_order(cls):
    a, b = make(cls, 4), make(cls, 4)
    keys = [1, 2, 1, 3, 4, 5, 2, 6]                   # duplicates and evictions
    values = [f"v{i}" for i in range(len(keys))]
    a.set_many(keys, values)
    for k, v in zip(keys, values):
        b[k] = v
    assert state(a) == state(b)


@pytest.mark.parametrize("cls", CLASSES)
def test_set_many_with_arrays_stores_python_ints(cls):
    c = make(cls, 10)
    c.set_many(numpy.array([2**64 - 1, 5], dtype=numpy.uint64), numpy.array([1.5, 2.5]))
    c.set_many(numpy.array([-1], dtype=numpy.int64), ["neg"])
    assert sorted(c.keys(), key=str) == sorted([2**64 - 1, 5, -1], key=str)
    assert all(type(k) is int for k in c.keys())
    assert c[2**64 - 1] == 1.5 and type(c[5]) is float and c[-1] == "neg"
    assert c.get_many(numpy.array([2**64 - 1, 5], dtype=numpy.uint64)) == [1.5, 2.5]


@pytest.mark.parametrize("cls", CLASSES)
def test_set_many_length_mismatch_changes_nothing(cls):
    c = make(cls)
    c[1] = "a"
    before = state(c)
    with pytest.raises(ValueError):
        c.set_many([1, 2, 3], ["x", "y"])
    with pytest.raises(ValueError):
        c.set_many(numpy.arange(3), numpy.arange(2))
    assert state(c) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_unhashable_key_in_a_batch(cls):
    c = make(cls)
    c[1] = "a"
    with pytest.raises(TypeError):
        c.get_many([1, [2]])
    with pytest.raises(TypeError):
        c.set_many([2, {}], ["b", "c"])


@pytest.mark.parametrize("cls", CLASSES)
def test_getsizeof_and_too_large_values(cls):
    a = cls(10, getsizeof=len, seed=3)
    b = cls(10, getsizeof=len, seed=3)
    vals = ["aaaa", "bbb", "cc", "dddddd"]
    a.set_many(numpy.arange(4), vals)
    for k, v in enumerate(vals):
        b[k] = v
    assert state(a) == state(b) and a.currsize == b.currsize <= 10
    with pytest.raises(ValueError):
        a.set_many([9], ["x" * 11])


KEYS = st.one_of(st.integers(-3, 12), st.sampled_from(["a", "b", 2.0, (1,), None]))


@settings(max_examples=150, deadline=None)
@given(cls=st.sampled_from(CLASSES), ops=st.lists(
    st.tuples(st.booleans(), st.lists(KEYS, max_size=8), st.booleans()), max_size=12))
def test_random_batches_match_single_calls(cls, ops):
    a, b = make(cls, 5), make(cls, 5)
    for is_set, keys, as_array in ops:
        if as_array and all(type(k) is int for k in keys):
            batch = numpy.array(keys, dtype=numpy.int64)
        else:
            batch = keys
        if is_set:
            vals = [f"{k}!" for k in keys]
            a.set_many(batch, vals)
            for k, v in zip(keys, vals):
                b[k] = v
        else:
            assert a.get_many(batch, default="-") == [b.get(k, "-") for k in keys]
        assert state(a) == state(b)


def test_subclass_overriding_getitem_still_matches_get():
    class Upper(kvcache.LRUCache):
        def __getitem__(self, key):
            return super().__getitem__(key).upper()

    a, b = Upper(4), Upper(4)
    for c in (a, b):
        c.set_many([1, 2], ["x", "y"])
    keys = numpy.array([1, 2, 3], dtype=numpy.int64)
    assert a.get_many(keys) == [b.get(k) for k in keys.tolist()] == ["X", "Y", None]
