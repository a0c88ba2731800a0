"""Exact eviction order of each policy, pinned by hand and against cachetools on random workloads."""
import random

import cachetools   # the peer we are a drop-in for: a test dependency
import pytest

import kvcache
from tests.models import MODELS


def test_lru_order():
    c = kvcache.LRUCache(3)
    c.update({"a": 1, "b": 2, "c": 3})
    c["a"]
    c.get("b")
    assert list(c) == ["c", "a", "b"]
    "c" in c                                   # `in` is not a use
    c.peek("c")                                # neither is peek
    c["d"] = 4
    assert list(c) == ["a", "b", "d"]
    c["a"] = 10                                # an assignment is a use
    assert c.popitem() == ("b", 2)
    assert list(c) == ["d", "a"]


def test_fifo_order():
    c = kvcache.FIFOCache(3)
    c.update({"a": 1, "b": 2, "c": 3})
    c["a"]                                     # hits do not reorder
    c["d"] = 4
    assert list(c) == ["b", "c", "d"]
    c["b"] = 20                                # cachetools' FIFOCache re-inserts on assignment
    assert list(c) == ["c", "d", "b"]
    assert c.popitem() == ("c", 3)


def test_cache_order():
    c = kvcache.Cache(3)
    c.update({"a": 1, "b": 2, "c": 3})
    c["a"] = 10                                # plain Cache keeps insertion order
    c["d"] = 4
    assert list(c) == ["b", "c", "d"]


def test_lfu_order_and_ties():
    c = kvcache.LFUCache(4)
    c.update({"a": 1, "b": 2, "c": 3, "d": 4})       # all count 1, in this order
    c["c"]
    c["a"]                                           # c then a reach count 2
    assert list(c) == ["b", "d", "c", "a"]
    assert c.popitem() == ("b", 2)                   # least frequent, least recent
    c["e"] = 5
    c["e"]
    c["e"]                                           # e: count 3
    assert list(c) == ["d", "c", "a", "e"]
    c["d"] = 40                                      # assignment counts: d reaches 2 last
    assert list(c) == ["c", "a", "d", "e"]
    c["f"] = 6                                       # evicts c (count 2, earliest)
    assert list(c) == ["f", "a", "d", "e"]
    assert c._export_state()[2].tolist() == [1, 2, 2, 3]


def _workload(seed, n=3000, keyspace=30):
    rnd = random.Random(seed)
    for _ in range(n):
        r = rnd.random()
        k = rnd.randrange(keyspace)
        if r < 0.45:
            yield ("get", k)
        elif r < 0.9:
            yield ("set", k)
        elif r < 0.97:
            yield ("del", k)
        else:
            yield ("popitem", None)


@pytest.mark.parametrize("name", ["Cache", "FIFOCache", "LRUCache", "LFUCache"])
@pytest.mark.parametrize("seed", range(5))
def test_same_as_cachetools(name, seed):
    ours = getattr(kvcache, name)(10)
    theirs = getattr(cachetools, name)(10)
    for op, k in _workload(seed):
        if op == "get":
            assert ours.get(k) == theirs.get(k)
        elif op == "set":
            ours[k] = theirs[k] = k * 7
        elif op == "del":
            if k in theirs:
                del ours[k]
                del theirs[k]
            else:
                with pytest.raises(KeyError):
                    del ours[k]
        elif len(theirs):
            assert ours.popitem() == theirs.popitem()
        assert len(ours) == len(theirs)
        assert sorted(ours) == sorted(theirs)
    if name != "LFUCache":                          # cachetools iterates LFU in dict order
        if name in ("LRUCache", "FIFOCache"):        # ...and these too: compare eviction order
            assert [theirs.popitem() for _ in range(len(theirs))] == list(ours.items())
        else:
            assert list(ours) == list(theirs)
    ours._check()


@pytest.mark.parametrize("name", ["Cache", "FIFOCache", "LRUCache", "LFUCache"])
def test_same_as_model_with_sizes(name):
    ours = getattr(kvcache, name)(20, getsizeof=lambda v: v)
    theirs = getattr(cachetools, name)(20, getsizeof=lambda v: v)
    rnd = random.Random(7)
    for _ in range(3000):
        k = rnd.randrange(40)
        v = rnd.randrange(1, 8)
        if rnd.random() < 0.5:
            assert ours.get(k) == theirs.get(k)
        else:
            ours[k] = theirs[k] = v
        assert ours.currsize == theirs.currsize
        assert sorted(ours) == sorted(theirs)
    ours._check()


def test_models_match_cachetools():
    """The reference models themselves agree with cachetools (they pin what the engine must do)."""
    for name, model_cls in MODELS.items():
        if name == "RRCache":
            continue
        model = model_cls(10)
        theirs = getattr(cachetools, name)(10)
        for op, k in _workload(3):
            if op == "get":
                assert model.get(k)[1] == theirs.get(k)
            elif op == "set":
                model.set(k, k)
                theirs[k] = k
            elif op == "del" and k in theirs:
                model.delete(k)
                del theirs[k]
            elif op == "popitem" and len(theirs):
                assert model.popitem() == theirs.popitem()
        assert sorted(model.data) == sorted(theirs)


def test_rr_default_choice_evicts_existing_keys():
    c = kvcache.RRCache(50, seed=5)
    for i in range(10_000):
        c[i] = i
    assert len(c) == 50
    assert all(0 <= k < 10_000 for k in c)
    assert len(set(c)) == 50
    c._check()
    # random: the survivors are not just the latest keys
    assert min(c) < 10_000 - 50


def test_rr_victims_spread():
    """The built-in generator picks victims uniformly enough that old keys survive sometimes."""
    survivors = 0
    for seed in range(20):
        c = kvcache.RRCache(10, seed=seed)
        for i in range(20):
            c[i] = i
        survivors += sum(1 for k in c if k < 10)
    # expectation is about 10 * 20 * (9/10)**10 ~ 70; a broken picker gives 0 or 200
    assert 20 < survivors < 150
