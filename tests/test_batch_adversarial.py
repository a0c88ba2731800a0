"""Bad input and threads against the batch and LLM parts: VectorCache, Cache.get_many/set_many,
the paged block pool and the prefix cache.

Every bad call must raise a clear exception and leave the object as it was; nothing may crash,
hang or hand back a row or block that another key or request wrote.
"""
import gc
import subprocess
import sys
import tempfile
import textwrap
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import kvcache
from kvcache import VectorCache
from kvcache.llm import BlockPool, Decoder, PoolExhaustedError, PrefixCache

BAD = (TypeError, ValueError, OverflowError)


def run_isolated(code, timeout=60):
    """Run code in a fresh interpreter; return its exit code (a hang or a crash fails the test)."""
    # run from a temporary folder: `-c` puts the working directory first on sys.path, and the
    # clone's root holds the source tree, which would shadow the installed package
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                              text=True, timeout=timeout, cwd=cwd)
    return proc.returncode, proc.stdout + proc.stderr


class switching:
    """Make the interpreter switch threads as often as it can, restoring the interval after."""

    def __enter__(self):
        self.old = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)

    def __exit__(self, *exc):
        sys.setswitchinterval(self.old)


def run_threads(target, n, *others):
    """Run target(0..n-1) and each of others() on threads at once; return their exceptions."""
    errors = []

    def wrap(fn, *args):
        try:
            fn(*args)
        except BaseException as exc:  # reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=wrap, args=(target, i)) for i in range(n)]
    threads += [threading.Thread(target=wrap, args=(fn,)) for fn in others]
    with switching():
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return errors


# ============================================================================ VectorCache

def vstate(c):
    """Everything a VectorCache holds (keys in policy order, their rows, counters), checked."""
    c._check()
    keys, rows = c._export()
    return keys.tolist(), rows.tobytes(), tuple(c.stats()), len(c)


def filled(maxsize=8, dim=3, dtype=np.float32, policy="lru"):
    c = VectorCache(maxsize, dim, dtype, policy, seed=1)
    keys = np.arange(5)
    c.set_many(keys, np.repeat(keys[:, None], dim, 1).astype(dtype))
    return c


@pytest.mark.parametrize("bad", [True, False, np.True_, 2.0, "4", None, -1, 0, -(2**70)])
def test_vector_constructor_rejects_bad_sizes(bad):
    for args in [(bad, 4), (4, bad)]:
        with pytest.raises(BAD):
            VectorCache(*args)
    for maxsize in (2**30, 2**64):
        with pytest.raises(ValueError):
            VectorCache(maxsize, 4)


@pytest.mark.parametrize("dtype", [object, "U3", "S4", "V8", [("a", "f4"), ("b", "i4")],
                                   "(2,)f4", "M8[s]", "m8[s]"])
def test_vector_constructor_rejects_non_numeric_dtypes(dtype):
    with pytest.raises(TypeError, match="numeric dtype"):
        VectorCache(4, 3, dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int8, np.uint16,
                                   np.int64, np.complex64, np.bool_, ">f4", "<i2"])
def test_vector_numeric_dtypes_round_trip(dtype):
    c = VectorCache(4, 3, dtype)
    row = np.array([1, 0, 1]).astype(dtype)
    c[7] = row
    assert c[7].tobytes() == row.astype(c.dtype).tobytes()


def test_vector_huge_sizes_raise_memory_or_value_error_and_nothing_is_half_built():
    # Sizes numpy cannot even represent, or that no machine holds, fail at construction.
    for args in [(2, 2**62), (2**20, 2**40), (1, 2**61, np.float64)]:
        with pytest.raises((MemoryError, ValueError)):
            VectorCache(*args)


def test_vector_uninitialised_instance_raises_instead_of_crashing():
    c = VectorCache.__new__(VectorCache)
    for call in [lambda: c.get_many([1]), lambda: c.set_many([1], np.zeros((1, 1))),
                 lambda: c._locate([1]), lambda: 1 in c, lambda: c.__delitem__(1),
                 lambda: c.clear(), lambda: c[1], lambda: c._check()]:
        with pytest.raises(TypeError, match="not initialised"):
            call()
    assert len(c) == 0
    assert "VectorCache" in repr(c)


