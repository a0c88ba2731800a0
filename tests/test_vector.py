"""VectorCache: integer/digest keys, rows in one preallocated slab, LRU/FIFO/LFU."""
import pickle
import threading
from collections import OrderedDict

import numpy
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from kvcache import VectorCache

POLICIES = ["lru", "fifo", "lfu"]   # modelled exactly; "rr" is tested on its own


class Model:
    """Pure-Python reference: a dict of rows plus the policy's eviction order."""

    def __init__(self, maxsize, policy):
        self.maxsize, self.policy = maxsize, policy
        self.rows = {}
        self.order = OrderedDict()   # lru/fifo: first = next victim
        self.freq = {}               # lfu: key -> (frequency, tick it entered that frequency)
        self.tick = 0
        self.hits = self.misses = self.evictions = 0

    def _touch(self, k):
        self.tick += 1
        if self.policy == "lru":
            self.order.move_to_end(k)
        elif self.policy == "lfu":
            self.freq[k] = (self.freq[k][0] + 1, self.tick)

    def _victim(self):
        if self.policy == "lfu":
            return min(self.freq, key=self.freq.__getitem__)
        return next(iter(self.order))

    def get(self, k):
        if k in self.rows:
            self.hits += 1
            self._touch(k)
            return self.rows[k]
        self.misses += 1
        return None

    def set(self, k, row):
        if k in self.rows:
            self._touch(k)
            if self.policy == "fifo":       # as FIFOCache: an assignment re-inserts
                self.order.move_to_end(k)
        else:
            if len(self.rows) >= self.maxsize:
                v = self._victim()
                del self.rows[v]
                self.order.pop(v, None)
                self.freq.pop(v, None)
                self.evictions += 1
            self.tick += 1
            self.order[k] = None
            self.freq[k] = (1, self.tick)
        self.rows[k] = row

    def delete(self, k):
        del self.rows[k]
        self.order.pop(k, None)
        self.freq.pop(k, None)


def row_for(key, dim, version=0):
    return numpy.full(dim, float((hash(key) % 1000) + version / 8), dtype=numpy.float32)


# Keys: small ints, and 128-bit digests whose low words collide on purpose.
KEYS = st.one_of(st.integers(0, 6), st.tuples(st.integers(0, 2), st.integers(0, 2)))


def as_batch(keys):
    if all(isinstance(k, int) for k in keys):
        return numpy.array(keys, dtype=numpy.int64)
    return numpy.array([k if isinstance(k, tuple) else (k, 0) for k in keys], dtype=numpy.uint64)


def norm(k):
    # A 64-bit key k is the digest (k, 0).
    return k if isinstance(k, tuple) else (k, 0)


class VectorMachine(RuleBasedStateMachine):
    DIM = 3

    @rule(maxsize=st.integers(1, 4), policy=st.sampled_from(POLICIES))
    @precondition(lambda self: not hasattr(self, "cache"))
    def create(self, maxsize, policy):
        self.cache = VectorCache(maxsize, self.DIM, policy=policy, seed=7)
        self.model = Model(maxsize, policy)
        self.version = 0

    @rule(keys=st.lists(KEYS, max_size=6))
    @precondition(lambda self: hasattr(self, "cache"))
    def set_many(self, keys):
        self.version += 1
        rows = numpy.stack([row_for(norm(k), self.DIM, self.version + i)
                            for i, k in enumerate(keys)]) if keys else numpy.empty((0, self.DIM))
        self.cache.set_many(as_batch(keys), rows)
        for k, r in zip(keys, rows):
            self.model.set(norm(k), r.astype(numpy.float32))

    @rule(keys=st.lists(KEYS, max_size=6))
    @precondition(lambda self: hasattr(self, "cache"))
    def get_many(self, keys):
        rows, found = self.cache.get_many(as_batch(keys))
        for k, r, f in zip(keys, rows, found):
            expect = self.model.get(norm(k))
            assert bool(f) == (expect is not None)
            if f:
                assert numpy.array_equal(r, expect)
            else:
                assert not r.any()

    @rule(k=KEYS)
    @precondition(lambda self: hasattr(self, "cache"))
    def delete(self, k):
        key = list(k) if isinstance(k, tuple) else k
        if norm(k) in self.model.rows:
            del self.cache[key]
            self.model.delete(norm(k))
        else:
            with pytest.raises(KeyError):
                del self.cache[key]

    @rule(k=KEYS)
    @precondition(lambda self: hasattr(self, "cache"))
    def contains(self, k):
        key = list(k) if isinstance(k, tuple) else k
        assert (key in self.cache) == (norm(k) in self.model.rows)

    @invariant()
    def same_size_and_stats(self):
        if hasattr(self, "cache"):
            s = self.cache.stats()
            m = self.model
            assert len(self.cache) == len(m.rows) == s.currsize
            assert (s.hits, s.misses, s.evictions) == (m.hits, m.misses, m.evictions)


