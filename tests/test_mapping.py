"""The mapping behaviour every cache class shares (after cachetools' CacheTestMixin)."""
import collections.abc
import copy
import math
import pickle
import random
import sys

import pytest

import kvcache


def make(cls, maxsize, **kwargs):
    return cls(maxsize, **kwargs)


def test_defaults(cache_cls):
    c = make(cache_cls, 1)
    assert c.maxsize == 1
    assert c.currsize == 0
    assert c.getsizeof(object()) == 1
    assert cache_cls.getsizeof(None) == 1
    assert len(c) == 0
    assert 1 not in c
    assert list(c) == []
    assert not c
    assert isinstance(c, collections.abc.MutableMapping)


def test_insert_and_bound(cache_cls):
    c = make(cache_cls, 2)
    c[1] = 1
    c[2] = 2
    assert len(c) == 2 and c[1] == 1 and c[2] == 2
    c[3] = 3
    assert len(c) == 2 and c.currsize == 2
    assert 3 in c and c[3] == 3
    c._check()


def test_update(cache_cls):
    c = make(cache_cls, 10)
    c.update({1: "a", 2: "b"})
    c.update([(3, "c")], x="y")
    assert dict(c.items()) == {1: "a", 2: "b", 3: "c", "x": "y"}
    c[1] = "A"
    assert c[1] == "A" and len(c) == 4


def test_delete(cache_cls):
    c = make(cache_cls, 2)
    c[1] = 1
    c[2] = 2
    del c[1]
    assert 1 not in c and len(c) == 1 and c.currsize == 1
    with pytest.raises(KeyError) as e:
        del c[1]
    assert e.value.args == (1,)
    del c[2]
    assert len(c) == 0
    c._check()


def test_pop(cache_cls):
    c = make(cache_cls, 3)
    c.update({1: "a", 2: "b"})
    assert c.pop(1) == "a"
    assert c.pop(1, None) is None
    assert c.pop(1, "d") == "d"
    with pytest.raises(KeyError):
        c.pop(1)
    assert len(c) == 1 and c.currsize == 1


def test_popitem(cache_cls):
    c = make(cache_cls, 2)
    c[1] = 1
    c[2] = 2
    assert c.popitem() in ((1, 1), (2, 2))
    assert len(c) == 1
    c.popitem()
    with pytest.raises(KeyError, match="is empty"):
        c.popitem()


def test_get_setdefault(cache_cls):
    c = make(cache_cls, 3)
    assert c.get(1) is None
    assert c.get(1, "x") == "x"
    assert c.setdefault(1, "a") == "a"
    assert c.setdefault(1, "b") == "a"
    assert c.setdefault(2) is None and 2 in c
    assert c.get(1) == "a"


def test_missing_hook(cache_cls):
    class Default(cache_cls):
        def __missing__(self, key):
            self[key] = value = key * 2
            return value

    c = Default(2)
    assert c[1] == 2 and 1 in c
    assert c.get(5) is None and 5 not in c     # get() does not call __missing__ (as cachetools)
    with pytest.raises(KeyError):
        make(cache_cls, 2)[1]


def test_getsizeof(cache_cls):
    c = make(cache_cls, 3, getsizeof=lambda x: x)
    assert c.getsizeof(2) == 2
    c[1] = 1
    c[2] = 2
    assert c.currsize == 3 and len(c) == 2
    c[3] = 3
    assert c.currsize == 3 and dict(c.items()) == {3: 3}
    with pytest.raises(ValueError, match="value too large"):
        c[4] = 4
    assert dict(c.items()) == {3: 3}
    with pytest.raises(ValueError, match="non-negative"):
        c[5] = -1
    c[3] = 1
    c[4] = 2
    assert c.currsize == 3
    c._check()


def test_getsizeof_subclass(cache_cls):
    class Sized(cache_cls):
        def getsizeof(self, value):
            return len(value)

    c = Sized(5)
    c["a"] = "xx"
    c["b"] = "yyy"
    assert c.currsize == 5
    c["c"] = "z"
    assert c.currsize <= 5 and "c" in c


def test_getsizeof_float_sizes(cache_cls):
    c = make(cache_cls, 1.5, getsizeof=lambda v: 0.5)
    c[1] = c[2] = c[3] = "x"
    assert len(c) == 3 and c.currsize == 1.5
    c[4] = "y"
    assert len(c) == 3