def test_vector_init_cannot_be_called_again():
    # Re-running __init__ would swap the buffers under a batch running on another thread.
    c = filled()
    before = vstate(c)
    with pytest.raises(TypeError, match="already initialised"):
        c.__init__(100, 9)
    assert vstate(c) == before and (c.maxsize, c.dim) == (8, 3)


@pytest.mark.parametrize("keys", [np.int64(3), np.array(3), np.array(3, np.uint64), 3,
                                  np.array([[]]), [[]], np.zeros((2, 3), np.uint64),
                                  np.zeros((1, 1, 2), np.uint64), np.zeros((0, 3), np.uint64),
                                  np.zeros((0, 2, 2), np.int64)])
def test_vector_keys_of_wrong_shape_raise_and_change_nothing(keys):
    c = filled()
    before = vstate(c)
    with pytest.raises(BAD):
        c.get_many(keys)
    with pytest.raises(BAD):
        c._locate(keys)
    n = np.asarray(keys).shape[0] if np.ndim(keys) else 1
    with pytest.raises(BAD):
        c.set_many(keys, np.zeros((n, 3), np.float32))
    assert vstate(c) == before


@pytest.mark.parametrize("keys", [np.zeros(2, np.float64), np.zeros(0, np.float64),
                                  np.zeros(2, np.bool_), np.zeros(0, np.bool_),
                                  np.array(["1"]), np.zeros(2, np.complex64), [1.0, 2.0],
                                  [True], [1, None], "12", b"12", (i for i in range(2)),
                                  {1, 2}, {1: 2}, None])
def test_vector_keys_of_wrong_type_raise_and_change_nothing(keys):
    c = filled()
    before = vstate(c)
    with pytest.raises(BAD):
        c.get_many(keys)
    with pytest.raises(BAD):
        c.set_many(keys, np.zeros((2, 3), np.float32))
    assert vstate(c) == before


def test_vector_empty_batches_are_no_ops_of_the_right_shape():
    c = filled()
    before = vstate(c)
    for keys in ([], (), np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros((0, 2), np.uint64),
                 np.zeros(0, np.int8)):
        rows, found = c.get_many(keys)
        assert rows.shape == (0, 3) and found.shape == (0,)
        c.set_many(keys, np.zeros((0, 3), np.float32))
    c.set_many([], [])                       # no rows at all: shape (0,) is (0, dim) too
    for rows in (np.zeros((0, 4), np.float32), np.zeros((1, 3), np.float32),
                 np.zeros(0, object), np.zeros((0, 3), "U1")):
        with pytest.raises(BAD):
            c.set_many([], rows)
    assert vstate(c) == before


@pytest.mark.parametrize("rows", [
    np.float32(1), np.zeros(3, np.float32), np.zeros((2, 3), np.float32), np.zeros((1, 4)),
    np.zeros((1, 3, 1)), np.array([[1, 2, 3]], object), np.array([["1", "2", "3"]]),
    np.zeros((1, 3), np.complex64), [[1, 2]], [[1, 2, "x"]], [["a", "b", "c"]], None, "abc",
])
def test_vector_rows_of_wrong_shape_or_type_raise_and_change_nothing(rows):
    c = filled()
    before = vstate(c)
    with pytest.raises(BAD):
        c.set_many([1], rows)
    if np.shape(rows) != (3,):
        with pytest.raises(BAD):
            c[1] = rows
    assert vstate(c) == before


def test_vector_rows_in_any_layout_are_stored_by_value():
    c = filled(dim=3)
    base = np.arange(24, dtype=np.float32).reshape(4, 6)
    layouts = [base[:, ::2], base[:2, :3].T.copy().T, np.asfortranarray(base[:3, :3]),
               base[::-1, 1:4], np.frombuffer(b"\0" + base[:2, :3].tobytes(), np.float32,
                                             offset=1).reshape(2, 3),
               base[:2, :3].astype(">f4"), base[:2, :3].astype(np.float64),
               base[:2, :3].tolist(), memoryview(np.ascontiguousarray(base[:2, :3]))]
    for rows in layouts:
        arr = np.asarray(rows, dtype=np.float32)
        keys = np.arange(100, 100 + len(arr))
        c.set_many(keys, rows)
        got, found = c.get_many(keys)
        assert found.all() and (got == arr).all()


