"""Hypothesis state machines for expiry: the compiled caches against a small reference model.

The model is cachetools 8's TTLCache/TLRUCache written out literally on an OrderedDict (LRU
order) plus an expiry time per key, with a fake clock that a "time passes" rule moves.
The same model, with no default time-to-live, describes per-entry TTLs on LRUCache.
"""
import collections
import itertools
import math

import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from kvcache import LRUCache, TLRUCache, TTLCache


class Clock:
    """A fake timer (module level: the caches' copies and pickles can refer to it)."""

    def __init__(self):
        self.time = 0.0

    def __call__(self):
        return self.time


def ttu(key, value, now):
    return now + (value % 4) - 0.5


class ExpiryModel:
    """LRU with expiry.  Expired entries stay until something expires them (as cachetools).

    default: "ttl" (a fixed ttl), "ttu" (the ttu function, already-expired sets remove the
    key) or None (per-entry TTLs only).
    """

    def __init__(self, maxsize, clock, default, ttl=None):
        self.maxsize = maxsize
        self.clock = clock
        self.default = default
        self.ttl = ttl
        self.data = collections.OrderedDict()
        self.exp = {}
        self.stamp = {}
        self.stamps = itertools.count()
        self.hits = self.misses = 0

    def now(self):
        return self.clock.time

    def alive(self, key):
        return key in self.data and self.now() < self.exp[key]

    def expire(self, now=None):
        now = self.now() if now is None else now
        due = [k for k in self.data if not (now < self.exp[k])]
        due.sort(key=lambda k: (self.exp[k], self.stamp[k]))
        out = [(k, self.data[k]) for k in due]
        for k in due:
            self._drop(k)
        return out

    def _drop(self, key):
        del self.data[key], self.exp[key], self.stamp[key]

    def set(self, key, value, ttl=None):
        """Return the evicted pairs (live entries pushed out in LRU order)."""
        now = self.now()
        if ttl is not None:
            exp = now + ttl
        elif self.default == "ttl":
            exp = now + self.ttl
        elif self.default == "ttu":
            exp = ttu(key, value, now)
        else:
            exp = math.inf
        self.expire(now)
        if self.default == "ttu" and not (now < exp):
            if key in self.data:
                self._drop(key)
            return []
        evicted = []
        if key in self.data:
            self.data[key] = value
            self.data.move_to_end(key)
        else:
            if self.maxsize < 1:
                raise ValueError("value too large")
            while len(self.data) >= self.maxsize:
                evicted.append(self.popitem())
            self.data[key] = value
        self.exp[key] = exp
        self.stamp[key] = next(self.stamps)
        return evicted

    def get(self, key):
        if self.alive(key):
            self.hits += 1
            self.data.move_to_end(key)
            return True, self.data[key]
        self.misses += 1
        return False, None

    def popitem(self):
        self.expire()
        key = next(iter(self.data))
        value = self.data[key]
        self._drop(key)
        return key, value

    def resize(self, maxsize):
        self.expire()
        self.maxsize = maxsize
        evicted = []
        while len(self.data) > maxsize:
            evicted.append(self.popitem())
        return evicted

    def live(self):
        return [k for k in self.data if self.alive(k)]


keys = st.one_of(st.integers(-3, 8), st.sampled_from(["a", "b", (1, 2), 0.5]))
values = st.integers(0, 100)
ttls = st.one_of(st.none(), st.sampled_from([0, 0.5, 1, 2, 3, math.inf]),
                 st.floats(0, 6, allow_nan=False))


