"""kvcache.LRU against lru-dict's LRU: its README and tests, plus random operation sequences
run on both side by side."""

import random

import pytest

import kvcache


@pytest.fixture(params=["kvcache", "lru-dict"])
def LRU(request):
    if request.param == "kvcache":
        return kvcache.LRU
    return pytest.importorskip("lru").LRU


def test_readme_example(LRU):
    evicted = []
    l = LRU(5, callback=lambda k, v: evicted.append((k, v)))  # noqa: E741
    for i in range(5):
        l[i] = str(i)
    assert l.items() == [(4, "4"), (3, "3"), (2, "2"), (1, "1"), (0, "0")]
    l[5] = "5"
    assert l.keys() == [5, 4, 3, 2, 1]
    assert evicted == [(0, "0")]
    assert l[3] == "3"
    assert l.keys() == [3, 5, 4, 2, 1]
    assert l.peek_first_item() == (3, "3")
    assert l.peek_last_item() == (1, "1")
    assert l.keys() == [3, 5, 4, 2, 1]  # peeking does not touch
    assert l.has_key(5) and 5 in l
    assert l.keys() == [3, 5, 4, 2, 1]  # nor do membership tests
    assert l.get_size() == 5
    l.set_size(3)
    assert l.keys() == [3, 5, 4]
    assert evicted == [(0, "0"), (1, "1"), (2, "2")]
    assert l.get_size() == 3
    assert l.values() == ["3", "5", "4"]


def test_lists_not_views(LRU):
    l = LRU(3)  # noqa: E741
    l[1] = 1
    assert type(l.keys()) is list and type(l.values()) is list and type(l.items()) is list


def test_size_must_be_positive(LRU):
    for bad in (0, -1):
        with pytest.raises(ValueError, match="Size should be a positive number"):
            LRU(bad)
        with pytest.raises(ValueError):
            LRU(3).set_size(bad)
    for bad in ("3", 2.5, None):
        with pytest.raises(TypeError):
            LRU(bad)
    assert LRU(size=2).get_size() == 2


def test_callback_must_be_callable(LRU):
    with pytest.raises(TypeError):
        LRU(3, callback=5)
    l = LRU(3)  # noqa: E741
    with pytest.raises(TypeError):
        l.set_callback(5)


def test_set_callback_and_none(LRU):
    seen = []
    l = LRU(1)  # noqa: E741
    l[1] = 1
    l.set_callback(lambda k, v: seen.append(k))
    l[2] = 2
    l.set_callback(None)
    l[3] = 3
    assert seen == [1]


def test_callback_only_on_eviction(LRU):
    seen = []
    l = LRU(2, callback=lambda k, v: seen.append(k))  # noqa: E741
    l[1] = 1
    l[2] = 2
    del l[1]
    l.pop(2)
    l[3] = 3
    l.popitem()
    l[4] = 4
    l.clear()
    l[5] = 5
    l[5] = 6  # an update evicts nothing
    assert seen == []


def test_callback_exception_propagates_after_insert():
    # lru-dict 1.4 turns this into a SystemError ("returned a result with an exception
    # set"); kvcache lets the callback's own exception through, the item inserted.
    def bad(k, v):
        raise RuntimeError("callback")

    l = kvcache.LRU(2, callback=bad)  # noqa: E741
    l[1] = 1
    l[2] = 2
    with pytest.raises(RuntimeError):
        l[3] = 3
    assert l.keys() == [3, 2]


def test_empty(LRU):
    l = LRU(2)  # noqa: E741
    assert l.peek_first_item() is None
    assert l.peek_last_item() is None
    with pytest.raises(KeyError):
        l.popitem()
    with pytest.raises(KeyError):
        l[1]
    with pytest.raises(KeyError):
        del l[1]
    with pytest.raises(KeyError):
        l.pop(1)
    assert len(l) == 0 and l.items() == []


def test_popitem(LRU):
    l = LRU(5)  # noqa: E741
    for i in range(4):
        l[i] = i
    l[0]
    assert l.popitem() == (1, 1)
    assert l.popitem(least_recent=False) == (0, 0)
    assert l.popitem(False) == (3, 3)
    assert l.keys() == [2]