def test_vector_unaligned_and_strided_keys_are_read_by_value():
    c = VectorCache(16, 2, np.int64)
    keys = np.array([3, 2**63 + 5, 7], np.uint64)
    c.set_many(keys, np.arange(6).reshape(3, 2))
    raw = b"\0" + keys.tobytes()
    unaligned = np.frombuffer(raw, np.uint64, offset=1)
    assert not unaligned.flags.aligned
    for form in (unaligned, unaligned.view(np.int64), np.repeat(keys, 2)[::2],
                 keys.astype(">u8"), keys[::-1][::-1]):
        got, found = c.get_many(form)
        assert found.all() and got.tolist() == [[0, 1], [2, 3], [4, 5]]
    digests = np.frombuffer(b"\0" + np.array([[3, 9]], np.uint64).tobytes(), np.uint64,
                            offset=1).reshape(1, 2)
    c.set_many(digests, [[8, 9]])
    assert c.get_many(np.array([[3, 9]], np.uint64))[0].tolist() == [[8, 9]]


def test_vector_nan_and_inf_are_data():
    # A vector cache stores bytes: NaN (with its payload) and infinities come back bit for bit.
    c = VectorCache(4, 3, np.float32)
    row = np.array([np.nan, np.inf, -np.inf], np.float32)
    payload = np.array([0x7FC00001, 0xFFC12345, 0x7F800001], np.uint32).view(np.float32)
    c.set_many([1, 2], np.stack([row, payload]))
    got, found = c.get_many([1, 2])
    assert found.all()
    assert got.view(np.uint32).tolist() == np.stack([row, payload]).view(np.uint32).tolist()


def test_vector_out_argument_checks_change_nothing():
    c = filled()
    before = vstate(c)
    ro = np.zeros((2, 3), np.float32)
    ro.setflags(write=False)
    for out in (np.zeros((2, 3), np.float64), np.zeros((3, 3), np.float32), ro,
                np.zeros((2, 6), np.float32)[:, ::2], np.zeros((3, 2), np.float32).T,
                [[0.0] * 3] * 2, np.zeros(6, np.float32)):
        with pytest.raises(BAD):
            c.get_many([1, 2], out=out)
    assert vstate(c) == before


def test_vector_out_may_alias_the_keys():
    # All keys are read before the first row is written to out.
    c = VectorCache(8, 2, np.uint64)
    c.set_many([5, 6], np.array([[50, 51], [60, 61]], np.uint64))
    buf = np.zeros((2, 2), np.uint64)
    buf[0] = [5, 6]
    out, found = c.get_many(buf[0], out=buf)   # the keys are out's first row
    assert out is buf and found.all() and out.tolist() == [[50, 51], [60, 61]]


def test_vector_stats_does_not_deadlock_when_a_finalizer_reenters():
    # Python code run under the cache's mutex (a namedtuple's __new__, a GC finalizer during an
    # allocation) that calls back into the cache would wait forever on the same thread.
    code = """
        import gc
        import numpy as np
        from kvcache import VectorCache
        c = VectorCache(8, 2)
        c.set_many([1], np.ones((1, 2), np.float32))

        class Reenter:
            def __init__(self):
                self.me = self
            def __del__(self):
                c.get_many([1]); c.set_many([2], np.ones((1, 2))); 1 in c; c.stats()

        gc.set_threshold(1)
        for _ in range(2000):
            Reenter()
            c.stats()
            c._check()
        print("ok")
    """
    rc, out = run_isolated(code, timeout=60)
    assert rc == 0 and "ok" in out, out


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    dtype=st.sampled_from(["i1", "i4", "i8", "u1", "u8", ">i8", "f4", "f8", "?", "O", "U2"]),
    shape=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    step=st.sampled_from([1, 2, -1]),
    rows_shape=st.lists(st.integers(0, 4), min_size=0, max_size=3),
    rows_dtype=st.sampled_from(["f4", "f8", "i8", ">f4", "O", "U1", "c8"]),
)
def test_vector_fuzzed_arguments_succeed_exactly_or_change_nothing(dtype, shape, step, rows_shape,
                                                                   rows_dtype):
    c = filled(dim=3)
    keys = np.arange(int(np.prod(shape)) * 2).astype(dtype).reshape(*shape, 2)[..., 0]
    if keys.ndim:
        keys = keys[::step]
    rows = np.ones(rows_shape, rows_dtype) if rows_dtype != "O" else np.empty(rows_shape, object)
    before = vstate(c)
    try:
        got, found = c.get_many(keys)
    except BAD:
        assert vstate(c) == before
    else:
        assert got.shape == (len(found), 3)
    before = vstate(c)
    try:
        c.set_many(keys, rows)
    except BAD:
        assert vstate(c) == before
    else:
        k = np.asarray(keys)
        got, found = c.get_many(k)
        assert found.all() or len(k) > c.maxsize
    c._check()


