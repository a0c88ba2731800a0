"""Hypothesis state machines for the configurations the other machines leave out.

Already driven elsewhere, operation by operation against a reference model:
  tests/test_model.py       Cache, FIFOCache, LRUCache, LFUCache, RRCache (sizes of 1)
  tests/test_ttl_model.py   TTLCache, TLRUCache, per-entry TTLs on LRUCache (fake clock)
  tests/test_tinylfu.py     TinyLFUCache against tests/tinylfu_model.py, decision for decision

Added here, each with the whole protocol (set, get, [], del, pop, popitem, setdefault, clear,
resize, in, len, peek, iteration order, values, currsize, stats):
  SizedMachine        the five list policies with getsizeof: integer sizes, and float sizes
  GrowthMachine       the five list policies and TinyLFUCache (exact model) at maxsize 10_000,
                      starting with room for a few entries: the buffers grow during the run
  LRUDictMachine      kvcache.LRU, lru-dict's protocol (most recent first, get_stats, callback)
  TinyLFUSizedMachine TinyLFUCache with getsizeof (no exact model): every key present reads
                      back its last value, every key gone was evicted (on_evict) or removed,
                      currsize is the sum of the sizes and stays within maxsize
"""
import math
from fractions import Fraction

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvcache
from tests.models import MODELS, Collider, LRUModel
from tests.tinylfu_model import TinyLFUModel