def test_stats(LRU):
    l = LRU(3)  # noqa: E741
    l[1] = 1
    l[2] = 2
    l[1]
    l.get(2)
    l.get(9)
    with pytest.raises(KeyError):
        l[9]
    assert l.get_stats() == (2, 2)
    1 in l
    l.has_key(1)
    l.peek_first_item()
    assert l.get_stats() == (2, 2)
    l.pop(1)
    l.pop(9, None)
    assert l.get_stats() == (3, 3)
    l.setdefault(2)
    l.setdefault(7, 7)
    assert l.get_stats() == (4, 4)
    l.clear()
    assert l.get_stats() == (0, 0)


def test_setdefault_get_pop_update(LRU):
    l = LRU(3)  # noqa: E741
    assert l.setdefault(1, "a") == "a"
    assert l.setdefault(1, "b") == "a"
    assert l.get(2) is None and l.get(2, "d") == "d"
    l[2] = 2
    l[3] = 3
    assert l.setdefault(1) == "a"
    assert l.keys() == [1, 3, 2]  # setdefault touches
    assert l.pop(3) == 3 and l.pop(3, "x") == "x"
    l.update({4: 4})
    l.update({5: 5})
    l.update(z=6)
    assert l.keys() == ["z", 5, 4]
    assert len(l) == 3


def test_update_existing_moves_to_front(LRU):
    l = LRU(3)  # noqa: E741
    for i in range(3):
        l[i] = i
    l[0] = "new"
    assert l.items() == [(0, "new"), (2, 2), (1, 1)]
    l[3] = 3
    assert l.keys() == [3, 0, 2]


def test_equal_only_to_itself_and_hashable(LRU):
    a, b = LRU(3), LRU(3)
    assert a != b and not (a == b) and a != {} and a == a
    assert len({a, b}) == 2 and hash(a) == hash(a)


def test_kvcache_extras():
    l = kvcache.LRU(3, callback=None)  # noqa: E741
    assert isinstance(l, kvcache.LRUCache)


OPS = ["set", "get", "getitem", "del", "pop", "popitem", "popitem_mru", "setdefault", "peek_first",
       "peek_last", "contains", "set_size", "keys", "values", "items", "len", "stats", "clear"]


@pytest.mark.parametrize("seed", range(20))
def test_random_sequences_match_lru_dict(seed):
    lru = pytest.importorskip("lru")
    rng = random.Random(seed)
    size = rng.randint(1, 6)
    ev_a, ev_b = [], []
    a = kvcache.LRU(size, callback=lambda k, v: ev_a.append((k, v)))
    b = lru.LRU(size, callback=lambda k, v: ev_b.append((k, v)))

    def run(obj, op, key, val):
        try:
            if op == "set":
                obj[key] = val
                return None
            if op == "get":
                return obj.get(key, "dflt")
            if op == "getitem":
                return obj[key]
            if op == "del":
                del obj[key]
                return None
            if op == "pop":
                return obj.pop(key, "dflt") if val % 2 else obj.pop(key)
            if op == "popitem":
                return obj.popitem()
            if op == "popitem_mru":
                return obj.popitem(least_recent=False)
            if op == "setdefault":
                return obj.setdefault(key, val)
            if op == "peek_first":
                return obj.peek_first_item()
            if op == "peek_last":
                return obj.peek_last_item()
            if op == "contains":
                return (key in obj, obj.has_key(key))
            if op == "set_size":
                obj.set_size(1 + val % 6)
                return obj.get_size()
            if op == "keys":
                return obj.keys()
            if op == "values":
                return obj.values()
            if op == "items":
                return obj.items()
            if op == "len":
                return len(obj)
            if op == "stats":
                return obj.get_stats()
            if op == "clear":
                obj.clear()
                return None
        except KeyError as exc:
            return ("KeyError", exc.args)
        raise AssertionError(op)

    for _ in range(400):
        op = rng.choice(OPS)
        key = rng.randint(0, 8)
        val = rng.randint(0, 100)
        assert run(a, op, key, val) == run(b, op, key, val), op
        assert a.items() == b.items()
        assert ev_a == ev_b
