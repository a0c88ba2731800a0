"""TinyLFUCache: the frequency sketch, admission, window adaptation, and a state machine
against the pure-Python reference model in tinylfu_model.py."""
import math
import random

import hypothesis.strategies as st
import numpy as np
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import kvcache
from kvcache import TinyLFUCache
from kvcache.simulate import replay
from tests.models import Collider
from tests.tinylfu_model import TinyLFUModel, key_hash

# ---------------------------------------------------------------------------------------------
# The sketch
# ---------------------------------------------------------------------------------------------


def test_sketch_never_underestimates_and_stays_within_the_count_min_bound():
    # 4096 entries preallocated: 4096 words = 65536 counters, halving after 81920 additions
    c = TinyLFUCache(4096, capacity=4096, seed=7)
    state = c._policy_state()
    counters = 16 * state["sketch_words"]
    rng = random.Random(1)
    true = {k: 1 + k % 15 for k in range(3000)}              # 1..15: below saturation
    accesses = [k for k, n in true.items() for _ in range(n)]
    rng.shuffle(accesses)
    for k in accesses:
        if c.get(k) is None:
            c[k] = k
    total = len(accesses)
    assert total < state["sample"]                              # no halving in between
    assert len(c) == 3000                                       # nothing evicted
    errors = [c._frequency(k) - n for k, n in true.items()]
    assert min(errors) >= 0                                     # never below the true count
    # Count-min: each of the 4 probes collides with an expected 4N/m other additions, so an
    # error above e times that needs all four probes to exceed it (Markov: e**-4 < 2%).
    bound = math.e * 4 * total / counters
    assert bound > 1                                            # the bound is not vacuous
    over = sum(err > bound for err in errors)
    assert over <= 0.05 * len(errors)


def test_counters_saturate_at_15_and_clear_keeps_them():
    c = TinyLFUCache(100, seed=3)
    c["hot"] = 1
    for _ in range(40):
        c["hot"]                                                # (pending in the entry)
    assert c._frequency("hot") == 15
    c.clear()                                                   # settles them into the sketch
    c["hot"] = 1
    assert c._frequency("hot") == 15


def test_halving_happens_at_the_sample_size():
    c = TinyLFUCache(100, seed=5)
    sample = c._policy_state()["sample"]
    assert sample == 20 * 100
    c["k"] = 0
    for _ in range(9):
        c["k"]                                                  # 10 uses of k
    assert c._frequency("k") >= 10
    i = 0
    while c._policy_state()["sample_count"] < sample - 1:
        if c.get(("other", i)) is None:
            c[("other", i)] = i
        i += 1
        assert c._frequency("k") >= 10                          # collisions only ever add
    assert c._policy_state()["sample_count"] == sample - 1
    before = c._frequency("k")
    c["k"]                                                      # the sample-th addition
    assert c._policy_state()["sample_count"] == sample // 2
    assert c._frequency("k") == min(before + 1, 15) // 2


def test_sample_floor_for_small_caches():
    assert TinyLFUCache(5, seed=1)._policy_state()["sample"] == 20 * 32
    assert TinyLFUCache(5, seed=1)._policy_state()["sketch_words"] == 256


def test_sketch_grows_with_the_buffers_keeping_estimates():
    c = TinyLFUCache(10_000, seed=2)                            # buffers start at 1024 entries
    assert c._policy_state()["sketch_words"] == 1024
    for k in range(1024):
        c[k] = k
    c[5]
    c[5]
    before = [c._frequency(k) for k in range(1024)]
    c[10_000] = 0                                               # the 1025th entry: buffers double
    assert c._policy_state()["sketch_words"] == 2048
    assert [c._frequency(k) for k in range(1024)] == before


def _sketch(cache):
    keys, _, aux = cache._export_state()
    n = len(keys)
    return aux[n + 10:n + 10 + aux[n + 6]].tolist()


def test_a_hit_counts_in_its_entry_until_the_entry_leaves():
    c = TinyLFUCache(100, seed=8)
    c["k"] = 1                                                  # an insertion counts at once
    before = _sketch(c)
    assert c._frequency("k") >= 1
    for _ in range(5):
        c["k"]
    assert _sketch(c) == before                                 # hits wait in the entry ...
    assert c._frequency("k") >= 6                               # ... and count in its estimate
    del c["k"]
    assert _sketch(c) != before                                 # leaving settles them
    c["k"] = 1
    assert c._frequency("k") >= 7                               # the history came back with it