def positional_choice(seq):
    return seq[len(seq) // 2]


# a few hot keys make updates of present keys (and their size changes) common
keys = st.one_of(st.integers(0, 5), st.integers(-5, 25), st.builds(Collider, st.integers(0, 12)),
                 st.sampled_from(["a", "b", (1, 2), 2**64, 0.5]))
values = st.integers(0, 1000)

POLICIES = ["Cache", "FIFOCache", "LRUCache", "LFUCache", "RRCache"]
BOUNDED = settings(max_examples=60, stateful_step_count=50, deadline=None)


def int_size(value):
    return value % 5 + 1


FLOAT_SIZES = (0.1, 0.2, 0.3, 0.7, 1.1)


def float_size(value):
    return FLOAT_SIZES[value % 5]


# Float maxsizes off the 0.1 grid the sizes sum on: no decision hangs on the last bit of a
# float sum, so an engine keeping a running sum and one summing exactly decide alike.
FLOAT_MAXSIZES = st.sampled_from([0.05, 0.95, 1.45, 2.95, 4.25])


class Evicted(list):
    """What on_evict reported, as (key, value) pairs."""

    def append_pair(self, key, value):
        self.append((key, value))


class ProtocolMachine(RuleBasedStateMachine):
    """The mapping protocol, the cache against self.model (set up by subclasses)."""

    def make(self, name, maxsize, **kwargs):
        """Build the cache under test with its eviction recorder; zero the expected counters."""
        self.evicted = Evicted()
        self.hits = self.misses = self.evictions = 0
        if name == "RRCache":
            kwargs["choice"] = positional_choice
        kwargs.setdefault("seed", 1)
        self.cache = getattr(kvcache, name)(maxsize, on_evict=self.evicted.append_pair, **kwargs)

    def _set(self, key, value, setter):
        try:
            expected = self.model.set(key, value)
        except ValueError:
            with pytest.raises(ValueError):
                setter()
            return
        self.evicted.clear()
        setter()
        assert self.evicted == expected
        self.evictions += len(expected)

    @rule(key=keys, value=values)
    def set(self, key, value):
        self._set(key, value, lambda: self.cache.__setitem__(key, value))

    @rule(key=keys)
    def get(self, key):
        found, value = self.model.get(key)
        self.hits += found
        self.misses += not found
        assert self.cache.get(key, "missing") == (value if found else "missing")

    @rule(key=keys)
    def getitem(self, key):
        found, value = self.model.get(key)
        self.hits += found
        self.misses += not found
        if found:
            assert self.cache[key] == value
        else:
            with pytest.raises(KeyError):
                self.cache[key]

    @rule(key=keys)
    def peek_and_contains(self, key):
        assert self.cache.peek(key, "missing") == self.model.data.get(key, "missing")
        assert (key in self.cache) == (key in self.model)

    @rule(key=keys)
    def delete(self, key):
        if key in self.model:
            self.model.delete(key)
            del self.cache[key]
        else:
            with pytest.raises(KeyError):
                del self.cache[key]

    @rule(key=keys)
    def pop(self, key):
        expected = self.model.data.get(key, "missing")
        if key in self.model:
            self.model.delete(key)
        assert self.cache.pop(key, "missing") == expected

    @rule(key=keys, value=values)
    def setdefault(self, key, value):
        if key in self.model:
            found, expected = self.model.get(key)     # a counted lookup that touches
            self.hits += 1
            assert self.cache.setdefault(key, value) == expected
        else:
            self._set(key, value, lambda: self.cache.setdefault(key, value))
            if key in self.model:
                assert self.cache.peek(key) == value

    @rule()
    def popitem(self):
        if len(self.model) == 0:
            with pytest.raises(KeyError):
                self.cache.popitem()
            return
        assert self.cache.popitem() == self.model.popitem()

    @rule()
    def clear(self):
        self.model.clear()
        self.cache.clear()

    @rule()
    def length_and_stats(self):
        assert len(self.cache) == len(self.model)
        stats = self.cache.stats()
        assert (stats.hits, stats.misses, stats.evictions) == \
            (self.hits, self.misses, self.evictions)
        assert stats.maxsize == self.model.maxsize

    def _resize(self, maxsize):
        self.evicted.clear()
        expected = self.model.resize(maxsize)
        self.cache.resize(maxsize)
        assert self.evicted == expected
        self.evictions += len(expected)

    def same_currsize(self):
        if self.check_engine:
            assert self.cache.currsize == self.model.currsize
        else:                                     # float sizes: a running sum, off by rounding
            assert math.isclose(self.cache.currsize, self.model.currsize, rel_tol=0, abs_tol=1e-9)

    @invariant()
    def same_contents_and_order(self):
        if not hasattr(self, "cache"):
            return
        order = self.model.order()
        assert list(self.cache) == order
        assert [self.cache.peek(k) for k in order] == [self.model.data[k] for k in order]
        self.same_currsize()
        if self.check_engine:
            self.cache._check()


def model_for(name, maxsize, **kwargs):
    if name == "RRCache":
        return MODELS[name](maxsize, choice=positional_choice, **kwargs)
    return MODELS[name](maxsize, **kwargs)


# -- getsizeof-sized caches -------------------------------------------------------------------


def sized_machine(name, floats):
    getsizeof = float_size if floats else int_size
    maxsizes = FLOAT_MAXSIZES if floats else st.integers(0, 16)

    class SizedMachine(ProtocolMachine):
        # float sizes: see test_float_sizes_keep_currsize_the_sum_of_sizes for the engine check
        check_engine = not floats

        @initialize(maxsize=maxsizes)
        def setup(self, maxsize):
            self.make(name, maxsize, getsizeof=getsizeof)
            self.model = model_for(name, maxsize, getsizeof=getsizeof)

        @rule(maxsize=maxsizes)
        def resize(self, maxsize):
            self._resize(maxsize)

    SizedMachine.__name__ = "%s%sSizedMachine" % (name, "Float" if floats else "Int")
    return SizedMachine


for _name in POLICIES:
    for _floats in (False, True):
        _case = sized_machine(_name, _floats).TestCase
        _case.settings = BOUNDED
        globals()["Test%s%sSizedMachine" % (_name, "Float" if _floats else "Int")] = _case


@pytest.mark.parametrize("name", POLICIES)
def test_float_sizes_keep_currsize_the_sum_of_sizes(name):
    cache = getattr(kvcache, name)(2.95, getsizeof=float_size, seed=1)
    for i in range(300):
        cache[i % 17] = i * 7
        if i % 5 == 0:
            cache.pop((i * 3) % 17, None)
        cache._check()                    # currsize == the sum of the sizes, exactly


# -- growth: maxsize 10_000, buffers that start with room for a few entries --------------------


def growth_machine(name):
    class GrowthMachine(ProtocolMachine):
        check_engine = True

        @initialize(capacity=st.sampled_from([None, 0, 1, 3]), seed=st.sampled_from([1, 77]),
                    prefill=st.sampled_from([0, 70, 700, 1500]))
        def setup(self, capacity, seed, prefill):
            self.make(name, 10_000, capacity=capacity, seed=seed)
            if name == "TinyLFUCache":
                self.model = TinyLFUModel(10_000, capacity=capacity, seed=seed)
            else:
                self.model = model_for(name, 10_000)
            self._insert_range(5000, prefill, 1)     # past the first buffers in most runs

        @rule(start=st.integers(0, 3000), n=st.sampled_from([1, 7, 65, 300]) | st.integers(1, 400),
              value=values)
        def set_many(self, start, n, value):
            self._insert_range(start, n, value)

        def _insert_range(self, start, n, value):
            expected = []
            try:
                for k in range(start, start + n):
                    expected += self.model.set(k, value)
            except ValueError:                  # maxsize 0: the first key is already too large
                with pytest.raises(ValueError):
                    self.cache.set_many(range(start, start + n), [value] * n)
                return
            self.evicted.clear()
            self.cache.set_many(range(start, start + n), [value] * n)
            assert self.evicted == expected
            self.evictions += len(expected)

        @rule(maxsize=st.sampled_from([0, 3, 50, 400, 10_000]))
        def resize(self, maxsize):
            self._resize(maxsize)

        @invariant()
        def same_policy_state(self):
            if hasattr(self, "cache") and name == "TinyLFUCache":
                assert self.cache._policy_state() == self.model.state()

    GrowthMachine.__name__ = name + "GrowthMachine"
    return GrowthMachine


for _name in POLICIES + ["TinyLFUCache"]:
    _case = growth_machine(_name).TestCase
    _case.settings = settings(max_examples=25 if _name == "TinyLFUCache" else 40,
                              stateful_step_count=30, deadline=None)
    globals()["Test%sGrowthMachine" % _name] = _case


# -- kvcache.LRU: lru-dict's protocol --------------------------------------------------------


class LRUDictMachine(RuleBasedStateMachine):
    @initialize(size=st.integers(1, 8))
    def setup(self, size):
        self.evicted = Evicted()
        self.cache = kvcache.LRU(size, callback=self.evicted.append_pair)
        self.model = LRUModel(size)
        self.hits = self.misses = 0

    def _lookup(self, key):
        found, value = self.model.get(key)
        self.hits += found
        self.misses += not found
        return found, value

    @rule(key=keys, value=values)
    def set(self, key, value):
        expected = self.model.set(key, value)
        self.evicted.clear()
        self.cache[key] = value
        assert self.evicted == expected

    @rule(key=keys)
    def get(self, key):
        found, value = self._lookup(key)
        assert self.cache.get(key, "missing") == (value if found else "missing")

    @rule(key=keys)
    def getitem(self, key):
        found, value = self._lookup(key)
        if found:
            assert self.cache[key] == value
        else:
            with pytest.raises(KeyError):
                self.cache[key]

    @rule(key=keys)
    def contains(self, key):
        assert (key in self.cache) == self.cache.has_key(key) == (key in self.model)

    @rule(key=keys)
    def pop(self, key):
        found, value = self._lookup(key)          # lru-dict counts pop as a lookup
        if found:
            self.model.delete(key)
        assert self.cache.pop(key, "missing") == (value if found else "missing")

    @rule(key=keys)
    def delete(self, key):
        if key in self.model:
            self.model.delete(key)
            del self.cache[key]
        else:
            with pytest.raises(KeyError):
                del self.cache[key]

    @rule(key=keys, value=values)
    def setdefault(self, key, value):
        found, expected = self._lookup(key)      # a lookup, counted even when it misses
        if not found:
            expected = value
            evicted = self.model.set(key, value)
            self.evicted.clear()
        assert self.cache.setdefault(key, value) == expected
        if not found:
            assert self.evicted == evicted

    @rule(least_recent=st.booleans())
    def popitem(self, least_recent):
        if len(self.model) == 0:
            with pytest.raises(KeyError):
                self.cache.popitem(least_recent)
            return
        key = self.model.order()[0 if least_recent else -1]
        expected = (key, self.model.data[key])
        self.model.delete(key)
        assert self.cache.popitem(least_recent) == expected

    @rule(size=st.integers(1, 10))
    def set_size(self, size):
        expected = self.model.resize(size)
        self.evicted.clear()
        self.cache.set_size(size)
        assert self.evicted == expected and self.cache.get_size() == size

    @rule()
    def clear(self):
        self.model.clear()
        self.cache.clear()
        self.hits = self.misses = 0                # lru-dict's clear resets the statistics

    @invariant()
    def same_contents_and_order(self):
        if not hasattr(self, "cache"):
            return
        recent_first = self.model.order()[::-1]
        assert list(self.cache) == self.cache.keys() == recent_first
        assert self.cache.values() == [self.model.data[k] for k in recent_first]
        assert self.cache.items() == [(k, self.model.data[k]) for k in recent_first]
        assert len(self.cache) == len(self.model)
        first = (recent_first[0], self.model.data[recent_first[0]]) if recent_first else None
        last = (recent_first[-1], self.model.data[recent_first[-1]]) if recent_first else None
        assert self.cache.peek_first_item() == first and self.cache.peek_last_item() == last
        assert self.cache.get_stats() == (self.hits, self.misses)
        self.cache._check()


TestLRUDictMachine = LRUDictMachine.TestCase
TestLRUDictMachine.settings = BOUNDED


# -- TinyLFUCache with getsizeof: consistency and bounds -------------------------------------


def tinylfu_sized_machine(floats):
    getsizeof = float_size if floats else int_size
    maxsizes = FLOAT_MAXSIZES if floats else st.integers(0, 16)

    class TinyLFUSizedMachine(RuleBasedStateMachine):
        @initialize(maxsize=maxsizes)
        def setup(self, maxsize):
            self.evicted = Evicted()
            self.maxsize = maxsize
            self.cache = kvcache.TinyLFUCache(maxsize, getsizeof=getsizeof, seed=3,
                                              on_evict=self.evicted.append_pair)
            self.expected = {}                   # what the cache must hold, evictions aside

        def _evictions(self):
            for k, v in self.evicted:
                assert self.expected.pop(k) == v     # only live pairs are evicted, once
            self.evicted.clear()

        @rule(key=keys, value=values)
        def set(self, key, value):
            if getsizeof(value) > self.maxsize:
                with pytest.raises(ValueError):
                    self.cache[key] = value
                return
            self.cache[key] = value
            self._evictions()                    # (the key itself may go, with its old value)
            self.expected[key] = value
            assert self.cache.peek(key, "missing") == value   # a new key is always stored

        @rule(key=keys)
        def get(self, key):
            assert self.cache.get(key, "missing") == self.expected.get(key, "missing")

        @rule(key=keys)
        def pop(self, key):
            assert self.cache.pop(key, "missing") == self.expected.pop(key, "missing")

        @rule(key=keys, value=values)
        def setdefault(self, key, value):
            if key in self.expected:
                assert self.cache.setdefault(key, value) == self.expected[key]
            elif getsizeof(value) <= self.maxsize:
                assert self.cache.setdefault(key, value) == value
                self._evictions()
                self.expected[key] = value

        @rule()
        def popitem(self):
            if not self.expected:
                with pytest.raises(KeyError):
                    self.cache.popitem()
                return
            k, v = self.cache.popitem()
            assert self.expected.pop(k) == v

        @rule(maxsize=maxsizes)
        def resize(self, maxsize):
            self.maxsize = maxsize
            self.cache.resize(maxsize)
            self._evictions()

        @rule()
        def clear(self):
            self.cache.clear()
            self.expected.clear()

        @invariant()
        def consistent_and_bounded(self):
            if not hasattr(self, "cache"):
                return
            assert dict(self.cache.items()) == self.expected
            assert len(self.cache) == len(self.expected) == len(list(self.cache))
            total = sum(map(Fraction, map(getsizeof, self.expected.values())), Fraction(0))
            assert math.isclose(self.cache.currsize, total, rel_tol=0, abs_tol=1e-9)
            assert total <= self.maxsize
            if not floats:
                self.cache._check()

    TinyLFUSizedMachine.__name__ = "TinyLFU%sSizedMachine" % ("Float" if floats else "Int")
    return TinyLFUSizedMachine


TestTinyLFUIntSizedMachine = tinylfu_sized_machine(False).TestCase
TestTinyLFUFloatSizedMachine = tinylfu_sized_machine(True).TestCase
TestTinyLFUIntSizedMachine.settings = BOUNDED
TestTinyLFUFloatSizedMachine.settings = BOUNDED

del _case, _name, _floats