def test_zero_and_negative_maxsize(cache_cls):
    c = make(cache_cls, 0)
    with pytest.raises(ValueError, match="value too large"):
        c[1] = 1
    assert len(c) == 0
    with pytest.raises(ValueError):
        make(cache_cls, -1)
    with pytest.raises(TypeError):
        make(cache_cls, "10")
    with pytest.raises(ValueError):
        make(cache_cls, float("nan"))


def test_bad_arguments(cache_cls):
    with pytest.raises(TypeError):
        make(cache_cls, 10, getsizeof=3)
    with pytest.raises(TypeError):
        make(cache_cls, 10, on_evict="x")
    with pytest.raises(ValueError):
        make(cache_cls, 10, capacity=-1)
    with pytest.raises(TypeError):
        make(cache_cls, 10, capacity=1.5)
    with pytest.raises(ValueError):
        make(cache_cls, 10, seed=-1)


def test_unhashable_key(cache_cls):
    c = make(cache_cls, 3)
    for op in (lambda: c[[1]], lambda: c.__setitem__([1], 1), lambda: [1] in c,
               lambda: c.get([1]), lambda: c.pop([1]), lambda: c.__delitem__({})):
        with pytest.raises(TypeError):
            op()
    assert len(c) == 0
    c._check()


def test_dict_key_semantics(cache_cls):
    c = make(cache_cls, 10)
    c[1] = "int"
    c[1.0] = "float"
    c[True] = "bool"
    assert len(c) == 1 and c[1] == "bool"
    assert list(c) == [1]                     # the first key object is kept, as in a dict
    nan = float("nan")
    c[nan] = "nan"
    assert nan in c and float("nan") not in c
    c[float("nan")] = "other nan"
    assert len(c) == 3
    c[-1] = "m1"
    c[-2] = "m2"                              # hash(-1) == hash(-2) in CPython
    assert c[-1] == "m1" and c[-2] == "m2"
    big = 2**200
    c[big] = "big"
    c[-big] = "-big"
    assert c[big] == "big" and c[-big] == "-big"
    c._check()


def test_inf_maxsize_grows_geometrically(cache_cls):
    c = make(cache_cls, math.inf)
    small = c._nbytes()
    assert small < 200_000                    # no huge up-front allocation
    for i in range(50_000):
        c[i] = i
    assert len(c) == 50_000 and c.currsize == 50_000
    assert all(c.peek(i) == i for i in range(0, 50_000, 997))
    c._check()
    huge = make(cache_cls, 10**12)
    assert huge._nbytes() < 200_000


def test_an_overridden_popitem_need_not_return_the_pair(cache_cls):
    # cachetools' __setitem__ ignores what popitem returns: nothing is lost when it is None
    class Quiet(cache_cls):
        def popitem(self):
            super().popitem()

    c = make(Quiet, 1)
    c["a"] = 1
    c["b"] = 2
    assert dict(c) == {"b": 2}
    c.resize(0)
    assert len(c) == 0


def test_an_overridden_delitem_sees_evictions_pop_and_popitem(cache_cls):
    # cachetools removes through `del self[key]` everywhere but expiry and clear
    deleted = []

    class Hooked(cache_cls):
        def __delitem__(self, key):
            deleted.append(key)
            super().__delitem__(key)

    c = make(Hooked, 2)
    c["a"] = 1
    c["b"] = 2
    c["c"] = 3                                  # evicts one of a, b
    assert len(deleted) == 1 and deleted[0] in ("a", "b") and deleted[0] not in c
    assert c.pop("c") == 3 and deleted[-1] == "c"
    assert c.pop("zz", "D") == "D" and len(deleted) == 2
    k, v = c.popitem()
    assert deleted[-1] == k and len(c) == 0
    c["x"] = 1
    c["y"] = 2
    c.resize(1)
    assert len(deleted) == 4 and len(c) == 1
    c._check()


def test_an_empty_cache_is_small(cache_cls):
    # buffers start at 64 entries and double (TinyLFU's at 1024: they size its sketch), so a
    # cache per instance or per closure costs a few KB until it fills
    c = make(cache_cls, 10_000)
    assert c._nbytes() < (100_000 if cache_cls is kvcache.TinyLFUCache else 8_000)


def test_capacity_preallocates(cache_cls):
    c = make(cache_cls, 100_000, capacity=100_000)
    before = c._nbytes()
    for i in range(100_000):
        c[i] = i
    assert c._nbytes() == before              # no growth happened
    c._check()