def test_the_duel_reads_settled_counts():
    # a window candidate hit often beats the probation victim hit once: its hits are counted
    c = TinyLFUCache(20, seed=3, capacity=20)
    for k in range(20):
        c[k] = k
    assert c._policy_state()["window"] == 1
    cand = list(c)[-1]                                          # the window's one entry
    m = TinyLFUModel(20, capacity=20, seed=3)
    for k in range(20):
        m.set(k, k)
    assert list(c) == m.order()
    for _ in range(6):
        c[cand]
        m.get(cand)
    c["new"] = 0
    m.set("new", 0)
    assert list(c) == m.order() and cand in c
    assert _sketch(c) == m.sketch


def test_export_keeps_pending_hits_and_rejects_corrupt_regions():
    c = TinyLFUCache(60, seed=6)
    run(c, frequency_stream(2900, 150, seed=2))                # halvings at 1200, 1800, 2400
    keys, values, aux = c._export_state()
    n = len(keys)
    assert (aux[:n] >= 4).any()                                 # some hits are pending
    d = TinyLFUCache(60, seed=6)
    d._import_state(keys, values, aux)
    np.testing.assert_array_equal(d._export_state()[2], aux)
    stream = frequency_stream(3000, 300, seed=3)
    assert run(c, stream) == run(d, stream)
    assert list(c) == list(d)
    same = lambda st_: {k: v for k, v in st_.items() if not k.startswith("shadow_")}
    assert same(c._policy_state()) == same(d._policy_state())  # (shadows restart in a copy)
    for bad in (3, 64, -1):
        corrupt = aux.copy()
        corrupt[0] = bad
        with pytest.raises(ValueError):
            TinyLFUCache(60, seed=6)._import_state(keys, values, corrupt)


# ---------------------------------------------------------------------------------------------
# Admission and adaptation
# ---------------------------------------------------------------------------------------------


def run(cache, keys):
    hits = 0
    for k in keys:
        if cache.get(k) is None:
            cache[k] = True
        else:
            hits += 1
    return hits