@pytest.mark.parametrize("policy", ["lru", "fifo", "lfu", "rr"])
def test_vector_threads_under_fast_switching_keep_every_row_its_own(policy):
    # Rows encode their key: any race that mixed up slots, rows or entries shows as a foreign
    # row; _check() verifies the index, the entry records, the free list and the policy links.
    dim = 4
    c = VectorCache(200, dim, np.int64, policy, seed=7)

    def row_of(keys):
        return np.repeat(np.asarray(keys, np.int64)[:, None], dim, 1) * 3 + np.arange(dim)

    def worker(i):
        rng = np.random.default_rng(i)
        for step in range(2000):
            n = int(rng.choice([1, 7, 40, 300]))   # below and above the no-GIL threshold
            keys = rng.integers(0, 400, n)
            op = step % 5
            if op in (0, 1):
                c.set_many(keys, row_of(keys))
            elif op == 2:
                for k in keys[:5].tolist():
                    try:
                        del c[k]
                    except KeyError:
                        pass
            else:
                rows, found = c.get_many(keys)
                if not (rows[found] == row_of(keys[found])).all() or rows[~found].any():
                    raise AssertionError("a foreign or torn row")
                if keys[0] in c:
                    c.get(int(keys[0]))
            if step % 50 == 0:
                c._check()
                c.stats()

    def clearer():
        for _ in range(500):
            c.clear()
            c._check()

    assert run_threads(worker, 4, clearer) == []
    c._check()
    assert len(c) <= 200


# ============================================================================ Cache batches

CLASSES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache,
           kvcache.RRCache, kvcache.TinyLFUCache]


def cstate(c):
    keys, values, aux = c._export_state()
    return keys, values, None if aux is None else aux.tolist(), tuple(c.stats())


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("keys", ["ab", b"ab", np.zeros((2, 2), np.int64),
                                  np.zeros((2, 1), np.uint64), np.array(1), np.int64(1), 5, None])
def test_get_many_rejects_scalars_strings_and_2d_arrays(cls, keys):
    c = cls(8, seed=1)
    c.set_many([1, 2], ["x", "y"])
    before = cstate(c)
    with pytest.raises((TypeError, ValueError)):
        c.get_many(keys)
    with pytest.raises((TypeError, ValueError)):
        c.set_many(keys, ["p", "q"])
    assert cstate(c) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_set_many_with_an_unhashable_key_changes_nothing(cls):
    c = cls(8, seed=1)
    c.set_many([1, 2], ["x", "y"])
    before = cstate(c)
    for keys in ([3, [4], 5], [3, 4, {}], (k for k in [3, 4, set()])):
        with pytest.raises(TypeError):
            c.set_many(keys, ["a", "b", "c"])
        assert cstate(c) == before


@pytest.mark.parametrize("cls", CLASSES)
def test_set_many_with_a_value_too_large_changes_nothing(cls):
    c = cls(10, getsizeof=len, seed=1)
    c.set_many([1, 2], ["x", "y"])
    before = cstate(c)
    with pytest.raises(ValueError, match="too large"):
        c.set_many([3, 4, 5], ["aa", "b" * 11, "c"])
    assert cstate(c) == before
    z = cls(0, seed=1)
    with pytest.raises(ValueError, match="too large"):
        z.set_many([1], ["x"])
    assert len(z) == 0


