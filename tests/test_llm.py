"""kvcache.llm: BlockPool, PrefixCache (chained digests, LRU, errors) and the reference Decoder."""
import struct

import numpy as np
import pytest

from kvcache.llm import (
    BlockPool,
    Decoder,
    GenerationStats,
    PoolExhaustedError,
    PrefixCache,
    PrefixCacheStats,
)


def murmur3_x64_128(data, seed=0):
    """Pure-Python MurmurHash3_x64_128 (Appleby's reference), digest as 16 little-endian bytes."""
    M = (1 << 64) - 1
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & M

    def fmix(k):
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & M
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & M
        return k ^ (k >> 33)

    h1 = h2 = seed
    n = len(data)
    for i in range(n // 16):
        k1, k2 = struct.unpack_from("<QQ", data, 16 * i)
        h1 ^= rotl((k1 * c1) & M, 31) * c2 & M
        h1 = (rotl(h1, 27) + h2) & M
        h1 = (h1 * 5 + 0x52DCE729) & M
        h2 ^= rotl((k2 * c2) & M, 33) * c1 & M
        h2 = (rotl(h2, 31) + h1) & M
        h2 = (h2 * 5 + 0x38495AB5) & M
    tail = data[16 * (n // 16):]
    if len(tail) > 8:
        h2 ^= rotl((int.from_bytes(tail[8:], "little") * c2) & M, 33) * c1 & M
    if tail:
        h1 ^= rotl((int.from_bytes(tail[:8], "little") * c1) & M, 31) * c2 & M
    h1 ^= n
    h2 ^= n
    h1 = (h1 + h2) & M
    h2 = (h2 + h1) & M
    h1, h2 = fmix(h1), fmix(h2)
    h1 = (h1 + h2) & M
    h2 = (h2 + h1) & M
    return struct.pack("<QQ", h1, h2)


def make_cache(num_blocks=8, block_size=4, salt=b"", **kw):
    return PrefixCache(BlockPool(num_blocks, block_size, 1, 1, 1), salt=salt, **kw)


def state(pc):
    b = pc._blocks
    return (b.refcounts().tolist(), pc.lru_order().tolist(), b.free_blocks().tolist(),
            [i for i in range(pc.pool.num_blocks) if pc.is_cached(i)])


def serve(pc, tokens):
    """One request: match, allocate the rest, commit, release; return its block table."""
    n, hit = pc.match(tokens)
    table = np.concatenate((hit, pc.allocate(-(-len(tokens) // pc.block_size) - len(hit))))
    pc.commit(tokens, table)
    pc.release(table)
    return n, table.tolist()


# ---------------------------------------------------------------- BlockPool

def test_pool_layout_and_views():
    pool = BlockPool(6, 4, layers=3, kv_heads=2, head_dim=8)
    assert pool.kv.shape == (3, 2, 6, 4, 2, 8)
    assert pool.kv.dtype == np.float16 and pool.dtype == np.float16
    assert pool.keys(1).shape == (6, 4, 2, 8)
    pool.keys(2)[5, 3] = 1.5
    pool.values(0)[1] = -2
    assert pool.kv[2, 0, 5, 3].tolist() == [[1.5] * 8] * 2
    assert (pool.kv[0, 1, 1] == -2).all() and (pool.kv[0, 0] == 0).all()
    # one block of one layer's K is contiguous
    assert pool.keys(0)[3].flags.c_contiguous


def test_pool_allocate_release_refcounts():
    pool = BlockPool(4, 2, 1, 1, 1)
    a = pool.allocate(3)
    assert a.tolist() == [0, 1, 2] and pool.num_free == 1
    pool.incref(a[:1])
    assert pool.refcount(0) == 2
    pool.release(a)
    assert [pool.refcount(i) for i in range(4)] == [1, 0, 0, 0]
    assert pool.num_free == 3
    # freed blocks come back last-in first-out
    assert pool.allocate(2).tolist() == [1, 2]


def test_pool_exhaustion_changes_nothing():
    pool = BlockPool(3, 2, 1, 1, 1)
    pool.allocate(2)
    before = pool._blocks.free_blocks().tolist()
    with pytest.raises(PoolExhaustedError, match=r"2 block\(s\) requested, 1 free"):
        pool.allocate(2)
    assert pool._blocks.free_blocks().tolist() == before
    assert pool.allocate(1).tolist() == [2]
    assert issubclass(PoolExhaustedError, RuntimeError)


def test_pool_bad_input_changes_nothing():
    pool = BlockPool(4, 2, 1, 1, 1)
    held = pool.allocate(2)
    snapshot = pool._blocks.refcounts().tolist()
    for bad, exc in [([0, 3], ValueError), ([0, 0, 0], ValueError), ([7], ValueError),
                     ([-1], ValueError), ([0.0], TypeError), (np.array([0.5]), TypeError),
                     (np.zeros((1, 1), np.int64), ValueError), ("ab", TypeError)]:
        with pytest.raises(exc):
            pool.release(bad)
        assert pool._blocks.refcounts().tolist() == snapshot
    with pytest.raises(ValueError):
        pool.incref([2])
    with pytest.raises(ValueError):
        pool.allocate(-1)
    assert pool._blocks.refcounts().tolist() == snapshot
    pool.release(held)
    for args in [(0, 2, 1, 1, 1), (4, 0, 1, 1, 1), (4, 2, 1, 1, 2.5), (-3, 2, 1, 1, 1)]:
        with pytest.raises(ValueError):
            BlockPool(*args)


# ---------------------------------------------------------------- PrefixCache

def test_reuse_after_release():
    pc = make_cache()
    toks = list(range(10))  # 2 full blocks + 2 tokens
    assert serve(pc, toks) == (0, [0, 1, 2])
    assert len(pc) == 2 and not pc.is_cached(2)
    n, hit = pc.match(toks + [99])
    assert (n, hit.tolist()) == (8, [0, 1])
    assert pc.pool.refcount(0) == 1 and pc.pool.refcount(1) == 1
    assert pc.lru_order().tolist() == []  # referenced blocks are not evictable
    pc.release(hit)
    assert pc.match(toks[:7]) == (4, pytest.approx([0]))
    s = pc.stats()
    assert isinstance(s, PrefixCacheStats)
    assert (s.queries, s.hit_blocks, s.hit_tokens, s.cached, s.in_use) == (3, 3, 12, 2, 1)


def test_lru_eviction_only_when_needed_and_never_referenced():
    pc = make_cache(num_blocks=6, block_size=2)
    serve(pc, [1, 1, 2, 2])  # blocks 0,1 (chain A)
    serve(pc, [3, 3, 4, 4])  # blocks 2,3 (chain B)
    # release is last to first: a chain's tail is evicted before its head
    assert pc.lru_order().tolist() == [1, 0, 3, 2]
    _, held = pc.match([3, 3, 4, 4])  # B referenced again
    assert pc.lru_order().tolist() == [1, 0]
    fresh = pc.allocate(2)  # two never-used blocks: nothing evicted yet
    assert fresh.tolist() == [4, 5] and len(pc) == 4
    more = pc.allocate(2)  # now evict A, tail first; never B
    assert more.tolist() == [1, 0] and len(pc) == 2
    assert pc.stats().evictions == 2
    with pytest.raises(PoolExhaustedError):
        pc.allocate(1)  # everything referenced: B is never evicted
    assert pc.match([3, 3, 4, 4])[0] == 4
    assert pc.match([1, 1])[0] == 0


def test_exhaustion_in_allocate_changes_nothing():
    pc = make_cache(num_blocks=4, block_size=2)
    serve(pc, [1, 2, 3, 4])
    held = pc.allocate(1)
    before = state(pc)
    with pytest.raises(PoolExhaustedError, match="exhausted"):
        pc.allocate(4)
    assert state(pc) == before
    assert pc.match([1, 2, 3, 4])[0] == 4  # cached blocks survived the failed call
    pc.release(held)


def test_commit_duplicate_content_stays_private():
    pc = make_cache(num_blocks=6, block_size=2)
    a = pc.allocate(2)
    b = pc.allocate(2)
    assert pc.commit([5, 6, 7, 8], a) == 2
    assert pc.commit([5, 6, 7, 8], b) == 0  # same content: a's blocks stay canonical
    assert pc.commit([5, 6, 7, 8], a) == 0  # idempotent
    pc.release(b)
    assert sorted(pc._blocks.free_blocks().tolist()[-2:]) == sorted(b.tolist())
    pc.release(a)
    assert pc.match([5, 6, 7, 8])[1].tolist() == a.tolist()


def test_commit_incrementally_as_tokens_arrive():
    pc = make_cache(num_blocks=6, block_size=2)
    table = pc.allocate(3)
    assert pc.commit([1, 2, 3], table) == 1
    assert pc.commit([1, 2, 3, 4, 5], table) == 1
    assert pc.commit([1, 2, 3, 4, 5, 6], table) == 1
    pc.release(table)
    assert pc.match([1, 2, 3, 4, 5, 6, 7])[1].tolist() == table.tolist()


def test_commit_errors_change_nothing():
    pc = make_cache(num_blocks=6, block_size=2)
    table = pc.allocate(2)
    pc.commit([1, 2, 3, 4], table)
    other = pc.allocate(2)
    before = state(pc)
    with pytest.raises(ValueError, match="other tokens"):
        pc.commit([1, 2, 9, 9], table)  # block 1 is cached for (3, 4)
    with pytest.raises(ValueError, match="other tokens"):
        pc.commit([0, 0] + [1, 2], [other[0], table[0]])  # right tokens, wrong parent
    with pytest.raises(ValueError, match="twice"):
        pc.commit([7, 7, 8, 8], [other[0], other[0]])
    with pytest.raises(ValueError, match="block id"):
        pc.commit([7, 7, 8, 8], [other[0]])
    with pytest.raises(ValueError, match="not referenced"):
        pc.commit([7, 7], [5])
    with pytest.raises(ValueError, match="out of range"):
        pc.commit([7, -1], other)
    with pytest.raises(TypeError):
        pc.commit([7.0, 7.0], other)
    assert state(pc) == before


def test_commit_after_the_canonical_parent_was_evicted():
    # A request whose first block duplicated a cached one keeps it private, and its second
    # block is committed under the cached twin. Once the twin is evicted, committing the
    # grown request re-registers the private block and re-links the second one under it.
    pc = make_cache(num_blocks=4, block_size=2)
    first = serve(pc, [0, 0])  # caches block first[0] for (0, 0), then frees it
    table = pc.allocate(1).tolist()
    pc.commit([0], table)
    table += pc.allocate(2).tolist()
    assert pc.commit([0, 0, 0, 0, 0], table) == 1  # (0, 0) is a duplicate: only block 2 is new
    assert not pc.is_cached(table[0]) and pc.is_cached(table[1])
    table += pc.allocate(1).tolist()  # evicts the twin, first[0]
    assert table[-1] == first[0]
    assert pc.commit([0] * 7, table) == 2  # table[0] (now canonical) and table[2]
    n, hit = pc.match([0] * 8)
    assert (n, hit.tolist()) == (6, table[:3])
    pc.release(table[:3])
    with pytest.raises(ValueError, match="other tokens"):
        pc.commit([1, 1, 0, 0], table)  # block 1 is cached after (0, 0), not (1, 1)


def test_chained_identity_and_salt():
    pc = make_cache(block_size=2, salt=b"model-a")
    da = pc.digests([1, 2, 5, 6])
    db = pc.digests([3, 4, 5, 6])
    assert all(len(d) == 16 for d in da + db)
    assert da[1] != db[1]  # same block (5, 6) after different prefixes
    assert pc.digests([1, 2, 5, 6, 7]) == da  # partial block has no digest
    other = make_cache(block_size=2, salt=b"model-b")
    assert other.digests([1, 2, 5, 6])[0] != da[0]
    assert make_cache(block_size=2, salt=b"model-a").digests([1, 2, 5, 6]) == da  # stable


def test_digest_is_murmurhash3_x64_128_of_parent_tokens_salt():
    pc = make_cache(block_size=3, salt=b"tenant-7")
    toks = [1, 70000, 2**31 - 1, 0, 5, 6]
    d0, d1 = pc.digests(toks)
    data0 = bytes(16) + np.array(toks[:3], "<i4").tobytes() + b"tenant-7"
    assert d0 == murmur3_x64_128(data0)
    assert d1 == murmur3_x64_128(d0 + np.array(toks[3:], "<i4").tobytes() + b"tenant-7")
    assert murmur3_x64_128(b"") == bytes(16)  # reference sanity: empty input, seed 0


@pytest.mark.parametrize("bits", [0, 8, 64])
def test_forced_digest_collisions_never_return_a_wrong_block(bits):
    pc = make_cache(num_blocks=16, block_size=2, _digest_bits=bits)
    mask = (1 << bits) - 1
    for d in pc.digests([1, 2, 3, 4, 5, 6]):
        assert int.from_bytes(d, "little") & ~mask == 0
    # Same tokens (5, 6) after different prefixes; with 0 bits every digest is equal.
    _, ta = serve(pc, [1, 2, 5, 6])
    _, tb = serve(pc, [3, 4, 5, 6])
    if bits == 0:
        assert pc.digests([1, 2, 5, 6]) == pc.digests([3, 4, 5, 6])
    assert pc.match([3, 4, 5, 6])[1].tolist() == tb
    assert pc.match([1, 2, 5, 6])[1].tolist() == ta
    assert pc.match([9, 9, 5, 6]) [0] == 0  # colliding digest, different tokens: no hit
    n, hit = pc.match([1, 2, 6, 5])
    assert hit.tolist() == ta[:1]


def test_evicted_parent_does_not_resurrect_children():
    # A child stays cached after its parent block is evicted and reused for other tokens;
    # with every digest equal, only the parent's generation stops it from matching there.
    pc = make_cache(num_blocks=3, block_size=1, _digest_bits=0)
    serve(pc, [1, 2])  # block 0 holds token 1, block 1 token 2 after it
    _, hit = pc.match([1, 2])
    pc.release(hit[:1])
    pc.release(hit[1:])  # LRU: parent first this time
    assert pc.lru_order().tolist() == [0, 1]
    taken = pc.allocate(2)  # the never-used block 2, then evicts the parent, block 0
    assert taken.tolist() == [2, 0] and pc.is_cached(1) and not pc.is_cached(0)
    pc.commit([7], taken[1:])  # block 0 now caches token 7
    n, hit = pc.match([7, 2])
    assert (n, hit.tolist()) == (1, [0])  # not block 1: its K/V follow token 1, not 7
    pc.release(hit)
    pc.release(taken)


def test_match_input_forms_and_errors():
    pc = make_cache(block_size=2)
    serve(pc, [1, 2, 3, 4])
    for form in ([1, 2, 3, 4], (1, 2, 3, 4), np.array([1, 2, 3, 4], np.int32),
                 np.array([1, 2, 3, 4], np.uint16), range(1, 5), np.arange(1, 5)[::1]):
        n, hit = pc.match(form)
        assert n == 4
        pc.release(hit)
    before = state(pc)
    for bad, exc in [([1, 2.5], TypeError), ([1, -2], ValueError), ([2**31], ValueError),
                     ([2**70], OverflowError), (np.ones((2, 2), np.int64), ValueError),
                     ("1234", TypeError), (np.array([1.0, 2.0]), TypeError), (None, TypeError)]:
        with pytest.raises(exc):
            pc.match(bad)
    assert state(pc) == before
    assert pc.match([]) [0] == 0


class _Tok(int):
    """An int subclass: converted by value, like a plain int."""


def test_list_conversion_edge_cases_change_nothing():
    pc = make_cache(block_size=2)
    serve(pc, [1, 2, 3, 4])
    held = pc.allocate(1)
    before = state(pc)
    for bad, exc, msg in [
        ([1, True], TypeError, "bool"), ([False], TypeError, "bool"),
        ([1, 2.0], TypeError, "float"), ([1, 2, 3, "4"], TypeError, "str"),
        ([1, None], TypeError, "NoneType"),
        ([1, 2**63], OverflowError, None), ([1, -(2**64)], OverflowError, None),
        ([1, 2**31], ValueError, r"token id 2147483648 out of range"),
        ([1, 2**62], ValueError, r"token id 4611686018427387904 out of range"),
        ([-1, 2], ValueError, r"token id -1 out of range"),
        # the first out-of-range value is reported; a wrong type anywhere wins over it
        ([1, 2, -5, 2**40], ValueError, r"token id -5 "),
        ([1, -5, 2.5], TypeError, "float"), ([-5, True], TypeError, "bool"),
        ((1, 2.5), TypeError, "float"), ((1, -2), ValueError, "token id -2"),
        (np.array([1, 2**31], np.int64), ValueError, "token id 2147483648"),
        (np.array([1, 2**63], np.uint64), ValueError, "out of range"),
        (np.array([True, False]), TypeError, "dtype bool"),
        (np.array([1, 2], np.float32), TypeError, "dtype float32"),
        (np.zeros((2, 2), np.int32), ValueError, "1-d"),
        (range(-1, 3), ValueError, "token id -1"),
    ]:
        with pytest.raises(exc, match=msg):
            pc.match(bad)
        with pytest.raises(exc, match=msg):
            pc.commit(bad, held)
        if not isinstance(bad, np.ndarray):
            with pytest.raises(exc, match=msg):
                pc.match(iter(list(bad)))  # any other iterable: read into a tuple first
        assert state(pc) == before, bad
    for bad, exc, msg in [
        ([True], TypeError, "bool"), ([0.0], TypeError, "float"),
        ([2**63], OverflowError, None), ([2**40], ValueError, r"block id 1099511627776 out of range"),
        ([int(held[0]), -1], ValueError, r"block id -1 out of range \[0, 8\)"),
        (np.array([held[0], 8]), ValueError, r"block id 8 out of range"),
        (np.array([held[0]], np.float64), TypeError, "dtype float64"),
    ]:
        with pytest.raises(exc, match=msg):
            pc.release(bad)
        with pytest.raises(exc, match=msg):
            pc.commit([1, 2], bad)
        assert state(pc) == before, bad
    pc.release(held)


def test_list_conversion_accepts_every_int_form():
    pc = make_cache(num_blocks=8, block_size=2)
    toks = [1, 2**31 - 1, 2**30, 7]  # 2**30 and up are more than one CPython digit
    _, table = serve(pc, toks)
    ref = pc.digests(np.array(toks))
    forms = [lambda: toks, lambda: tuple(toks), lambda: [_Tok(t) for t in toks],
             lambda: [np.int64(t) for t in toks], lambda: [np.uint32(t) for t in toks],
             lambda: [toks[0], _Tok(toks[1]), np.int32(toks[2]), toks[3]],
             lambda: np.array(toks, np.int32), lambda: np.array(toks, np.uint32),
             lambda: np.array(toks, np.int64), lambda: np.array(toks, ">i8"),
             lambda: np.repeat(np.array(toks, np.int64), 2)[::2],  # not contiguous
             lambda: np.frombuffer(b"-" + np.array(toks, np.int64).tobytes(), np.int64,
                                   offset=1),  # unaligned
             lambda: iter(toks), lambda: (t for t in toks)]
    for form in forms:
        assert pc.digests(form()) == ref
        n, hit = pc.match(form())
        assert (n, hit.tolist()) == (4, table)
        assert pc.commit(form(), hit) == 0  # all already cached, under these very ids
        pc.release([_Tok(b) for b in hit])
        pc.release(tuple(pc.match(form())[1].tolist()))
    assert pc.stats().in_use == 0


def test_list_conversion_is_safe_against_index_side_effects():
    # __index__ runs Python code: it may mutate or free the list being converted. The
    # conversion reads a snapshot, so it neither crashes nor sees the change.
    pc = make_cache(num_blocks=8, block_size=2)
    _, table = serve(pc, [1, 2, 3, 4])
    toks = []

    class Shrinker:
        def __index__(self):
            toks.clear()
            return 2

    toks.extend([1, Shrinker(), 3, 4])
    n, hit = pc.match(toks)
    assert toks == [] and (n, hit.tolist()) == (4, table)
    pc.release(hit)

    class Reenter:
        def __index__(self):
            # a reentrant call on the same cache while the outer one converts
            n, hit = pc.match([1, 2, 3, 4])
            pc.release(hit)
            return 3

    n, hit = pc.match([1, 2, Reenter(), 4])
    assert (n, hit.tolist()) == (4, table)
    pc.release(hit)

    class Boom:
        def __index__(self):
            raise KeyError("boom")

    before = state(pc)
    with pytest.raises(KeyError, match="boom"):
        pc.match([1, 2, 3, Boom()])
    with pytest.raises(KeyError, match="boom"):
        pc.release([int(table[0]), Boom()])
    assert state(pc) == before


def test_long_arguments_beyond_the_stack_buffers():
    # Conversions land in per-call stack buffers (2048 tokens, 256 ids) when they fit.
    pc = make_cache(num_blocks=3000, block_size=1)
    toks = list(range(2500))
    n, hit = pc.match(toks)
    assert n == 0
    table = pc.allocate(len(toks))
    assert pc.commit(toks, table.tolist()) == len(toks)
    pc.release(list(table))
    n, hit = pc.match(toks + [10**9])
    assert n == len(toks) and hit.tolist() == table.tolist()
    assert pc.digests(toks) == pc.digests(np.array(toks))
    with pytest.raises(ValueError, match="token id -1"):
        pc.match(toks + [-1])
    with pytest.raises(TypeError):
        pc.release(hit.tolist()[:300] + [1.5])
    pc.release(hit.tolist())
    assert pc.stats().in_use == 0 and pc.stats().evictable == len(toks)


@pytest.mark.parametrize("block_size", [1, 2, 3, 4])
def test_digest_reference_for_every_tail_length(block_size):
    # The hash input is 16 + 4 * block_size + len(salt) bytes: cover every tail length
    # of MurmurHash3's 16-byte blocks.
    toks = [5, 70000, 2**31 - 1, 0, 123456, 9, 8, 7][:2 * block_size]
    for salt_len in range(16):
        salt = bytes(range(100, 100 + salt_len))
        pc = make_cache(block_size=block_size, salt=salt)
        d0, d1 = pc.digests(toks)
        enc = [np.array(toks[i:i + block_size], "<i4").tobytes()
               for i in (0, block_size)]
        assert d0 == murmur3_x64_128(bytes(16) + enc[0] + salt)
        assert d1 == murmur3_x64_128(d0 + enc[1] + salt)


def test_one_prefix_cache_per_pool():
    pool = BlockPool(4, 2, 1, 1, 1)
    PrefixCache(pool)
    with pytest.raises(ValueError, match="already"):
        PrefixCache(pool)
    with pytest.raises(TypeError):
        PrefixCache("not a pool")
    with pytest.raises(TypeError):
        PrefixCache(BlockPool(4, 2, 1, 1, 1), salt=3)
    with pytest.raises(ValueError):
        PrefixCache(BlockPool(4, 2, 1, 1, 1), _digest_bits=129)


def test_clear_keeps_referenced_blocks():
    pc = make_cache(num_blocks=6, block_size=2)
    serve(pc, [1, 2])
    _, hit = pc.match([1, 2])
    serve(pc, [3, 4])
    pc.clear()
    assert len(pc) == 1 and pc.is_cached(hit[0])
    assert pc.match([3, 4])[0] == 0
    pc.release(hit)


# ---------------------------------------------------------------- Decoder

def small_decoder(**kw):
    args = dict(vocab_size=64, d_model=32, n_heads=2, n_layers=2, d_ff=64, block_size=4,
                num_blocks=128, max_seq_len=256, seed=3)
    args.update(kw)
    return Decoder(**args)


def close(a, b):
    return np.max(np.abs(a - b)) <= 1e-5 * np.max(np.abs(b))


def test_three_modes_agree_on_random_prompts():
    dec = small_decoder()
    rng = np.random.default_rng(11)
    shared = rng.integers(0, 64, 21)
    reused = 0
    for i in range(8):
        tail = rng.integers(0, 64, int(rng.integers(1, 12)))
        prompt = np.concatenate((shared[: int(rng.integers(0, 22))], tail))
        new = int(rng.integers(1, 14))
        ref_tokens, ref_logits = dec.generate(prompt, new, "none", return_logits=True)
        assert len(ref_tokens) == new and ref_logits.shape == (new, 64)
        for mode in ("kv", "prefix"):
            tokens, logits = dec.generate(prompt, new, mode, return_logits=True)
            assert tokens == ref_tokens, (i, mode)
            assert close(logits, ref_logits), (i, mode)
            if mode == "prefix":
                reused += dec.last_stats.cached_tokens
        # nothing leaks: every block is free or evictable after a request
        assert dec.pool.num_free == dec.pool.num_blocks
    assert reused > 0  # the prefix mode did read shared blocks


def test_prefix_mode_reuses_generated_blocks_and_whole_prompt():
    dec = small_decoder()
    prompt = list(range(1, 10))
    first = dec.generate(prompt, 8, "prefix")
    assert dec.last_stats.cached_tokens == 0
    again = dec.generate(prompt, 8, "prefix")
    assert again == first and dec.last_stats.cached_tokens == 8  # all but the last token
    # A follow-up turn whose prompt is the previous prompt plus its answer reuses both.
    follow = prompt + first + [5]
    assert dec.generate(follow, 3, "prefix") == dec.generate(follow, 3, "none")
    dec.generate(follow, 3, "prefix")
    assert dec.last_stats.cached_tokens >= 16


def test_default_decoder_modes_agree_at_benchmark_scale():
    dec = Decoder()
    rng = np.random.default_rng(0)
    system = rng.integers(0, dec.vocab_size, 512)
    p1 = np.concatenate((system, rng.integers(0, dec.vocab_size, 32)))
    p2 = np.concatenate((system, rng.integers(0, dec.vocab_size, 32)))
    dec.generate(p1, 2, "prefix")
    ref, ref_logits = dec.generate(p2, 3, "none", return_logits=True)
    for mode in ("kv", "prefix"):
        tokens, logits = dec.generate(p2, 3, mode, return_logits=True)
        assert tokens == ref and close(logits, ref_logits)
    assert dec.last_stats.cached_tokens == 512
    s = dec.last_stats
    assert isinstance(s, GenerationStats) and s.mode == "prefix" and s.new_tokens == 3
    assert 0 < s.ttft <= s.seconds


def test_generate_errors():
    dec = small_decoder()
    with pytest.raises(ValueError, match="mode"):
        dec.generate([1, 2], 2, "paged")
    with pytest.raises(ValueError):
        dec.generate([], 2, "kv")
    with pytest.raises(ValueError):
        dec.generate([1, 64], 2, "kv")
    with pytest.raises(ValueError):
        dec.generate([1.5, 2.0], 2, "kv")
    with pytest.raises(ValueError, match="max_seq_len"):
        dec.generate([1] * 250, 10, "kv")
    with pytest.raises(ValueError):
        dec.generate([1], -1, "kv")
    assert dec.generate([1, 2], 0, "prefix") == []


def test_generate_pool_exhaustion_leaves_pool_intact():
    dec = small_decoder(num_blocks=6, block_size=4)
    prompt = list(range(12))
    dec.generate(prompt, 1, "prefix")  # caches 3 blocks
    before = state(dec.prefix_cache)
    with pytest.raises(PoolExhaustedError):
        dec.generate(prompt + list(range(20)), 4, "prefix")
    assert state(dec.prefix_cache) == before
    with pytest.raises(PoolExhaustedError):
        dec.generate(list(range(30)), 1, "kv")
    assert state(dec.prefix_cache) == before
    assert dec.generate(prompt, 2, "prefix") == dec.generate(prompt, 2, "none")


def test_prefix_cache_stats_pickle():
    # a namedtuple made in a compiled module must name the module pickle imports it from
    import pickle

    from kvcache.llm import PrefixCacheStats
    s = PrefixCacheStats(*range(10))
    assert PrefixCacheStats.__module__ == "kvcache.llm"
    assert pickle.loads(pickle.dumps(s)) == s
