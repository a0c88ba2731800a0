"""Keys whose __hash__/__eq__ raise or mutate the cache: clear errors, no lost entries, no crash."""
import gc
import sys

import pytest

import kvcache


class BadHash:
    def __hash__(self):
        raise ZeroDivisionError("hash")


class BadEq:
    def __init__(self, h=7):
        self.h = h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        raise ArithmeticError("eq")


class Key:
    def __init__(self, v, h=0):
        self.v = v
        self.h = h

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        return isinstance(other, Key) and self.v == other.v


def snapshot(c):
    return list(c.items()), c.currsize


def test_hash_raises(cache_cls):
    c = cache_cls(5)
    c.update({1: 1, 2: 2})
    before = snapshot(c)
    for op in (lambda: c[BadHash()], lambda: c.__setitem__(BadHash(), 1), lambda: BadHash() in c,
               lambda: c.get(BadHash()), lambda: c.pop(BadHash()), lambda: c.__delitem__(BadHash()),
               lambda: c.peek(BadHash()), lambda: c.setdefault(BadHash(), 1)):
        with pytest.raises(ZeroDivisionError):
            op()
    assert snapshot(c) == before
    c._check()


def test_eq_raises(cache_cls):
    c = cache_cls(5)
    k = BadEq()
    c[k] = "stored"                     # identity: no comparison needed
    assert c[k] == "stored"
    c[1] = 1
    before = snapshot(c)
    other = BadEq()                     # same hash, different object: __eq__ runs and raises
    for op in (lambda: c[other], lambda: c.__setitem__(other, 1), lambda: other in c,
               lambda: c.get(other), lambda: c.pop(other), lambda: c.__delitem__(other)):
        with pytest.raises(ArithmeticError):
            op()
    assert snapshot(c) == before
    c._check()


def test_huge_and_negative_hashes(cache_cls):
    c = cache_cls(100)
    ks = [Key(i, h) for i, h in enumerate([0, -1, -2, sys.maxsize, -sys.maxsize - 1, 2**61 - 1, 12345])]
    for i, k in enumerate(ks):
        c[k] = i
    assert [c[k] for k in ks] == list(range(len(ks)))
    c._check()


class Mutating:
    """A key whose __eq__ mutates the cache the first time it runs."""

    def __init__(self, v, cache, action):
        self.v = v
        self.cache = cache
        self.action = action
        self.fired = False

    def __hash__(self):
        return 99

    def __eq__(self, other):
        if not self.fired and self.action is not None:
            self.fired = True
            self.action(self.cache)
        return isinstance(other, Mutating) and other.v == self.v


@pytest.mark.parametrize("action", ["clear", "insert", "delete", "fill"])
def test_eq_mutates_during_lookup(cache_cls, action):
    # dict (and the engine) call stored_key == probe: the stored key mutates the cache
    c = cache_cls(10**6)

    def act(cache):
        if action == "clear":
            cache.clear()
        elif action == "insert":
            cache["new"] = "new"
        elif action == "delete":
            cache.pop(3, None)
        else:
            for j in range(100, 3000):      # forces growth: buffers and index are rebuilt
                cache[j] = j

    resident = Mutating(1, c, act)
    resident.fired = True
    c[resident] = "resident"
    for i in range(10):
        c[i] = i
    resident.fired = False                  # armed: the next comparison mutates
    got = c.get(Mutating(1, c, None), "absent")
    if action == "clear":
        assert got == "absent" and len(c) == 0
    else:
        assert got == "resident"
        resident.fired = False
        c[Mutating(1, c, None)] = "updated"
        assert sum(1 for k in c if isinstance(k, Mutating)) == 1
        assert c[resident] == "updated"
    c._check()


def test_eq_mutates_forever_raises_cleanly(cache_cls):
    c = cache_cls(10)

    class Forever:
        def __hash__(self):
            return 5

        def __eq__(self, other):
            c[len(c) % 3 + 1000] = 1        # every comparison changes the table
            return False

    c[Forever()] = 1
    c[Forever()] = 2                        # compares against the first
    c._check()


def test_del_of_value_reenters(cache_cls):
    c = cache_cls(2)

    class Reenter:
        def __del__(self):
            c.get(1)
            c["from-del"] = 1               # runs once the structure is consistent

    c[1] = Reenter()
    c[2] = 2
    c[3] = 3                                # evicts one: __del__ may run inside __setitem__
    c.pop(2, None)
    c.clear()
    gc.collect()
    c._check()
    assert len(c) <= 2


def test_getsizeof_mutates_cache(cache_cls):
    def sizeof(v):
        c.pop("x", None)
        return 1

    c = cache_cls(3, getsizeof=sizeof)
    c["x"] = 1
    c["y"] = 2
    assert "y" in c
    c._check()


def test_iteration_survives_anything(cache_cls):
    c = cache_cls(20)
    c.update({i: i for i in range(20)})
    it = iter(c)
    next(it)
    c.clear()
    c.update({i: i for i in range(100, 120)})
    with pytest.raises(RuntimeError):
        next(it)
    with pytest.raises(StopIteration):
        next(it)