def test_repr_and_eq(cache_cls):
    c = make(cache_cls, 3)
    c[1] = "a"
    assert repr(c) == "%s({1: 'a'}, maxsize=3, currsize=1)" % cache_cls.__name__
    assert c == {1: "a"}
    assert c != {1: "b"}
    assert {1: "a"} == c
    d = make(cache_cls, 10)
    d[1] = "a"
    assert c == d
    assert (c == 5) is False
    with pytest.raises(TypeError):
        hash(c)
    c["self"] = c
    assert "..." in repr(c)                   # a cache holding itself does not recurse forever


def test_generic_alias(cache_cls):
    alias = cache_cls[int, str]
    assert alias.__origin__ is cache_cls and alias.__args__ == (int, str)


def test_views(cache_cls):
    c = make(cache_cls, 10)
    c.update({1: "a", 2: "b", 3: "c"})
    assert len(c.keys()) == 3 and 2 in c.keys() and set(c.keys()) == {1, 2, 3}
    assert "b" in c.values() and "z" not in c.values()
    assert (2, "b") in c.items() and (2, "x") not in c.items()
    assert sorted(c.values()) == ["a", "b", "c"]
    assert list(reversed(c)) == list(c)[::-1]
    assert c.keys() & {1, 5} == {1}
    s = c.stats()
    assert s.hits == 0                        # views and iteration are not lookups


def test_iteration_assign_existing_visits_each_once(cache_cls):
    c = make(cache_cls, 100)
    for i in range(50):
        c[i] = i
    order = list(c)
    seen = []
    for k in c:
        c[k] = c[k] * 10                      # reorders LRU/FIFO/LFU: must not revisit
        seen.append(k)
    assert seen == order
    assert all(c.peek(k) == k * 10 for k in range(50))


def test_iteration_add_or_remove_raises(cache_cls):
    c = make(cache_cls, 100)
    c.update({i: i for i in range(10)})
    with pytest.raises(RuntimeError):
        for k in c:
            c[k + 1000] = 1
    c = make(cache_cls, 100)
    c.update({i: i for i in range(10)})
    with pytest.raises(RuntimeError):
        for k in c:
            del c[k]
    c = make(cache_cls, 100)
    c.update({i: i for i in range(10)})
    with pytest.raises(RuntimeError):
        for k in c.items():
            c.clear()
    c._check()


def test_pickle_and_copy_keep_order(cache_cls):
    c = make(cache_cls, 5, seed=3)
    for i in range(8):
        c[i] = str(i)
        c.get(i - 2)
    c.get(5)
    c.get(5)
    for clone in (pickle.loads(pickle.dumps(c)), copy.copy(c), copy.deepcopy(c)):
        assert type(clone) is cache_cls
        assert list(clone.items()) == list(c.items())
        assert clone.maxsize == c.maxsize and clone.currsize == c.currsize
        clone._check()
        if cache_cls is not kvcache.RRCache:
            # the same victims in the same order: recency and frequencies were kept
            victims = [copy.copy(c).popitem() for _ in range(1)]
            assert [clone.popitem() for _ in range(1)] == victims
            rest = copy.copy(c)
            assert [rest.popitem() for _ in range(len(rest))] == list(c.items())


def test_pickle_subclass_with_attributes(cache_cls):
    c = Annotated(4)
    c.note = "hello"
    c["a"] = 1
    clone = pickle.loads(pickle.dumps(c))
    assert type(clone) is Annotated and clone.note == "hello" and clone["a"] == 1


class Annotated(kvcache.LRUCache):
    pass


def test_deepcopy_self_reference(cache_cls):
    c = make(cache_cls, 5)
    c["me"] = c
    d = copy.deepcopy(c)
    assert d["me"] is d


def test_copy_is_independent(cache_cls):
    c = make(cache_cls, 5)
    c[1] = [1]
    d = copy.copy(c)
    d[2] = 2
    assert 2 not in c
    assert d[1] is c[1]                        # shallow: values shared
    e = copy.deepcopy(c)
    assert e[1] == [1] and e[1] is not c[1]


def test_big_pickle_no_recursion(cache_cls):
    c = make(cache_cls, math.inf)
    for i in range(200_000):
        c[i] = i
    limit = sys.getrecursionlimit()
    clone = pickle.loads(pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL))
    assert len(clone) == 200_000 and list(clone)[:5] == list(c)[:5]
    assert sys.getrecursionlimit() == limit