TestVectorMachine = VectorMachine.TestCase
TestVectorMachine.settings = settings(max_examples=300, stateful_step_count=40, deadline=None)


@pytest.mark.parametrize("policy", POLICIES)
def test_large_batches_match_the_model(policy):
    # Batches above the GIL-release threshold take the nogil path.
    rng = numpy.random.default_rng(1)
    cache, model = VectorCache(500, 4, policy=policy), Model(500, policy)
    for step in range(6):
        keys = rng.integers(0, 900, 700)
        rows = rng.standard_normal((700, 4)).astype(numpy.float32)
        cache.set_many(keys, rows)
        for k, r in zip(keys.tolist(), rows):
            model.set(k, r)
        q = rng.integers(0, 900, 1000)
        got, found = cache.get_many(q)
        for k, r, f in zip(q.tolist(), got, found):
            expect = model.get(k)
            assert bool(f) == (expect is not None)
            if f:
                assert numpy.array_equal(r, expect)
    assert cache.stats()[:3] == (model.hits, model.misses, model.evictions)


def test_lru_evicts_least_recently_used():
    c = VectorCache(2, 1)
    c[1] = [1.0]
    c[2] = [2.0]
    c[1]                      # 2 is now the least recent
    c[3] = [3.0]
    assert 1 in c and 2 not in c and 3 in c


def test_fifo_ignores_reads_and_reinserts_on_update():
    c = VectorCache(2, 1, policy="fifo")
    c[1] = [1.0]
    c[2] = [2.0]
    c[1]
    c[3] = [3.0]
    assert 1 not in c and 2 in c
    c[2] = [2.5]              # 3 is now the oldest
    c[4] = [4.0]
    assert 3 not in c and 2 in c


def test_rr_evicts_some_entry_and_keeps_the_rest_intact():
    c = VectorCache(50, 2, policy="rr", seed=1)
    keys = numpy.arange(500)
    c.set_many(keys, numpy.repeat(keys[:, None], 2, 1).astype(numpy.float32))
    rows, found = c.get_many(keys)
    assert found.sum() == 50 == len(c) and c.stats().evictions == 450
    assert (rows[found] == keys[found, None]).all()
    assert found[-1]          # the newest key is never its own victim


def test_lfu_evicts_least_frequent_then_least_recent():
    c = VectorCache(3, 1, policy="lfu")
    c.set_many([1, 2, 3], numpy.ones((3, 1)))
    c.get_many([1, 1, 3])      # freq: 1->3, 2->1, 3->2
    c[4] = [4.0]
    assert 2 not in c and {1, 3, 4} <= {k for k in (1, 3, 4) if k in c}
    c[5] = [5.0]               # 4 (freq 1) goes before 3 (freq 2)
    assert 4 not in c and 3 in c and 5 in c


def test_rows_are_copies_that_later_writes_cannot_change():
    c = VectorCache(1, 2)
    c[1] = [1.0, 2.0]
    held = c[1]
    rows, _ = c.get_many([1])
    c[1] = [9.0, 9.0]        # overwrite in place
    c[2] = [7.0, 7.0]        # evicts 1, reusing its row
    assert held.tolist() == [1.0, 2.0] and rows.tolist() == [[1.0, 2.0]]
    held[0] = 100.0           # a caller's copy is theirs to change
    assert c[2].tolist() == [7.0, 7.0]


def test_slab_is_preallocated_and_reused():
    c = VectorCache(100, 8, dtype=numpy.float64)
    before = c.nbytes
    assert before == 100 * 8 * 8 + c.overhead_bytes
    model = Model(100, "lru")
    rng = numpy.random.default_rng(0)
    for _ in range(5):
        keys, rows = rng.integers(0, 400, 300), rng.standard_normal((300, 8))
        c.set_many(keys, rows)
        for k, r in zip(keys.tolist(), rows):
            model.set(k, r)
    assert c.nbytes == before and len(c) == 100
    assert c.stats().evictions == model.evictions > 0
    got, found = c.get_many(list(model.rows))
    assert found.all() and numpy.array_equal(got, numpy.stack(list(model.rows.values())))


def test_memory_overhead_is_small():
    c = VectorCache(1000, 4)
    per_entry = c.overhead_bytes / c.maxsize
    assert 16 < per_entry <= 80


