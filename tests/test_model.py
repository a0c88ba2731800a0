"""Hypothesis state machines: each compiled cache and its reference model, operation by operation.

Keys include objects whose hash takes only a few values, so probe chains, backward-shift deletions and
equal-hash comparisons are exercised on purpose.
"""
import hypothesis.strategies as st
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvcache
from tests.models import MODELS, Collider


keys = st.one_of(st.integers(-5, 12), st.builds(Collider, st.integers(0, 12)),
                 st.sampled_from(["a", "b", (1, 2), -1, -2, 2**64, 0.5]))
values = st.integers(0, 1000)


def positional_choice(seq):
    return seq[len(seq) // 2]


def machine_for(name):
    cls = getattr(kvcache, name)
    model_cls = MODELS[name]

    class Machine(RuleBasedStateMachine):
        @initialize(maxsize=st.integers(0, 8), capacity=st.one_of(st.none(), st.integers(0, 4)))
        def setup(self, maxsize, capacity):
            self.evicted = []
            kwargs = dict(on_evict=lambda k, v: self.evicted.append((k, v)), capacity=capacity, seed=1)
            if name == "RRCache":
                self.cache = cls(maxsize, choice=positional_choice, **kwargs)
                self.model = model_cls(maxsize, choice=positional_choice)
            else:
                self.cache = cls(maxsize, **kwargs)
                self.model = model_cls(maxsize)

        @rule(key=keys, value=values)
        def set(self, key, value):
            try:
                expected = self.model.set(key, value)
            except ValueError:
                try:
                    self.cache[key] = value
                except ValueError:
                    return
                raise AssertionError("expected ValueError")
            self.evicted.clear()
            self.cache[key] = value
            assert self.evicted == expected

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
        def peek(self, key):
            assert self.cache.peek(key, "missing") == self.model.data.get(key, "missing")
            assert (key in self.cache) == (key in self.model)

        @rule(key=keys)
        def delete(self, key):
            if key in self.model:
                self.model.delete(key)
                del self.cache[key]
            else:
                try:
                    del self.cache[key]
                except KeyError:
                    pass
                else:
                    raise AssertionError("deleted a missing key")

        @rule(key=keys)
        def pop(self, key):
            expected = self.model.data.get(key, "missing")
            if key in self.model:
                self.model.delete(key)
            assert self.cache.pop(key, "missing") == expected

        @precondition(lambda self: len(self.model) > 0)
        @rule()
        def popitem(self):
            assert self.cache.popitem() == self.model.popitem()

        @rule(maxsize=st.integers(0, 10))
        def resize(self, maxsize):
            self.evicted.clear()
            expected = self.model.resize(maxsize)
            self.cache.resize(maxsize)
            assert self.evicted == expected

        @rule()
        def clear(self):
            self.model.clear()
            self.cache.clear()

        @invariant()
        def same_contents_and_order(self):
            if not hasattr(self, "cache"):
                return
            assert list(self.cache) == self.model.order()
            assert [self.cache.peek(k) for k in self.cache] == [self.model.data[k] for k in self.model.order()]
            assert len(self.cache) == len(self.model) == self.cache.currsize
            self.cache._check()

    Machine.__name__ = name + "Machine"
    return Machine


TestCacheMachine = machine_for("Cache").TestCase
TestFIFOMachine = machine_for("FIFOCache").TestCase
TestLRUMachine = machine_for("LRUCache").TestCase
TestLFUMachine = machine_for("LFUCache").TestCase
TestRRMachine = machine_for("RRCache").TestCase

for _case in (TestCacheMachine, TestFIFOMachine, TestLRUMachine, TestLFUMachine, TestRRMachine):
    _case.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
del _case      # a module-level alias would make pytest collect that machine twice
