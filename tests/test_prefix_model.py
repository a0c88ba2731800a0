"""Hypothesis state machine: kvcache.llm.PrefixCache against the pure-Python block manager.

The model (`PyPrefixCache`, dict + OrderedDict) lives in bench/bench_llm.py, where it is also
the pure-Python side of the block-manager benchmark.
"""
import importlib.util
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from kvcache.llm import BlockPool, PoolExhaustedError, PrefixCache


def _load_model():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_llm.py"
    spec = importlib.util.spec_from_file_location("_kvcache_bench_llm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench_llm = _load_model()
PyPrefixCache = bench_llm.PyPrefixCache
PyPoolExhausted = bench_llm.PyPoolExhausted

BS = 2
# A tiny alphabet makes requests share prefixes (and, with truncated digests, collide).
tokens_st = st.lists(st.integers(0, 2), max_size=5 * BS)


class PrefixMachine(RuleBasedStateMachine):
    digest_bits = 128

    def __init__(self):
        super().__init__()
        self.held = []  # [tokens, block table] of each live request

    @initialize(num_blocks=st.integers(1, 10))
    def setup(self, num_blocks):
        self.n = num_blocks
        self.real = PrefixCache(BlockPool(num_blocks, BS, 1, 1, 1), salt=b"t",
                                _digest_bits=self.digest_bits)
        self.model = PyPrefixCache(num_blocks, BS, salt=b"t")

    def _allocate_both(self, n):
        try:
            expected = self.model.allocate(n)
        except PyPoolExhausted:
            with pytest.raises(PoolExhaustedError, match="exhausted"):
                self.real.allocate(n)
            return None
        got = self.real.allocate(n)
        assert got.tolist() == expected
        return expected

    @rule(tokens=tokens_st)
    def request(self, tokens):
        n_real, ids_real = self.real.match(tokens)
        n_model, ids_model = self.model.match(tokens)
        assert (n_real, ids_real.tolist()) == (n_model, ids_model)
        new = self._allocate_both(-(-len(tokens) // BS) - len(ids_model))
        if new is None:
            self.real.release(ids_real)
            self.model.release(ids_model)
        else:
            self.held.append([list(tokens), ids_model + new])

    @rule(n=st.integers(0, 4))
    def allocate(self, n):
        new = self._allocate_both(n)
        if new is not None:
            self.held.append([[], new])

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def commit(self, data):
        tokens, table = data.draw(st.sampled_from(self.held))
        assert self.real.commit(tokens, table) == self.model.commit(tokens, table)

    @precondition(lambda self: self.held)
    @rule(data=st.data(), extra=st.lists(st.integers(0, 2), min_size=1, max_size=2 * BS))
    def extend(self, data, extra):
        # A request that generates: append tokens, allocate what they need, commit.
        req = data.draw(st.sampled_from(self.held))
        if not req[0] and req[1]:
            return  # raw allocations hold no tokens
        need = -(-(len(req[0]) + len(extra)) // BS) - len(req[1])
        new = self._allocate_both(max(need, 0))
        if new is None:
            return
        req[0] = req[0] + extra
        req[1] = req[1] + new
        assert self.real.commit(req[0], req[1]) == self.model.commit(req[0], req[1])

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def release(self, data):
        i = data.draw(st.integers(0, len(self.held) - 1))
        _, table = self.held.pop(i)
        self.real.release(table)
        self.model.release(table)

    @rule(data=st.data())
    def release_unreferenced(self, data):
        free = [b for b in range(self.n) if self.model.refcount[b] == 0]
        if not free:
            return
        b = data.draw(st.sampled_from(free))
        held_ids = [x for _, t in self.held for x in t]
        table = held_ids[:1] + [b]
        with pytest.raises(ValueError, match="not referenced"):
            self.real.release(table)
        with pytest.raises(ValueError):
            self.model.release(table)

    @precondition(lambda self: any(t for _, t in self.held))
    @rule(data=st.data())
    def release_too_often(self, data):
        _, table = data.draw(st.sampled_from([h for h in self.held if h[1]]))
        b = table[0]
        bad = [b] * (self.model.refcount[b] + 1)
        with pytest.raises(ValueError):
            self.real.release(bad)
        with pytest.raises(ValueError):
            self.model.release(bad)

    @precondition(lambda self: any(len(tok) >= BS for tok, _ in self.held))
    @rule(data=st.data())
    def commit_wrong_tokens(self, data):
        tokens, table = data.draw(st.sampled_from([h for h in self.held if len(h[0]) >= BS]))
        if not self.real.is_cached(table[0]):
            return
        wrong = [3] + tokens[1:]  # token 3 is outside the alphabet: never cached
        with pytest.raises(ValueError, match="other tokens"):
            self.real.commit(wrong, table)
        with pytest.raises(ValueError):
            self.model.commit(wrong, table)

    @rule()
    def clear(self):
        self.real.clear()
        self.model.clear()

    @invariant()
    def same_state(self):
        if not hasattr(self, "real"):
            return
        blocks = self.real._blocks
        assert blocks.refcounts().tolist() == self.model.refcounts()
        assert self.real.lru_order().tolist() == self.model.lru_order()
        assert blocks.free_blocks().tolist() == self.model.free_blocks()
        assert [b for b in range(self.n) if self.real.is_cached(b)] == self.model.cached()
        assert len(self.real) == len(self.model.cached())

    @invariant()
    def references_are_exact(self):
        if not hasattr(self, "real"):
            return
        # Every live request's blocks are referenced (never evicted under it), exactly as
        # often as tables hold them; referenced blocks are neither free nor evictable.
        held = Counter(b for _, t in self.held for b in t)
        rc = self.real._blocks.refcounts()
        assert all(rc[b] == held.get(b, 0) for b in range(self.n))
        idle = set(self.real.lru_order().tolist()) | set(self.real._blocks.free_blocks().tolist())
        assert all(rc[b] == 0 for b in idle)
        assert len(idle) + sum(1 for b in range(self.n) if rc[b] > 0) == self.n


class PrefixMachineTruncated(PrefixMachine):
    digest_bits = 3  # eight digests in all: collisions everywhere


class PrefixMachineZeroDigest(PrefixMachine):
    digest_bits = 0  # every block has the same digest: only tokens and parents tell them apart


_settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestPrefixMachine = PrefixMachine.TestCase
TestPrefixMachine.settings = _settings
TestPrefixMachineTruncated = PrefixMachineTruncated.TestCase
TestPrefixMachineTruncated.settings = _settings
TestPrefixMachineZeroDigest = PrefixMachineZeroDigest.TestCase
TestPrefixMachineZeroDigest.settings = _settings


def test_model_reuses_and_evicts_like_a_cache():
    # The model itself must behave as the issue says, or agreeing with it proves little.
    m = PyPrefixCache(4, 2)
    table = m.allocate(2)
    m.commit([1, 2, 3, 4], table)
    m.release(table)
    assert m.lru_order() == [table[1], table[0]]  # chain tail first
    assert m.match([1, 2, 3, 4, 5]) == (4, table)
    m.release(table)
    other = m.allocate(3)  # 2 free + 1 evicted (the tail, block table[1])
    assert table[1] in other and table[0] not in other
    assert m.match([1, 2, 3, 4]) == (2, [table[0]])
    with pytest.raises(PyPoolExhausted):
        m.allocate(1)
    assert np.array_equal(m.refcounts(), [1, 1, 1, 1])


@pytest.mark.parametrize("bits", [128, 0])
def test_heavy_churn_matches_model(bits):
    # Many distinct chains through a small pool: every eviction shifts probe runs back
    # in the engine's index (backward-shift deletion); lookups must stay exact throughout.
    rng = np.random.default_rng(bits)
    real = PrefixCache(BlockPool(6, BS, 1, 1, 1), _digest_bits=bits)
    model = PyPrefixCache(6, BS)
    for _ in range(400):
        tokens = rng.integers(0, 4, int(rng.integers(1, 7))).tolist()
        n, hit = real.match(tokens)
        assert (n, hit.tolist()) == model.match(tokens)
        need = -(-len(tokens) // BS) - len(hit)
        table = hit.tolist() + model.allocate(need)
        assert real.allocate(need).tolist() == table[len(hit):]
        assert real.commit(tokens, table) == model.commit(tokens, table)
        real.release(table)
        model.release(table)
        assert real.lru_order().tolist() == model.lru_order()
    assert real.stats().evictions == model.evictions > 100