def test_out_parameter():
    c = VectorCache(4, 2)
    c.set_many([1, 2], [[1, 1], [2, 2]])
    out = numpy.full((3, 2), -1.0, dtype=numpy.float32)
    rows, found = c.get_many([2, 5, 1], out=out)
    assert rows is out
    assert out.tolist() == [[2, 2], [-1, -1], [1, 1]]  # misses keep what out held
    assert found.tolist() == [True, False, True]
    with pytest.raises(ValueError):
        c.get_many([1], out=numpy.zeros((1, 2), dtype=numpy.float64))
    with pytest.raises(ValueError):
        c.get_many([1, 2], out=numpy.zeros((1, 2), dtype=numpy.float32))
    with pytest.raises(ValueError):
        c.get_many([1], out=numpy.zeros((1, 4), dtype=numpy.float32)[:, ::2])
    ro = numpy.zeros((1, 2), dtype=numpy.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        c.get_many([1], out=ro)
    with pytest.raises(TypeError):
        c.get_many([1], out=[[0, 0]])


def test_key_forms():
    c = VectorCache(10, 1)
    c.set_many(numpy.array([-1, 5], dtype=numpy.int64), [[1.0], [2.0]])
    # int64 -1 and uint64 2**64-1 are the same 64 bits.
    assert c[2**64 - 1].tolist() == [1.0]
    assert c[numpy.uint64(5)].tolist() == [2.0]
    rows, found = c.get_many(numpy.array([2**64 - 1, 5], dtype=numpy.uint64))
    assert found.all()
    rows, found = c.get_many([2**64 - 1, -1, 5])       # Python ints mixing signs: object array
    assert found.tolist() == [True, True, True]
    rows, found = c.get_many(numpy.array([5], dtype=numpy.int32))
    assert found.all()
    assert c[[5, 0]].tolist() == [2.0]                 # digest (5, 0) is key 5
    c[(5, 1)] = [3.0]                                  # same low word, different high word
    assert c[5].tolist() == [2.0] and c[(5, 1)].tolist() == [3.0] and len(c) == 3


def test_high_words_that_differ_only_above_32_bits():
    # The slot keeps 32 bits of the high word; the rest is confirmed against the full word.
    c = VectorCache(8, 1)
    c[7] = [1.0]
    assert (7, 1 << 40) not in c and c.get((7, 1 << 40)) is None
    c[(7, 1 << 40)] = [2.0]
    c[(7, 2 << 40)] = [3.0]
    assert [c[7][0], c[(7, 1 << 40)][0], c[(7, 2 << 40)][0]] == [1.0, 2.0, 3.0]
    del c[(7, 1 << 40)]
    del c[(7, 2 << 40)]
    assert (7, 2 << 40) not in c and c[7][0] == 1.0


def test_digest_keys_that_collide_on_64_bits_stay_distinct():
    c = VectorCache(8, 1, policy="lfu")
    keys = numpy.array([[42, 1], [42, 2], [42, 3]], dtype=numpy.uint64)
    c.set_many(keys, [[1.0], [2.0], [3.0]])
    rows, found = c.get_many(keys[::-1])
    assert found.all() and rows.ravel().tolist() == [3.0, 2.0, 1.0]
    assert 42 not in c
    del c[[42, 2]]
    rows, found = c.get_many(keys)
    assert found.tolist() == [True, False, True] and rows.ravel().tolist() == [1.0, 0.0, 3.0]


@pytest.mark.parametrize("bad", [[1.5], ["a"], "abc", [True], numpy.array([1.0]),
                                 [object()], [2**64], [-(2**63) - 1]])
def test_bad_keys_raise_and_change_nothing(bad):
    c = VectorCache(4, 1)
    c[1] = [1.0]
    with pytest.raises((TypeError, OverflowError)):
        c.set_many(bad, numpy.zeros((len(bad) if not isinstance(bad, str) else 1, 1)))
    with pytest.raises((TypeError, OverflowError)):
        c.get_many(bad)
    assert len(c) == 1 and c.stats().hits == 0 and c.stats().misses == 0


def test_bad_shapes_raise_and_change_nothing():
    c = VectorCache(4, 2)
    c[1] = [1.0, 1.0]
    with pytest.raises(ValueError):
        c.set_many([2, 3], numpy.zeros((3, 2)))
    with pytest.raises(ValueError):
        c.set_many([2], numpy.zeros((1, 3)))
    with pytest.raises(ValueError):
        c.set_many(numpy.zeros((2, 3), dtype=numpy.int64), numpy.zeros((2, 2)))
    with pytest.raises(ValueError):
        c[2] = [1.0, 2.0, 3.0]
    with pytest.raises(TypeError):
        c.set_many([2], numpy.array([[1 + 1j, 0]]))
    with pytest.raises(TypeError):
        c.set_many([2], numpy.array([["a", "b"]]))
    assert len(c) == 1 and c[1].tolist() == [1.0, 1.0]


@pytest.mark.parametrize("dtype", [numpy.float16, numpy.float32, numpy.float64, numpy.int8,
                                   numpy.uint16, numpy.complex64])
def test_dtypes_round_trip_exactly(dtype):
    rng = numpy.random.default_rng(3)
    rows = (rng.standard_normal((50, 7)) * 50).astype(dtype)
    c = VectorCache(50, 7, dtype=dtype)
    c.set_many(numpy.arange(50), rows)
    got, found = c.get_many(numpy.arange(50)[::-1])
    assert got.dtype == numpy.dtype(dtype) and found.all()
    assert numpy.array_equal(got, rows[::-1])


def test_duplicates_in_a_batch():
    c = VectorCache(4, 1)
    c.set_many([1, 1, 2, 1], [[1.0], [2.0], [3.0], [4.0]])   # last write wins
    assert len(c) == 2 and c[1].tolist() == [4.0]
    rows, found = c.get_many([1, 1, 9, 1])
    assert found.tolist() == [True, True, False, True]
    assert rows.ravel().tolist() == [4.0, 4.0, 0.0, 4.0]


def test_batch_larger_than_the_cache():
    c = VectorCache(3, 1, policy="fifo")
    c.set_many(numpy.arange(10), numpy.arange(10, dtype=numpy.float32).reshape(10, 1))
    rows, found = c.get_many(numpy.arange(10))
    assert found.tolist() == [False] * 7 + [True] * 3
    assert rows[7:].ravel().tolist() == [7.0, 8.0, 9.0]


def test_get_and_missing_key():
    c = VectorCache(2, 1)
    assert c.get(1) is None and c.get(1, "d") == "d"
    with pytest.raises(KeyError):
        c[1]
    c[1] = [1.0]
    assert c.get(1).tolist() == [1.0]
    assert "x" not in c and 1.5 not in c


def test_delete_reuses_rows_and_clear():
    c = VectorCache(3, 1)
    c.set_many([1, 2, 3], [[1.0], [2.0], [3.0]])
    del c[2]
    c[4] = [4.0]
    assert len(c) == 3 and c.stats().evictions == 0
    assert c.get_many([1, 3, 4])[1].all()
    c.clear()
    assert len(c) == 0 and 1 not in c
    c.set_many([5, 6, 7, 8], [[5.0], [6.0], [7.0], [8.0]])
    assert len(c) == 3 and c[8].tolist() == [8.0]


def test_empty_batches():
    c = VectorCache(2, 3)
    rows, found = c.get_many([])
    assert rows.shape == (0, 3) and found.shape == (0,)
    c.set_many([], numpy.empty((0, 3)))
    rows, found = c.get_many(numpy.empty((0, 2), dtype=numpy.uint64))
    assert rows.shape == (0, 3)


def test_constructor_checks():
    with pytest.raises(ValueError):
        VectorCache(0, 4)
    with pytest.raises(ValueError):
        VectorCache(4, 0)
    with pytest.raises(ValueError):
        VectorCache(4, 4, policy="mru")
    with pytest.raises(TypeError):
        VectorCache(4, 4, dtype=object)
    with pytest.raises(TypeError):
        VectorCache(4.5, 4)
    c = VectorCache(4, 4, dtype="float64", policy="lfu")
    assert (c.maxsize, c.dim, c.dtype, c.policy) == (4, 4, numpy.dtype("float64"), "lfu")
    assert "VectorCache(maxsize=4" in repr(c)
    with pytest.raises(TypeError):
        pickle.dumps(c)


@pytest.mark.parametrize("policy", POLICIES + ["rr"])
def test_threads_never_see_torn_or_foreign_rows(policy):
    # Each key's row is the key itself repeated: any race would show a row that is not.
    dim, n = 16, 2000
    c = VectorCache(1500, dim, dtype=numpy.float64, policy=policy)
    errors = []

    def worker(seed):
        rng = numpy.random.default_rng(seed)
        try:
            for _ in range(30):
                keys = rng.integers(0, 3000, n)
                c.set_many(keys, numpy.repeat(keys.astype(numpy.float64)[:, None], dim, 1))
                q = rng.integers(0, 3000, n)
                rows, found = c.get_many(q)
                good = (rows[found] == q[found, None]).all()
                if not good or rows[~found].any():
                    errors.append(seed)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(c) == 1500