def machine_for(kind):
    class Machine(RuleBasedStateMachine):
        @initialize(maxsize=st.integers(0, 6))
        def setup(self, maxsize):
            self.clock = Clock()
            self.evicted = []
            on_evict = lambda k, v: self.evicted.append((k, v))  # noqa: E731
            if kind == "TTLCache":
                self.cache = TTLCache(maxsize, 2, timer=self.clock, on_evict=on_evict)
                self.model = ExpiryModel(maxsize, self.clock, "ttl", 2)
            elif kind == "TLRUCache":
                self.cache = TLRUCache(maxsize, ttu, timer=self.clock, on_evict=on_evict)
                self.model = ExpiryModel(maxsize, self.clock, "ttu")
            else:
                self.cache = LRUCache(maxsize, on_evict=on_evict)
                self.cache.timer = self.clock
                self.model = ExpiryModel(maxsize, self.clock, None)

        @rule(dt=st.one_of(st.sampled_from([0, 0.5, 1, 2]), st.floats(0, 3, allow_nan=False)))
        def time_passes(self, dt):
            self.clock.time += dt

        def _set(self, key, value, ttl, setter):
            try:
                expected = self.model.set(key, value, ttl)
            except ValueError:
                try:
                    setter()
                except ValueError:
                    return
                raise AssertionError("expected ValueError")
            self.evicted.clear()
            setter()
            assert self.evicted == expected

        @rule(key=keys, value=values)
        def setitem(self, key, value):
            self._set(key, value, None, lambda: self.cache.__setitem__(key, value))

        @rule(key=keys, value=values, ttl=ttls)
        def set_with_ttl(self, key, value, ttl):
            self._set(key, value, ttl, lambda: self.cache.set(key, value, ttl=ttl))

        @rule(key=keys)
        def get(self, key):
            found, value = self.model.get(key)
            assert self.cache.get(key, "missing") == (value if found else "missing")

        @rule(key=keys)
        def getitem(self, key):
            found, value = self.model.get(key)
            try:
                got = self.cache[key]
            except KeyError:
                assert not found
            else:
                assert found and got == value

        @rule(key=keys)
        def contains_and_peek(self, key):
            alive = self.model.alive(key)
            assert (key in self.cache) == alive
            assert self.cache.peek(key, "missing") == (self.model.data[key] if alive else "missing")

        @rule(key=keys)
        def ttl_of(self, key):
            if self.model.alive(key):
                exp = self.model.exp[key]
                assert self.cache.ttl_of(key) == (None if exp == math.inf else exp - self.model.now())
            else:
                try:
                    self.cache.ttl_of(key)
                except KeyError:
                    pass
                else:
                    raise AssertionError("ttl_of of a dead key")

        @rule(key=keys)
        def delete(self, key):
            present, alive = key in self.model.data, self.model.alive(key)
            if present:
                self.model._drop(key)
            try:
                del self.cache[key]
            except KeyError:
                assert not alive
            else:
                assert alive

        @rule(key=keys)
        def pop(self, key):
            if self.model.alive(key):
                expected = self.model.data[key]
                self.model._drop(key)
            else:
                expected = "missing"
            assert self.cache.pop(key, "missing") == expected

        @rule(key=keys, value=values)
        def setdefault(self, key, value):
            if self.model.alive(key):
                found, expected = self.model.get(key)
            else:
                expected = value
                try:
                    self.model.set(key, value)
                except ValueError:
                    try:
                        self.cache.setdefault(key, value)
                    except ValueError:
                        return
                    raise AssertionError("expected ValueError")
            assert self.cache.setdefault(key, value) == expected

        @rule()
        def popitem(self):
            try:
                expected = self.model.popitem()
            except StopIteration:
                try:
                    self.cache.popitem()
                except KeyError:
                    return
                raise AssertionError("popitem on a cache with no live entry")
            assert self.cache.popitem() == expected

        @rule()
        def expire(self):
            assert self.cache.expire() == self.model.expire()

        @rule()
        def length_and_stats(self):
            self.model.expire()
            assert len(self.cache) == len(self.model.data) == self.cache.currsize
            stats = self.cache.stats()
            assert (stats.hits, stats.misses) == (self.model.hits, self.model.misses)

        @rule(maxsize=st.integers(0, 7))
        def resize(self, maxsize):
            self.evicted.clear()
            expected = self.model.resize(maxsize)
            self.cache.resize(maxsize)
            assert self.evicted == expected

        @rule()
        def clear(self):
            self.model.data.clear()
            self.model.exp.clear()
            self.model.stamp.clear()
            self.cache.clear()

        @rule()
        def copy_round_trip(self):
            # a copy (same clock) holds the same live entries with the same expiry times
            other = self.cache.__copy__()
            assert [k for k in other] == self.model.live()
            for k in self.model.live():
                assert other.ttl_of(k) == self.cache.ttl_of(k)

        @invariant()
        def same_live_contents_and_order(self):
            if not hasattr(self, "cache"):
                return
            # no len() here (it expires entries): a list comprehension does not call it
            assert [k for k in self.cache] == self.model.live()
            assert [self.cache.peek(k) for k in self.model.live()] == \
                [self.model.data[k] for k in self.model.live()]
            self.cache._check()

    Machine.__name__ = kind + "ExpiryMachine"
    return Machine


TestTTLCacheMachine = machine_for("TTLCache").TestCase
TestTLRUCacheMachine = machine_for("TLRUCache").TestCase
TestLRUPerEntryMachine = machine_for("LRUCache").TestCase

for _case in (TestTTLCacheMachine, TestTLRUCacheMachine, TestLRUPerEntryMachine):
    _case.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
del _case