@pytest.mark.parametrize("cls", CLASSES)
def test_batches_accept_every_1d_int_form(cls):
    c = cls(32, seed=1)
    ref = cls(32, seed=1)
    keys = [0, 1, 2**63 - 1, 2**64 - 1, 5]
    for k in keys:
        ref[k] = str(k)
    c.set_many(np.array(keys, np.uint64), [str(k) for k in keys])
    assert cstate(c)[:2] == cstate(ref)[:2]
    for form in (keys, tuple(keys), iter(keys), np.array(keys, np.uint64),
                 np.array(keys, np.uint64)[::-1][::-1], np.array(keys, ">u8")):
        assert c.get_many(form) == [str(k) for k in keys]
    small = np.array([0, 1, 5], np.int64)
    for dt in (np.int8, np.int32, np.uint16, ">i8", np.int64):
        assert c.get_many(small.astype(dt)) == ["0", "1", "5"]
    assert c.get_many(np.arange(10)[::5]) == ["0", "5"]
    unaligned = np.frombuffer(b"\0" + np.array(keys, np.uint64).tobytes(), np.uint64, offset=1)
    assert not unaligned.flags.aligned
    assert c.get_many(unaligned) == [str(k) for k in keys]
    assert c.get_many(unaligned.view(np.int64))[:2] == ["0", "1"]
    assert c.get_many(np.array([], np.int64)) == [] == c.get_many([])
    c.set_many([], [])
    with pytest.raises(ValueError):
        c.set_many([1], [])
    with pytest.raises(ValueError):
        c.set_many(np.arange(3), np.arange(2))


# ============================================================================ block pool

def pstate(pc):
    b = pc._blocks
    b._check()
    return (b.refcounts().tolist(), pc.lru_order().tolist(), b.free_blocks().tolist(),
            [i for i in range(pc.pool.num_blocks) if pc.is_cached(i)], tuple(pc.stats()))


def make_pc(num_blocks=8, block_size=2):
    return PrefixCache(BlockPool(num_blocks, block_size, 1, 1, 1))


@pytest.mark.parametrize("n", [True, False, np.True_, 1.0, "1", None, [1]])
def test_pool_counts_and_ids_must_be_ints(n):
    pc = make_pc()
    held = pc.allocate(2)
    before = pstate(pc)
    for call in (pc.allocate, pc.pool.allocate, pc.pool.refcount, pc.is_cached):
        with pytest.raises(TypeError):
            call(n)
    assert pstate(pc) == before
    pc.release(held)


def test_pool_huge_requests_raise_pool_exhausted_without_allocating():
    pc = make_pc()
    before = pstate(pc)
    for n in (9, 10**9, 10**12, 2**62):
        with pytest.raises(PoolExhaustedError, match=f"{n} block"):
            pc.allocate(n)
    for n in (2**63, 10**30, -1, -(2**70)):
        with pytest.raises((ValueError, OverflowError)):
            pc.allocate(n)
    assert pstate(pc) == before


@pytest.mark.parametrize("ids", [{0, 1}, {0: 1}, frozenset([0]), np.array(0), np.int64(0), 0,
                                 "01", b"\x00", None, [0, None], [0.0], np.array([0.0]),
                                 np.array([0], object), np.zeros((1, 1), np.int64)])
def test_pool_release_rejects_unordered_and_non_int_ids(ids):
    pc = make_pc()
    held = pc.allocate(2)
    before = pstate(pc)
    with pytest.raises((TypeError, ValueError)):
        pc.release(ids)
    with pytest.raises((TypeError, ValueError)):
        pc.pool.incref(ids)
    assert pstate(pc) == before
    pc.release(held)


def test_pool_double_release_and_unknown_ids_change_nothing():
    pc = make_pc()
    a = pc.allocate(3)
    pc.pool.incref(a[:1])
    pc.release(a[1:])
    before = pstate(pc)
    for ids in (a[1:2], a, [int(a[0])] * 3, [8], [-1], [2**31], [2**31 - 1], np.array([8]),
                np.array([-1], np.int8), np.array([2**32], np.uint64)):
        with pytest.raises(ValueError):
            pc.release(ids)
        assert pstate(pc) == before, ids
    pc.release([int(a[0])] * 2)               # both references, in one call
    assert pc.pool.refcount(int(a[0])) == 0