def test_peek_stats(cache_cls):
    c = make(cache_cls, 2)
    c[1] = 1
    assert c.peek(1) == 1 and c.peek(2) is None and c.peek(2, "d") == "d"
    c.get(1)
    c[1]
    c.get(2)
    with pytest.raises(KeyError):
        c[2]
    s = c.stats()
    assert (s.hits, s.misses, s.evictions, s.currsize, s.maxsize) == (2, 2, 0, 1, 2)
    assert isinstance(s, kvcache.CacheStats)
    c[2] = 2
    c[3] = 3
    assert c.stats().evictions == 1


def test_on_evict(cache_cls):
    seen = []
    c = make(cache_cls, 2, on_evict=lambda k, v: seen.append((k, v, len(c))))
    c[1] = "a"
    c[2] = "b"
    c[3] = "c"
    assert len(seen) == 1 and seen[0][2] == 2          # called once the cache is consistent
    if 3 in c:
        del c[3]
    c.pop(next(iter(c)))
    c.clear()
    assert len(seen) == 1                              # explicit removals are not evictions
    c.update({i: i for i in range(5)})
    assert len(seen) == 1 + 3


def test_on_evict_may_reenter(cache_cls):
    log = []

    def cb(k, v):
        log.append(k)
        c.get(k)
        if isinstance(k, int):
            c["from-callback-%s" % k] = v   # evicts again from inside the callback

    c = make(cache_cls, 2, on_evict=cb)
    for i in range(6):
        c[i] = i
    assert len(c) <= 2 and len(log) >= 4
    c._check()


def test_resize(cache_cls):
    seen = []
    c = make(cache_cls, 10, on_evict=lambda k, v: seen.append(k))
    c.update({i: i for i in range(10)})
    c.resize(4)
    assert len(c) == 4 and c.maxsize == 4 and len(seen) == 6
    c.resize(100)
    c.update({i: i for i in range(100, 150)})
    assert len(c) == 54
    with pytest.raises(ValueError):
        c.resize(-1)
    c.resize(0)
    assert len(c) == 0
    c._check()


def test_resize_keeps_policy_order():
    c = kvcache.LRUCache(5)
    c.update({i: i for i in range(5)})
    c.get(0)
    c.resize(2)
    assert list(c) == [4, 0]


def test_clear(cache_cls):
    c = make(cache_cls, 5, getsizeof=lambda v: 1)
    c.update({i: i for i in range(5)})
    c.clear()
    assert len(c) == 0 and c.currsize == 0 and list(c) == []
    c[1] = 1
    assert c[1] == 1
    c._check()


def test_popitem_override_is_used_for_eviction(cache_cls):
    evicted = []

    class Logged(cache_cls):
        def popitem(self):
            key, value = super().popitem()
            evicted.append(key)
            return key, value

    c = Logged(2)
    c[1] = 1
    c[2] = 2
    c[3] = 3
    assert len(evicted) == 1 and len(c) == 2
    assert c.stats().evictions == 1


def test_seed_is_deterministic():
    a = kvcache.RRCache(10, seed=42)
    b = kvcache.RRCache(10, seed=42)
    for i in range(100):
        a[i] = b[i] = i
    assert list(a) == list(b)


def test_rr_choice_like_cachetools():
    import cachetools

    for choice in (min, max, lambda seq: seq[len(seq) // 2]):
        ours = kvcache.RRCache(5, choice=choice)
        theirs = cachetools.RRCache(5, choice=choice)
        rnd = random.Random(1)
        for _ in range(300):
            k = rnd.randrange(20)
            if rnd.random() < 0.2 and k in theirs:
                del ours[k]
                del theirs[k]
            else:
                ours[k] = theirs[k] = k
            assert sorted(ours) == sorted(theirs)
        assert ours.choice is choice
    assert kvcache.RRCache(1).choice is random.choice


def test_new_without_init_is_safe(cache_cls):
    c = cache_cls.__new__(cache_cls)
    assert len(c) == 0 and 1 not in c and c.get(1) is None
    with pytest.raises(ValueError):
        c[1] = 1
    with pytest.raises(KeyError):
        c.popitem()
    c.clear()
    assert list(c) == []


def test_weakref_and_dict(cache_cls):
    import weakref

    c = make(cache_cls, 2)
    r = weakref.ref(c)
    assert r() is c
    c.anything = 1                            # instances take attributes, as cachetools'
    assert c.anything == 1
