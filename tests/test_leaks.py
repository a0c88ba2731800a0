"""References are released: no growth after many set/evict/delete cycles, cycles are collected."""
import gc
import sys
import tracemalloc
import weakref

import kvcache


def test_refcounts_return_to_baseline(cache_cls):
    key = ("tracked", "key")
    value = ["tracked value"]
    base_k, base_v = sys.getrefcount(key), sys.getrefcount(value)
    c = cache_cls(100, seed=3)
    for i in range(1_000_000):
        c[i] = i
        if i % 3 == 0:
            c[key] = value
        if i % 7 == 0:
            c.pop(key, None)
        if i % 11 == 0:
            c.get(key)
    c[key] = value
    c.pop(key)
    c.clear()
    assert sys.getrefcount(key) == base_k
    assert sys.getrefcount(value) == base_v


def test_no_memory_growth(cache_cls):
    c = cache_cls(1000, seed=3)
    for i in range(5000):
        c[i] = i
    gc.collect()
    tracemalloc.start()
    try:
        for _ in range(3):
            for i in range(100_000):
                c[i] = i
                if i % 5 == 0:
                    c.pop(i - 3, None)
            first = tracemalloc.get_traced_memory()[0]
        for i in range(300_000):
            c[i] = i
            if i % 5 == 0:
                c.pop(i - 3, None)
        gc.collect()
        second = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert second - first < 64 * 1024


class Node:
    pass


def test_cycle_through_value_is_collected(cache_cls):
    c = cache_cls(10)
    n = Node()
    n.cache = c                             # cache -> value -> cache
    c["n"] = n
    r = weakref.ref(n)
    rc = weakref.ref(c)
    del n, c
    gc.collect()
    assert r() is None and rc() is None


def test_evicted_values_released(cache_cls):
    c = cache_cls(2)
    refs = []
    for i in range(10):
        n = Node()
        refs.append(weakref.ref(n))
        c[i] = n
        del n
    alive = sum(1 for r in refs if r() is not None)
    assert alive == 2