@pytest.mark.parametrize("tokens", [{1, 2}, {1: 2, 3: 4}, "1234", np.array([1.5, 2.0]),
                                    np.array(["1", "2"]), np.array([1, 2], object), [1, 2**31],
                                    [1, -1], np.array([1, 2**40]), np.array([2**63], np.uint64),
                                    [1, 2.0], [True, 1], np.zeros((2, 2), np.int32), None, 7])
def test_prefix_cache_bad_tokens_change_nothing(tokens):
    pc = make_pc()
    ids = pc.allocate(2)
    pc.commit([1, 2, 3, 4], ids)
    before = pstate(pc)
    for call in (pc.match, lambda t: pc.commit(t, ids), pc.digests):
        with pytest.raises(BAD):
            call(tokens)
    assert pstate(pc) == before
    pc.release(ids)


def test_prefix_cache_accepts_a_long_sequence_beyond_the_pool():
    # A 10**6-token prompt on an 8-block pool: only whole cached blocks match, nothing breaks.
    pc = make_pc()
    ids = pc.allocate(2)
    pc.commit([1, 2, 3, 4], ids)
    pc.release(ids)
    long = np.concatenate(([1, 2, 3, 4], np.arange(10**6) % 1000)).astype(np.int64)
    n, hit = pc.match(long)
    assert (n, hit.tolist()) == (4, ids.tolist())
    pc.release(hit)
    with pytest.raises(ValueError, match="full block"):
        pc.commit(long, hit)
    pstate(pc)


def test_block_pool_rejects_non_numeric_kv_dtypes():
    for dtype in (object, "U2", "S1", [("a", "f4")], "M8[s]"):
        with pytest.raises(TypeError, match="numeric"):
            BlockPool(2, 2, 1, 1, 1, dtype=dtype)
    assert BlockPool(2, 2, 1, 1, 1, dtype=np.int8).kv.dtype == np.int8


def test_only_one_prefix_cache_per_pool_even_when_threads_race():
    # enable_prefix allocates several arrays: two threads attaching at once must not both win
    # (their pointers would mix), whatever the interleaving.
    for _ in range(100):
        pool = BlockPool(4096, 16, 1, 1, 1)
        made = []

        def attach(i):
            try:
                made.append(PrefixCache(pool, salt=str(i)))
            except ValueError:
                pass

        assert run_threads(attach, 4) == []
        assert len(made) == 1
        pc = made[0]
        assert pc._blocks.salt == pc.salt
        ids = pc.allocate(2)
        pc.commit(list(range(32)), ids)
        pc.release(ids)
        assert pc.match(list(range(32)))[1].tolist() == ids.tolist()
        pstate(pc)


def test_decoder_generate_checks_its_counts():
    d = Decoder(vocab_size=16, d_model=8, n_heads=2, n_layers=1, d_ff=8, block_size=2,
                num_blocks=16, max_seq_len=32)
    before = pstate(d.prefix_cache)
    for bad in (2.5, "3", True, None, [2]):
        with pytest.raises(TypeError):
            d.generate([1, 2], bad)
    for bad in (-1, 10**9, 2**70):
        with pytest.raises(ValueError):
            d.generate([1, 2], bad)
    for prompt in ([1, 16], [-1], [], [[1, 2]], [1.0], [True], np.array([2**64 - 1], np.uint64),
                   np.array([1], object), "ab"):
        with pytest.raises((TypeError, ValueError)):
            d.generate(prompt, 1)
    assert pstate(d.prefix_cache) == before
    assert d.generate(np.array([1, 2], np.uint8), 2) == d.generate([1, 2], 2, mode="none")