def recency_stream(n, gap, seed):
    """Each new key comes back once, `gap` accesses later: only recency can catch it."""
    rng = random.Random(seed)
    out, pending, fresh = [], [], 0
    for t in range(n):
        if pending and pending[0][0] <= t:
            out.append(pending.pop(0)[1])
        else:
            out.append((0, fresh))
            pending.append((t + gap + rng.randrange(gap // 4 + 1), (0, fresh)))
            fresh += 1
    return out


def frequency_stream(n, universe, seed):
    """Zipf(1) over `universe` keys, stationary: frequency predicts reuse."""
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, universe + 1)
    return [(1, int(k)) for k in rng.choice(universe, size=n, p=w / w.sum())]


def test_window_grows_on_a_recency_biased_stream():
    c = TinyLFUCache(1000, seed=11)
    start = c._policy_state()["window_target"]
    assert start == 10                                          # 1%
    hits = run(c, recency_stream(60_000, 150, seed=1))
    grown = c._policy_state()["window_target"]
    assert grown > 10 * start
    lru = kvcache.LRUCache(1000)
    assert hits >= 0.95 * run(lru, recency_stream(60_000, 150, seed=1))


def test_window_shrinks_on_a_frequency_biased_stream():
    c = TinyLFUCache(1000, seed=11)
    run(c, recency_stream(60_000, 150, seed=1))
    grown = c._policy_state()["window_target"]
    # the recency stream's keys must age out of the sketch and the ghosts first: 300k accesses
    run(c, frequency_stream(300_000, 50_000, seed=2))
    shrunk = c._policy_state()["window_target"]
    assert shrunk < grown / 4


def test_a_one_off_scan_does_not_flush_frequent_keys():
    c = TinyLFUCache(500, seed=13)
    lru = kvcache.LRUCache(500)
    hot = frequency_stream(50_000, 400, seed=3)
    run(c, hot)
    run(lru, hot)
    top = [(1, k) for k in range(300)]
    assert all(k in c for k in top)
    scan = [(2, i) for i in range(20_000)]
    run(c, scan)
    run(lru, scan)
    kept = sum(k in c for k in top)
    assert kept >= 0.95 * len(top)
    assert sum(k in lru for k in top) == 0                      # the contrast: LRU lost them all


def test_loop_larger_than_the_cache_is_not_churned():
    # keys 0..1010 cycled: OPT keeps any 100 of them; LRU hits nothing
    keys = np.tile(np.arange(1011, dtype=np.int64), 60)
    hits = replay(keys, "tinylfu", 101, seed=1)
    assert hits / len(keys) > 0.07
    assert replay(keys, "lru", 101, seed=1) == 0


# ---------------------------------------------------------------------------------------------
# Mapping behaviour specific to the policy
# ---------------------------------------------------------------------------------------------


def test_new_key_is_always_stored():
    c = TinyLFUCache(3, seed=1)
    for k in range(3):
        c[k] = k
        for _ in range(5):
            c[k]
    c["new"] = 1
    assert "new" in c and len(c) == 3


def test_on_evict_reports_the_loser_of_the_admission():
    evicted = []
    c = TinyLFUCache(10, seed=1, on_evict=lambda k, v: evicted.append(k))
    for k in range(10):
        c[k] = k
        for _ in range(3):
            c[k]
    c["a"] = 0
    c["b"] = 0
    assert evicted and set(evicted) <= set(range(10)) | {"a"}
    assert len(c) == 10 and "b" in c


def test_getsizeof_falls_back_to_lru_order():
    c = TinyLFUCache(10, getsizeof=len, seed=1)
    c["a"] = "xxxx"
    c["b"] = "xxxx"
    c["a"]
    c["c"] = "xxxx"                                            # 12 > 10: evict the least recent
    assert "b" not in c and "a" in c and "c" in c
    c._check()


def test_resize_shrinks_targets_and_evicts():
    c = TinyLFUCache(100, seed=1)
    run(c, frequency_stream(5000, 300, seed=6))
    c.resize(10)
    st_ = c._policy_state()
    assert len(c) == 10 and st_["protected"] <= st_["protected_target"] <= 8
    c._check()


def test_memory_per_entry_reported():
    lru = kvcache.LRUCache(100_000, capacity=100_000)
    tl = TinyLFUCache(100_000, capacity=100_000)
    # not a limit, a record: the extra structures are the sketch, two ghost tables, a region byte
    assert tl._nbytes() > lru._nbytes()


# ---------------------------------------------------------------------------------------------
# State machine against the reference model
# ---------------------------------------------------------------------------------------------


def sketch_words(cache):
    keys, _, aux = cache._export_state()
    n = len(keys)
    return aux[n + 10:n + 10 + aux[n + 6]].view(np.uint64).tolist()


def test_model_hash_matches_the_engine():
    # the model's MurmurHash must be the engine's: the same counters must move
    for seed in (1, 2**33 + 5, 2**64 - 1):
        c = TinyLFUCache(10, seed=seed)
        m = TinyLFUModel(10, seed=seed)
        for k in (0, 1, -1, "x", 2**64, (1, 2)):
            c[k] = 1
            m.set(k, 1)
            assert c._frequency(k) == m.estimate(key_hash(k, seed))
        assert sketch_words(c) == m.sketch


keys = st.one_of(st.integers(-5, 20), st.builds(Collider, st.integers(0, 12)),
                 st.sampled_from(["a", "b", (1, 2), -1, 2**64, 0.5]))
values = st.integers(0, 1000)


class TinyLFUMachine(RuleBasedStateMachine):
    @initialize(maxsize=st.integers(0, 12), capacity=st.one_of(st.none(), st.integers(0, 4)),
                seed=st.sampled_from([1, 12345, 2**40 + 3]))
    def setup(self, maxsize, capacity, seed):
        self.evicted = []
        self.cache = TinyLFUCache(maxsize, capacity=capacity, seed=seed,
                                  on_evict=lambda k, v: self.evicted.append((k, v)))
        self.model = TinyLFUModel(maxsize, capacity=capacity, seed=seed)

    @rule(key=keys, value=values)
    def set(self, key, value):
        try:
            expected = self.model.set(key, value)
        except ValueError:
            with pytest.raises(ValueError):
                self.cache[key] = value
            return
        self.evicted.clear()
        self.cache[key] = value
        assert self.evicted == expected

    @rule(key=keys)
    def get(self, key):
        found, value = self.model.get(key)
        assert self.cache.get(key, "missing") == (value if found else "missing")

    @rule(key=keys)
    def peek(self, key):
        assert self.cache.peek(key, "missing") == self.model.data.get(key, "missing")

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

    @rule(maxsize=st.integers(0, 14))
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
    def same_state(self):
        if not hasattr(self, "cache"):
            return
        assert list(self.cache) == self.model.order()
        state = self.cache._policy_state()
        assert state == self.model.state()
        self.cache._check()


TestTinyLFUMachine = TinyLFUMachine.TestCase
TestTinyLFUMachine.settings = settings(max_examples=200, stateful_step_count=80, deadline=None)


def test_model_and_engine_agree_on_a_long_random_run():
    # long enough for halvings, ghost hits both ways and window moves (the machine's runs are short)
    rng = random.Random(9)
    c = TinyLFUCache(40, seed=77)
    m = TinyLFUModel(40, seed=77)
    for step in range(20_000):
        k = int(rng.paretovariate(1.2)) if rng.random() < 0.7 else rng.randrange(400)
        found, _ = m.get(k)
        got = c.get(k, "missing")
        assert (got != "missing") == found
        if not found:
            m.set(k, k)
            c[k] = k
        if step % 500 == 0:
            assert c._policy_state() == m.state()
            assert list(c) == m.order()
    state = c._policy_state()
    assert state == m.state()
    assert state["main_evictions"] > 0 and state["window_exact"] != 1.0


def phased_stream(seed, n):
    """Phases of Zipf, short loops and scans mixed with Zipf: the better reach changes."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        kind = rng.randrange(3)
        span = rng.randrange(500, 3000)
        if kind == 0:
            out += [int(rng.paretovariate(1.1)) for _ in range(span)]
        elif kind == 1:
            length, base = rng.randrange(30, 120), rng.randrange(10**6)
            out += [base + i % length for i in range(span)]
        else:
            base = rng.randrange(10**6)
            out += [base + i if rng.random() < 0.5 else int(rng.paretovariate(1.1))
                    for i in range(span)]
    return out[:n]


@pytest.mark.parametrize("maxsize, stream, least_switches", [
    (30, phased_stream(3, 20_000), 2),                          # exact shadows (all keys)
    (600, phased_stream(3, 30_000), 0),                         # sampled keys (256 of 600)
])
def test_model_and_engine_agree_on_the_shadows_and_their_choice(maxsize, stream, least_switches):
    c = TinyLFUCache(maxsize, seed=5)
    m = TinyLFUModel(maxsize, seed=5)
    state = c._policy_state()
    assert (state["shadow_sample"] == 1 << 24) == (maxsize <= 256)
    switches, choice = 0, state["shadow_choice"]
    for step, k in enumerate(stream):
        found, _ = m.get(k)
        assert (c.get(k, "missing") != "missing") == found
        if not found:
            m.set(k, k)
            c[k] = k
        state = c._policy_state()
        if state["shadow_choice"] != choice:
            # a switch follows a shadow ahead by more than one standard deviation
            a, b = state["shadow_scores"][state["shadow_choice"]], state["shadow_scores"][choice]
            assert a - b > math.sqrt(a + b + 1)
            assert state["long_reach"] == (maxsize if state["shadow_choice"] == 0 else 0)
            switches, choice = switches + 1, state["shadow_choice"]
        if step % 1000 == 0:
            assert state == m.state()
    assert c._policy_state() == m.state()
    assert switches >= least_switches
    assert min(c._policy_state()["shadow_entries"]) == min(maxsize, 256)    # full: they evict


def test_resize_restarts_the_shadows_and_keeps_the_choice():
    c = TinyLFUCache(30, seed=5)
    run(c, phased_stream(3, 12_000))
    before = c._policy_state()
    c.resize(2000)
    after = c._policy_state()
    assert after["shadow_entries"] == (0, 0) and after["shadow_scores"] == (0.0, 0.0)
    assert after["shadow_choice"] == before["shadow_choice"]
    assert after["shadow_sample"] == (30 << 24) // 2000         # slots stay min(maxsize, 256) = 30