def test_prefix_cache_threads_under_fast_switching_never_share_a_wrong_block():
    # Each request writes its tokens into its blocks' K (one value per token). A matched block
    # must hold exactly the tokens of the prompt prefix it was matched for, and the pool's
    # bookkeeping (_check) must stay consistent throughout.
    bs = 4
    pool = BlockPool(96, bs, 1, 1, 1, dtype=np.int64)
    pc = PrefixCache(pool)
    k = pool.keys(0)
    prefixes = [list(range(p * 100, p * 100 + 12)) for p in range(6)]

    def worker(i):
        rng = np.random.default_rng(i)
        for step in range(1500):
            prompt = prefixes[int(rng.integers(len(prefixes)))] + rng.integers(
                0, 50, int(rng.integers(0, 9))).tolist()
            n, hit = pc.match(prompt)
            table = hit
            try:
                got = k[hit].reshape(-1)[:n].tolist()
                if got != prompt[:n]:
                    raise AssertionError(f"matched blocks hold {got}, not {prompt[:n]}")
                try:
                    fresh = pc.allocate(-(-len(prompt) // bs) - len(hit))
                except PoolExhaustedError:
                    continue
                table = np.concatenate((hit, fresh))
                flat = np.zeros(len(table) * bs, np.int64)
                flat[:len(prompt)] = prompt
                k[fresh, :, 0, 0] = flat[len(hit) * bs:].reshape(-1, bs)
                pc.commit(prompt, table)
                if step % 25 == 0:
                    pc._blocks._check()
                    pc.stats()
                    pc.lru_order()
            finally:
                pc.release(table)

    errors = run_threads(worker, 4)
    assert errors == []
    st_ = pc.stats()
    assert st_.in_use == 0 and st_.free + st_.evictable == 96
    pc._blocks._check()


TOKEN = st.one_of(st.integers(0, 40), st.integers(-3, 2**33), st.sampled_from(
    [True, False, 1.0, None, "1", 2**31 - 1, 2**31, 2**63, -(2**63) - 1, np.int32(3), np.uint64(2),
     np.int64(-1), np.float32(1), np.bool_(True)]))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(items=st.lists(TOKEN, max_size=12), form=st.sampled_from(["list", "tuple", "iter", "array"]))
@example(items=[np.bool_(True)], form="list")    # numpy 2.2 gives np.bool_ an __index__
def test_prefix_cache_fuzzed_tokens_match_exactly_or_change_nothing(items, form):
    pc = make_pc(num_blocks=8, block_size=2)
    ids = pc.allocate(2)
    pc.commit([1, 2, 3, 4], ids)
    pc.release(ids)
    if form == "array":
        try:
            arg = np.array(items)
        except (OverflowError, ValueError):
            return
    else:
        arg = {"list": list, "tuple": tuple, "iter": iter}[form](items)
    if form == "array":   # numpy has converted the items already: judge the array
        items = arg.tolist() if arg.dtype.kind in "iu" else [None]
    valid = all(type(t) in (int, np.int32, np.uint64, np.int64) and not isinstance(t, bool)
                and 0 <= int(t) < 2**31 for t in items)
    before = pstate(pc)
    try:
        n, hit = pc.match(arg)
    except BAD:
        assert not valid, items
        assert pstate(pc) == before
        return
    assert valid, items
    toks = [int(t) for t in items]
    expect = 4 if toks[:4] == [1, 2, 3, 4] else 2 if toks[:2] == [1, 2] else 0
    assert n == expect and hit.tolist() == ids.tolist()[:expect // 2]
    pc.release(hit)
    assert pstate(pc)[:4] == before[:4]


HKEY = st.one_of(st.integers(-5, 20), st.text(max_size=2), st.tuples(st.integers(0, 3)),
                 st.just([1]), st.just({}), st.floats(allow_nan=False, width=16))


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(cls=st.sampled_from(CLASSES), keys=st.lists(HKEY, max_size=8),
       sizes=st.lists(st.integers(0, 12), min_size=8, max_size=8), extra=st.integers(-1, 1))
def test_set_many_fuzzed_batches_store_everything_or_nothing(cls, keys, sizes, extra):
    c = cls(10, getsizeof=len, seed=2)
    c.set_many([100, 101], ["a", "b"])
    values = ["x" * sizes[i] for i in range(len(keys))]
    if extra and keys:
        values = values[:len(keys) + extra] if extra < 0 else values + ["y"]
    bad = (len(values) != len(keys) or any(isinstance(k, (list, dict)) for k in keys)
           or any(len(v) > 10 for v in values))
    before = cstate(c)
    try:
        c.set_many(keys, values)
    except (TypeError, ValueError):
        assert bad
        assert cstate(c) == before
    else:
        assert not bad
        ref = cls(10, getsizeof=len, seed=2)
        ref.set_many([100, 101], ["a", "b"])
        for k, v in zip(keys, values):
            ref[k] = v
        assert cstate(c) == cstate(ref)
    c._check()
