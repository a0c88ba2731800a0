# cython: language_level=3, freethreading_compatible=False
# Paged KV-cache block manager: block ids, reference counts, the LRU of free cached
# blocks and the prefix table keyed by chained 128-bit digests.
#
# The module's directives turn bounds checks off (setup.py): every index that comes from
# Python is checked in the `_paged_*` conversion helpers or at the top of each method,
# before any state changes.
#
# Layout (preshed style: flat C arrays, a thin class around them). Per block b, one
# 64-byte, cache-line aligned record meta[b] holds what a lookup needs beyond the table
# (one cache miss per block rather than one per field: a 100k-block pool does not fit
# in cache):
#   refcount           references held by requests
#   registered         1 while b is in the prefix table
#   gen                bumped every time b leaves the table (see below)
#   lo, hi             the block's digest; lo is also the table hash `ent[b].hash`, kept
#                      here too so a lookup or a commit reads one record, not two
#   parent, parent_gen the block it was committed after, and that block's gen
#   mark, count        scratch for validating a call's arguments
# Beside it: free_stack[..] (int32, blocks that hold nothing, LIFO, top = n_free - 1),
# tokens[b*bs ..] (int32, the block's token ids, the ground truth of a match) and
# lru[b] (prev/next, the doubly linked LRU of blocks that are cached AND free). The LRU
# links are dense, 8 bytes a block, not in the records: walking to the next victims
# then reads a few cache-resident bytes instead of one cold record per step, so the
# records of several victims can be fetched at once.
# The prefix table is the engine's `table_t` (_core.pxd): open addressing with linear
# probing over an int32 index, entry number = block id, `ent[b].hash` = the low 64 bits
# of the digest, backward-shift deletion (table_probe_free / table_slot_of /
# table_remove_slot), at most half full since it has two slots per block. Lookups run
# the engine's probe loop (`probe`) with the block comparison as its step
# (`_paged_step_block`): the high digest half, the parent and its generation, the tokens.
# The digest's low word is the table hash as it is: it is a MurmurHash3 output already. `ent[b].prev` is ENTRY_FREE while b is not in the
# table. Unregistering finds b's slot from meta[b].lo (== ent[b].hash), afresh each
# time: a backward-shift deletion moves other blocks' slots.
#
# Why a match never trusts the digest: a candidate is accepted only when its stored
# tokens equal the query's AND its stored parent is the block just matched for the
# previous position with that block's current generation. By induction the whole
# prefix is confirmed token for token, whatever the digest width (the test hook
# `digest_bits` truncates digests to force collisions). The generation makes a
# block that was evicted and reused for other tokens unusable as a parent for
# the children it had before.
#
# Reentrancy: nothing here calls user Python code once the arguments are converted
# (`_paged_load`, into each call's own stack buffer, before the critical section), and
# errors are raised before any mutation. Nothing is allocated inside a critical section
# either (an allocation may run the GC, so finalizers, and on a free-threaded build
# suspend the section): results are made before it (allocate, refcounts) or after it
# from the call's own buffer (match, digests), and enable_prefix builds its arrays first
# and installs them in one step.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcmp, memcpy, memset
from murmurhash.mrmr cimport hash128_x64
cimport numpy as _cnp
from cpython.ref cimport PyObject

from kvcache._core cimport (ENTRY_FREE, ENTRY_NONE, PROBE_EMPTY, PROBE_HIT, PROBE_ON, SLOT_EMPTY,
                            entry_rec, entry_t, kv_prefetch, probe, table_slots_for,
                            table_probe_free, table_remove_slot, table_t)

import random

_cnp.import_array()

__all__ = ["PoolExhaustedError", "PrefixCacheStats", "PagedBlocks"]


cdef extern from "Python.h":
    # Borrowed-reference access: no refcount traffic on the items being converted.
    PyObject** _paged_seq_items "PySequence_Fast_ITEMS"(object seq)
    Py_ssize_t _paged_seq_size "PySequence_Fast_GET_SIZE"(object seq)
    PyObject* _paged_tuple_item "PyTuple_GET_ITEM"(object tup, Py_ssize_t i)
    # Since Python 3.10 this calls __index__ on non-ints (never __int__): floats are refused.
    long long _paged_as_longlong "PyLong_AsLongLong"(PyObject* o) except? -1
    bint _paged_is_bool "PyBool_Check"(PyObject* o)


cdef extern from *:
    """
    /* MurmurHash3_x64_128 (Appleby's reference, public domain) written out so the digest of
       a block inlines into match/commit: murmurhash's hash128_x64 is an indirect call into
       another extension module that calls a non-inlined getblock per 16 bytes. Blocks are
       read in native byte order, as the reference does. */
    static inline uint64_t kvcache_rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
    static inline uint64_t kvcache_fmix64(uint64_t k) {
        k ^= k >> 33; k *= 0xff51afd7ed558ccdULL;
        k ^= k >> 33; k *= 0xc4ceb9fe1a85ec53ULL;
        k ^= k >> 33;
        return k;
    }
    static inline void kvcache_murmur3_128(const void* key, int len, uint32_t seed,
                                           uint64_t* out) {
        const uint8_t* data = (const uint8_t*)key;
        const uint8_t* tail;
        const int nblocks = len / 16;
        const uint64_t c1 = 0x87c37b91114253d5ULL, c2 = 0x4cf5ad432745937fULL;
        uint64_t h1 = seed, h2 = seed, k1, k2;
        int i;
        for (i = 0; i < nblocks; i++) {
            memcpy(&k1, data + 16 * i, 8);
            memcpy(&k2, data + 16 * i + 8, 8);
            k1 *= c1; k1 = kvcache_rotl64(k1, 31); k1 *= c2; h1 ^= k1;
            h1 = kvcache_rotl64(h1, 27); h1 += h2; h1 = h1 * 5 + 0x52dce729;
            k2 *= c2; k2 = kvcache_rotl64(k2, 33); k2 *= c1; h2 ^= k2;
            h2 = kvcache_rotl64(h2, 31); h2 += h1; h2 = h2 * 5 + 0x38495ab5;
        }
        tail = data + 16 * nblocks;
        k1 = 0;
        k2 = 0;
        switch (len & 15) {
        case 15: k2 ^= ((uint64_t)tail[14]) << 48; /* fall through */
        case 14: k2 ^= ((uint64_t)tail[13]) << 40; /* fall through */
        case 13: k2 ^= ((uint64_t)tail[12]) << 32; /* fall through */
        case 12: k2 ^= ((uint64_t)tail[11]) << 24; /* fall through */
        case 11: k2 ^= ((uint64_t)tail[10]) << 16; /* fall through */
        case 10: k2 ^= ((uint64_t)tail[9]) << 8;   /* fall through */
        case 9:  k2 ^= ((uint64_t)tail[8]);
                 k2 *= c2; k2 = kvcache_rotl64(k2, 33); k2 *= c1; h2 ^= k2;
                 /* fall through */
        case 8:  k1 ^= ((uint64_t)tail[7]) << 56;  /* fall through */
        case 7:  k1 ^= ((uint64_t)tail[6]) << 48;  /* fall through */
        case 6:  k1 ^= ((uint64_t)tail[5]) << 40;  /* fall through */
        case 5:  k1 ^= ((uint64_t)tail[4]) << 32;  /* fall through */
        case 4:  k1 ^= ((uint64_t)tail[3]) << 24;  /* fall through */
        case 3:  k1 ^= ((uint64_t)tail[2]) << 16;  /* fall through */
        case 2:  k1 ^= ((uint64_t)tail[1]) << 8;   /* fall through */
        case 1:  k1 ^= ((uint64_t)tail[0]);
                 k1 *= c1; k1 = kvcache_rotl64(k1, 31); k1 *= c2; h1 ^= k1;
        }
        h1 ^= (uint64_t)len; h2 ^= (uint64_t)len;
        h1 += h2; h2 += h1;
        h1 = kvcache_fmix64(h1); h2 = kvcache_fmix64(h2);
        h1 += h2; h2 += h1;
        out[0] = h1;
        out[1] = h2;
    }

    #ifdef Py_GIL_DISABLED
    #define KVCACHE_FREE_THREADED 1
    #else
    #define KVCACHE_FREE_THREADED 0
    #endif

    /* Convert items[i..n) while each is an exact int of one internal digit in [0, limit)
       (|v| < 2**30: every token id and block id in practice), reading the digit in place:
       no call, no user code. Return the index of the first item that needs more (n if
       none); the caller converts that one (and reports errors) the slow way. */
    /* `check` is a constant at each call: one-digit ints are below 2**30, so with a limit
       above that (token ids) the range test is compiled out. */
    static inline int kvcache_small_int(PyObject* o, long long limit, int check,
                                        int32_t* out) {
        long long v;
        if (!PyLong_CheckExact(o)) return 0;
    #if PY_VERSION_HEX >= 0x030C0000
        if (!PyUnstable_Long_IsCompact((PyLongObject*)o)) return 0;
        v = (long long)PyUnstable_Long_CompactValue((PyLongObject*)o);
        if (v < 0) return 0;
    #else
        {
            Py_ssize_t s = Py_SIZE(o);
            if ((size_t)s > 1) return 0;   /* negative or more than one digit */
            v = (long long)(((PyLongObject*)o)->ob_digit[0] & (digit)(0 - (digit)s));
        }
    #endif
        if (check && v >= limit) return 0;
        *out = (int32_t)v;
        return 1;
    }
    static inline Py_ssize_t kvcache_small_ints_impl(PyObject* const* items, Py_ssize_t i,
                                                     Py_ssize_t n, int32_t* out,
                                                     long long limit, int check) {
        /* The int objects of a long list are often cold: fetch them 16 items ahead, and
           the item pointers 128 ahead (once per 8). */
        for (; i + 24 <= n; i += 8) {
            int j;
            kv_prefetch(items + i + 128);
            for (j = 0; j < 8; j++) {
                kv_prefetch(items[i + j + 16]);
                if (!kvcache_small_int(items[i + j], limit, check, out + i + j)) return i + j;
            }
        }
        for (; i < n; i++) {
            if (!kvcache_small_int(items[i], limit, check, out + i)) return i;
        }
        return n;
    }
    /* Copy n int64 values into out as int32; return the index of the first outside
       [0, limit), or n. Prefetches 1 KiB ahead: a request's tokens are often cold, and
       the hardware prefetcher ramps up too slowly for a few KiB. */
    static Py_ssize_t kvcache_narrow_int64(const int64_t* v, Py_ssize_t n, int32_t* out,
                                           long long limit) {
        Py_ssize_t i, bad = n;
        int any = 0;
        for (i = 0; i < n; i++) {
            if ((i & 7) == 0) kv_prefetch(v + i + 128);
            any |= (unsigned long long)v[i] >= (unsigned long long)limit;
            out[i] = (int32_t)v[i];
        }
        if (any) {
            for (i = 0; i < n; i++) {
                if ((unsigned long long)v[i] >= (unsigned long long)limit) { bad = i; break; }
            }
        }
        return bad;
    }
    static Py_ssize_t kvcache_small_ints(PyObject* const* items, Py_ssize_t i, Py_ssize_t n,
                                         int32_t* out, long long limit) {
    #if defined(Py_LIMITED_API) || defined(PYPY_VERSION)
        (void)items; (void)n; (void)out; (void)limit;
        return i;
    #else
        if (limit > (1LL << 30)) return kvcache_small_ints_impl(items, i, n, out, limit, 0);
        return kvcache_small_ints_impl(items, i, n, out, limit, 1);
    #endif
    }
    """
    void _paged_murmur3_128 "kvcache_murmur3_128"(const void* key, int len, uint32_t seed,
                                                  uint64_t* out) noexcept nogil
    bint _PAGED_FREE_THREADED "KVCACHE_FREE_THREADED"
    Py_ssize_t _paged_narrow_int64 "kvcache_narrow_int64"(
        const int64_t* v, Py_ssize_t n, int32_t* out, long long limit) noexcept
    Py_ssize_t _paged_small_ints "kvcache_small_ints"(
        PyObject** items, Py_ssize_t i, Py_ssize_t n, int32_t* out, long long limit) noexcept

_cnp.import_array()

# Blocks per window of match()'s pipeline: hashing one window (~15 ns a block) covers
# about one DRAM latency of the previous window's prefetches; at most one window past
# the first miss is hashed for nothing.
cdef Py_ssize_t _PAGED_WINDOW = 8

import numpy as _paged_np
from operator import index as _paged_index
from collections.abc import Mapping as _PagedMapping, Set as _PagedSet
from collections import namedtuple as _paged_namedtuple


class PoolExhaustedError(RuntimeError):
    """Raised when a block pool has no free or evictable block left; nothing was changed."""


PrefixCacheStats = _paged_namedtuple(
    "PrefixCacheStats",
    ["queries", "hit_blocks", "hit_tokens", "committed", "evictions",
     "cached", "free", "evictable", "in_use", "num_blocks"],
    module="kvcache.llm",        # where pickle finds it
)

cdef int64_t _PAGED_TOKEN_LIMIT = 2147483648


def _paged_check_inline_murmur():
    """Return True if the inlined MurmurHash3_x64_128 equals murmurhash's on this platform."""
    cdef uint64_t a[2]
    cdef uint64_t b[2]
    cdef bytes data
    cdef uint32_t seed
    rnd = random.Random(2024)
    for n in list(range(200)) + [rnd.randrange(200, 5000) for _ in range(20)]:
        for seed in (0, 1, 0xFFFFFFFF, rnd.getrandbits(32)):
            data = rnd.randbytes(n)
            _paged_murmur3_128(<char*>data, <int>n, seed, a)
            hash128_x64(<char*>data, <int>n, seed, b)
            if a[0] != b[0] or a[1] != b[1]:
                return False
    return True


# The cimported hash128_x64 is the definition; the inlined copy is used only when the
# check above found it bit-identical here.
cdef bint _paged_inline_murmur = _paged_check_inline_murmur()

# Values of a call's arguments are converted into the caller's stack buffers when they fit
# (no allocation per call, and each call, reentrant or on another thread, has its own);
# longer ones go to a new array.
cdef enum:
    _PAGED_LOCAL_TOKENS = 2048
    _PAGED_LOCAL_IDS = 256


cdef inline int64_t* _paged_data(object arr) noexcept:
    return <int64_t*>_cnp.PyArray_DATA(<_cnp.ndarray>arr)


cdef inline object _paged_new(Py_ssize_t n, int typenum):
    cdef _cnp.npy_intp dim = n
    return _cnp.PyArray_EMPTY(1, &dim, typenum, 0)


ctypedef struct _paged_in_t:
    int32_t* v      # the values, int32 (token ids and block ids both fit)
    Py_ssize_t n


cdef int _paged_range_error(bint tokens, long long v, int64_t limit) except -1:
    if tokens:
        raise ValueError(f"token id {v} out of range [0, 2**31)")
    raise ValueError(f"block id {v} out of range [0, {limit})")


cdef object _paged_load(object obj, bint tokens, int64_t limit, int32_t* local,
                        Py_ssize_t cap, _paged_in_t* out):
    """Convert `obj` (1-d ints in [0, limit)) to int32 values at out.v; return their owner.

    `tokens` picks the error wording (token ids or block ids). The values land in `local`
    (`cap` items) when they fit, else in a new array the returned object keeps alive.
    Raises, before the caller changes anything: TypeError for anything but integers
    (floats and bools included), OverflowError beyond int64, ValueError out of range.
    A list of exact ints is read in place and runs no Python code; any other item is
    converted (with __index__) from a snapshot, so that code cannot change the items.
    """
    cdef Py_ssize_t i, n
    cdef int bad = 0
    cdef long long x, bad_val = 0
    cdef int32_t* dst
    cdef int64_t* v64
    cdef PyObject* p
    cdef tuple snap
    cdef bint seq = True
    owner = None
    what = "tokens" if tokens else "block ids"
    if (type(obj) is list or type(obj) is tuple) and not _PAGED_FREE_THREADED:
        pass  # the common case, read below without the checks for other types
    elif _cnp.PyArray_Check(obj):
        seq = False
        if _cnp.PyArray_NDIM(<_cnp.ndarray>obj) != 1:
            raise ValueError(f"{what} must be 1-d, got shape {obj.shape}")
        # Read in place only when native: a byte-swapped ('>i8' on little-endian) or
        # unaligned int64 array is converted by numpy first.
        if not (_cnp.PyArray_TYPE(<_cnp.ndarray>obj) == _cnp.NPY_INT64
                and _cnp.PyArray_IS_C_CONTIGUOUS(<_cnp.ndarray>obj)
                and _cnp.PyArray_ISBEHAVED_RO(<_cnp.ndarray>obj)):
            if obj.dtype.kind not in "iu":
                raise TypeError(f"{what} must hold integers, got dtype {obj.dtype}")
            if obj.dtype.kind == "u" and obj.size and obj.max() > 0x7FFFFFFFFFFFFFFF:
                raise ValueError(f"{what} out of range")
            obj = _paged_np.require(obj, _paged_np.int64, "CA")
        n = <Py_ssize_t>_cnp.PyArray_DIM(<_cnp.ndarray>obj, 0)
        v64 = _paged_data(obj)
        dst = local
        if n > cap:
            owner = _paged_new(n, _cnp.NPY_INT32)
            dst = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>owner)
        # Copied even from an int64 array: the caller must not see the values change
        # (another thread) between this check and its use of them.
        i = _paged_narrow_int64(v64, n, dst, limit)
        if i < n:
            bad = 1
            bad_val = v64[i]
    elif isinstance(obj, (str, bytes, bytearray, _PagedSet, _PagedMapping)):
        # A set or a dict iterates in no order that could match positions or a block table.
        raise TypeError(f"{what} must be a sequence of ints, not {type(obj).__name__}")
    elif type(obj) is not tuple:
        obj = tuple(obj)
    if seq:
        n = _paged_seq_size(obj)
        dst = local
        if n > cap:
            owner = _paged_new(n, _cnp.NPY_INT32)
            dst = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>owner)
        i = _paged_small_ints(_paged_seq_items(obj), 0, n, dst, limit)
        if i < n:
            # From here Python code may run (__index__ of numpy ints or user objects):
            # read a snapshot, which that code cannot change or free under us.
            snap = obj if type(obj) is tuple else tuple(obj)
            while i < n:
                p = _paged_tuple_item(snap, i)
                if _paged_is_bool(p) or isinstance(<object>p, _paged_np.bool_):
                    # numpy < 2.? gives np.bool_ an __index__: refuse it whatever the version
                    raise TypeError(f"{what} must be ints, not bool")
                x = _paged_as_longlong(p)
                if <unsigned long long>x >= <unsigned long long>limit and not bad:
                    bad = 1
                    bad_val = x
                dst[i] = <int32_t>x
                i += 1
                i = _paged_small_ints(_paged_seq_items(snap), i, n, dst, limit)
    if bad:
        _paged_range_error(tokens, bad_val, limit)
    out.v = dst
    out.n = n
    return owner


cdef Py_ssize_t _paged_int(object value, str what) except? -1:
    # A count or a block id: an int or numpy integer, never a bool or a float.
    if type(value) is not int:
        if isinstance(value, (bool, _paged_np.bool_)):
            raise TypeError(f"{what} must be an int, not bool")
        value = _paged_index(value)
    return value


ctypedef struct _paged_meta_t:
    uint64_t lo
    uint64_t hi
    uint64_t gen
    uint64_t parent_gen
    uint64_t mark
    int32_t parent
    int32_t refcount
    int32_t count
    uint8_t registered
    uint8_t pad[11]


ctypedef struct _paged_link_t:
    int32_t prev
    int32_t next


# The probe steps (see `probe` in _core.pxd); the table is the prefix table's int32 index.

ctypedef struct _paged_key_t:
    uint64_t lo
    uint64_t hi
    uint64_t pgen
    const _paged_meta_t* meta
    const int32_t* rows          # the pool's token rows, block_size per block
    const int32_t* toks          # the tokens of the block looked for
    Py_ssize_t block_size
    int32_t par


cdef int _paged_step_block(const void* table, uint64_t slot, const void* key) noexcept nogil:
    # A match is the whole block: digest, parent and its generation, and the tokens.
    cdef int32_t b = (<const int32_t*>table)[slot]
    cdef const _paged_key_t* q = <const _paged_key_t*>key
    cdef const _paged_meta_t* m
    if b == SLOT_EMPTY:
        return PROBE_EMPTY
    if b < 0:
        return PROBE_ON
    m = &q.meta[b]
    if (m.lo == q.lo and m.hi == q.hi and m.parent == q.par and m.parent_gen == q.pgen
            and memcmp(q.rows + <Py_ssize_t>b * q.block_size, q.toks,
                       4 * <size_t>q.block_size) == 0):
        return PROBE_HIT
    return PROBE_ON


cdef int _paged_step_id(const void* table, uint64_t slot, const void* key) noexcept nogil:
    # The slot of a given block (unregistering, the table check).
    cdef int32_t b = (<const int32_t*>table)[slot]
    if b == (<const int32_t*>key)[0]:
        return PROBE_HIT
    return PROBE_EMPTY if b == SLOT_EMPTY else PROBE_ON


@cython.final
cdef class PagedBlocks:
    """Manage block ids of a KV pool: O(1) alloc/free, refcounts, prefix table, LRU.

    Thread-safety: every public method runs inside a critical section on the
    instance (the GIL on regular builds), so concurrent calls are serialised.
    """
    cdef readonly int32_t num_blocks
    cdef readonly int32_t block_size
    cdef readonly bint prefix_enabled
    cdef readonly int digest_bits
    cdef readonly bytes salt
    cdef int32_t n_free, n_lru, lru_head, lru_tail, n_registered
    cdef int64_t n_queries, n_hit_blocks, n_committed, n_evictions
    cdef uint64_t mask_lo, mask_hi, stamp
    cdef _paged_meta_t* meta
    cdef int32_t* free_stack
    cdef _paged_link_t* lru
    cdef int32_t* tokens
    cdef table_t t
    cdef int32_t* plan
    cdef uint64_t* plan_dig
    cdef int32_t* plan_parent
    cdef uint64_t* plan_gen
    cdef int32_t* plan_pos
    cdef char* buf
    cdef Py_ssize_t buf_len
    # numpy arrays owning the memory behind the pointers above
    cdef object _arrays
    cdef object _buf

    def __cinit__(self, Py_ssize_t num_blocks, Py_ssize_t block_size):
        cdef Py_ssize_t i
        cdef char* raw
        if num_blocks < 1 or num_blocks > 2**30:
            raise ValueError("num_blocks must be in [1, 2**30]")
        if block_size < 1 or block_size > 2**20:
            raise ValueError("block_size must be in [1, 2**20]")
        self.num_blocks = <int32_t>num_blocks
        self.block_size = <int32_t>block_size
        self._arrays = []
        # 64 spare bytes to align the records on a cache line
        raw = <char*>self._alloc(num_blocks * sizeof(_paged_meta_t) + 64, _paged_np.uint8)
        self.meta = <_paged_meta_t*>(raw + (64 - (<size_t>raw & 63)) % 64)
        self.free_stack = <int32_t*>self._alloc(num_blocks, _paged_np.int32)
        self.lru = <_paged_link_t*>self._alloc(2 * num_blocks, _paged_np.int32)
        # First pop hands out block 0, then 1, ... (keeps tests and traces readable).
        for i in range(num_blocks):
            self.free_stack[i] = <int32_t>(num_blocks - 1 - i)
            self.lru[i].prev = -1
            self.lru[i].next = -1
        self.n_free = self.num_blocks
        self.lru_head = -1
        self.lru_tail = -1
        self.prefix_enabled = False
        self.salt = b""

    cdef void* _alloc(self, Py_ssize_t n, dtype) except NULL:
        arr = _paged_np.zeros(max(n, 1), dtype=dtype)
        self._arrays.append(arr)
        return <void*><Py_ssize_t>arr.ctypes.data

    def enable_prefix(self, salt=b"", int digest_bits=128):
        """Allocate the prefix table; `digest_bits` < 128 truncates digests (test hook)."""
        cdef Py_ssize_t cap, n = self.num_blocks, i
        cdef uint64_t mask_lo, mask_hi
        cdef entry_rec* ent
        if self.prefix_enabled:
            raise ValueError("this pool already has a PrefixCache attached")
        if not isinstance(salt, (bytes, bytearray, memoryview)):
            raise TypeError("salt must be bytes")
        if digest_bits < 0 or digest_bits > 128:
            raise ValueError("digest_bits must be in [0, 128]")
        salt = bytes(salt)
        if digest_bits >= 64:
            mask_lo = <uint64_t>0xFFFFFFFFFFFFFFFF
            mask_hi = (<uint64_t>0xFFFFFFFFFFFFFFFF) if digest_bits == 128 else \
                ((<uint64_t>1 << (digest_bits - 64)) - 1)
        else:
            mask_lo = ((<uint64_t>1 << digest_bits) - 1) if digest_bits > 0 else 0
            mask_hi = 0
        # Everything is allocated and initialised first, then installed in one step with no
        # Python code in between: two threads attaching at once (or a finalizer run by one of
        # the allocations) cannot both pass the check above and mix their arrays.
        cap = <Py_ssize_t>table_slots_for(n)
        tokens = _paged_np.zeros(n * self.block_size, dtype=_paged_np.int32)
        index_arr = _paged_np.full(cap, SLOT_EMPTY, dtype=_paged_np.int32)
        ent_arr = _paged_np.zeros(n * sizeof(entry_rec), dtype=_paged_np.uint8)
        plan = _paged_np.zeros(n, dtype=_paged_np.int32)
        plan_dig = _paged_np.zeros(2 * n, dtype=_paged_np.uint64)
        plan_parent = _paged_np.zeros(n, dtype=_paged_np.int32)
        plan_gen = _paged_np.zeros(n, dtype=_paged_np.uint64)
        plan_pos = _paged_np.zeros(n, dtype=_paged_np.int32)
        arrays = self._arrays + [tokens, index_arr, ent_arr, plan, plan_dig, plan_parent,
                                 plan_gen, plan_pos]
        ent = <entry_rec*>_cnp.PyArray_DATA(<_cnp.ndarray>ent_arr)
        for i in range(n):
            ent[i].prev = ENTRY_FREE
            ent[i].next = ENTRY_NONE
        # Hash input: parent digest (16 bytes) | block tokens (int32, native order, i.e.
        # little-endian on every platform the wheels target) | salt.
        buf = bytearray(16 + 4 * self.block_size + len(salt))
        memcpy(<char*>buf + 16 + 4 * self.block_size, <char*>salt, len(salt))
        with cython.critical_section(self):
            if self.prefix_enabled:
                raise ValueError("this pool already has a PrefixCache attached")
            self._arrays = arrays
            self.salt = salt
            self.digest_bits = digest_bits
            self.mask_lo = mask_lo
            self.mask_hi = mask_hi
            self.tokens = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>tokens)
            self.t.index = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>index_arr)
            self.t.mask = <uint64_t>(cap - 1)
            self.t.ent = ent
            self.t.capacity = n
            self.t.count = 0
            self.t.free_head = ENTRY_NONE   # block ids come from the pool's free stack instead
            self.t.seed = 0
            self.plan = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>plan)
            self.plan_dig = <uint64_t*>_cnp.PyArray_DATA(<_cnp.ndarray>plan_dig)
            self.plan_parent = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>plan_parent)
            self.plan_gen = <uint64_t*>_cnp.PyArray_DATA(<_cnp.ndarray>plan_gen)
            self.plan_pos = <int32_t*>_cnp.PyArray_DATA(<_cnp.ndarray>plan_pos)
            self._buf = buf
            self.buf = <char*>buf
            self.buf_len = len(buf)
            self.prefix_enabled = True

    # ---- C-level helpers; all assume the critical section is held ----

    cdef inline void _lru_unlink_locked(self, int32_t b) noexcept nogil:
        cdef int32_t p = self.lru[b].prev, q = self.lru[b].next
        if p >= 0:
            self.lru[p].next = q
        else:
            self.lru_head = q
        if q >= 0:
            self.lru[q].prev = p
        else:
            self.lru_tail = p
        self.lru[b].prev = -1
        self.lru[b].next = -1
        self.n_lru -= 1

    cdef inline void _lru_append_locked(self, int32_t b) noexcept nogil:
        self.lru[b].prev = self.lru_tail
        self.lru[b].next = -1
        if self.lru_tail >= 0:
            self.lru[self.lru_tail].next = b
        else:
            self.lru_head = b
        self.lru_tail = b
        self.n_lru += 1

    cdef inline void _pack_locked(self, const int32_t* toks) noexcept nogil:
        memcpy(self.buf + 16, toks, 4 * <size_t>self.block_size)

    cdef inline void _digest_locked(self, uint64_t plo, uint64_t phi,
                                    uint64_t* out) noexcept nogil:
        # Tokens must already be packed into buf by _pack_locked.
        memcpy(self.buf, &plo, 8)
        memcpy(self.buf + 8, &phi, 8)
        if _paged_inline_murmur:
            _paged_murmur3_128(self.buf, <int>self.buf_len, 0, out)
        else:
            hash128_x64(self.buf, <int>self.buf_len, 0, out)
        out[0] &= self.mask_lo
        out[1] &= self.mask_hi

    cdef inline void _digests_locked(self, const int32_t* toks, Py_ssize_t start,
                                     Py_ssize_t stop, uint64_t* plo,
                                     uint64_t* phi) noexcept nogil:
        # match(): the chained digests of blocks [start, stop) into plan_dig, each one's
        # index slot prefetched.
        cdef Py_ssize_t i
        cdef uint64_t d[2]
        for i in range(start, stop):
            self._pack_locked(toks + i * self.block_size)
            self._digest_locked(plo[0], phi[0], d)
            self.plan_dig[2 * i] = d[0]
            self.plan_dig[2 * i + 1] = d[1]
            plo[0] = d[0]
            phi[0] = d[1]
            kv_prefetch(&self.t.index[d[0] & self.t.mask])

    cdef inline void _prefetch_records_locked(self, Py_ssize_t start,
                                              Py_ssize_t stop) noexcept nogil:
        # match(): prefetch the record and token row of the block in each one's first slot.
        cdef Py_ssize_t i
        cdef int32_t b
        for i in range(start, stop):
            b = self.t.index[self.plan_dig[2 * i] & self.t.mask]
            if b >= 0:
                kv_prefetch(&self.meta[b])
                kv_prefetch(self.tokens + <Py_ssize_t>b * self.block_size)

    cdef int32_t _find_locked(self, uint64_t lo, uint64_t hi, int32_t par,
                              uint64_t pgen, const int32_t* toks) noexcept nogil:
        cdef _paged_key_t q
        cdef bint hit
        cdef Py_ssize_t slot
        q.lo = lo
        q.hi = hi
        q.par = par
        q.pgen = pgen
        q.meta = self.meta
        q.rows = self.tokens
        q.toks = toks
        q.block_size = self.block_size
        slot = probe(self.t.index, lo, self.t.mask, &q, _paged_step_block, &hit)
        return self.t.index[slot] if hit else -1

    cdef void _register_locked(self, int32_t b, uint64_t lo, uint64_t hi, int32_t par,
                               uint64_t pgen, const int32_t* toks) noexcept nogil:
        cdef Py_ssize_t slot = table_probe_free(&self.t, lo)
        self.t.index[slot] = b
        self.t.ent[b].hash = lo
        self.t.ent[b].prev = ENTRY_NONE
        self.t.count += 1
        self.meta[b].lo = lo
        self.meta[b].hi = hi
        self.meta[b].parent = par
        self.meta[b].parent_gen = pgen
        memcpy(self.tokens + <Py_ssize_t>b * self.block_size, toks, 4 * <size_t>self.block_size)
        self.meta[b].registered = 1
        self.n_registered += 1

    cdef void _unregister_locked(self, int32_t b) noexcept nogil:
        # The probe starts from meta[b].lo rather than ent[b].hash (table_slot_of): the
        # record is loaded already, the entry would be one more cache miss.
        cdef bint hit
        cdef Py_ssize_t slot = probe(self.t.index, self.meta[b].lo, self.t.mask, &b,
                                     _paged_step_id, &hit)
        if hit:                           # always, unless the table is corrupt (see _check)
            table_remove_slot(&self.t, slot)
        self.t.ent[b].prev = ENTRY_FREE
        self.t.count -= 1
        self.meta[b].registered = 0
        self.meta[b].gen += 1
        self.n_registered -= 1

    cdef void _take_locked(self, Py_ssize_t n, int64_t* out) noexcept nogil:
        # Caller checked n <= n_free + n_lru. Free blocks first; evict only when needed,
        # least recently used first. The victims are listed from the dense LRU links, their
        # records then their index slots prefetched, before any is unlinked: their cache
        # misses overlap instead of following one another.
        cdef Py_ssize_t i, nf = min(n, <Py_ssize_t>self.n_free)
        cdef int32_t b
        for i in range(nf):
            self.n_free -= 1
            b = self.free_stack[self.n_free]
            self.meta[b].refcount = 1
            out[i] = b
        b = self.lru_head
        for i in range(nf, n):
            out[i] = b
            kv_prefetch(&self.meta[b])
            b = self.lru[b].next
        for i in range(nf, n):
            kv_prefetch(&self.t.index[self.meta[out[i]].lo & self.t.mask])
        for i in range(nf, n):
            b = <int32_t>out[i]
            self._lru_unlink_locked(b)
            self._unregister_locked(b)
            self.n_evictions += 1
            self.meta[b].refcount = 1

    cdef inline void _decref_locked(self, int32_t b) noexcept nogil:
        self.meta[b].refcount -= 1
        if self.meta[b].refcount == 0:
            if self.meta[b].registered:
                self._lru_append_locked(b)
            else:
                self.free_stack[self.n_free] = b
                self.n_free += 1

    cdef int _check_held_locked(self, const int32_t* ids, Py_ssize_t n) except -1:
        # Each id must be referenced at least as many times as it appears in `ids`.
        cdef Py_ssize_t i
        cdef int32_t b
        self.stamp += 1
        for i in range(n):
            b = ids[i]
            if self.meta[b].mark != self.stamp:
                self.meta[b].mark = self.stamp
                self.meta[b].count = 0
            self.meta[b].count += 1
            if self.meta[b].count > self.meta[b].refcount:
                raise ValueError(
                    f"block {b} is not referenced" if self.meta[b].refcount == 0 else
                    f"block {b} appears {self.meta[b].count} times but has only "
                    f"{self.meta[b].refcount} reference(s)")
        return 0

    cdef int _require_prefix(self) except -1:
        if not self.prefix_enabled:
            raise ValueError("no PrefixCache is attached to this pool")
        return 0

    # ---- public API ----

    cdef int _exhausted(self, Py_ssize_t n) except -1:
        raise PoolExhaustedError(
            f"block pool exhausted: {n} block(s) requested, {self.n_free} free and "
            f"{self.n_lru} evictable of {self.num_blocks}; the rest are referenced")

    def allocate(self, n):
        """Return `n` block ids with refcount 1, evicting LRU free cached blocks if needed."""
        cdef Py_ssize_t count = _paged_int(n, "the number of blocks")
        cdef int64_t* out
        if count < 0:
            raise ValueError("cannot allocate a negative number of blocks")
        # Checked before the result is allocated (a request for 10**12 blocks is refused, not
        # a MemoryError), and again after: the allocation may have let another thread in.
        if count > <Py_ssize_t>self.n_free + self.n_lru:
            self._exhausted(count)
        res = _paged_new(count, _cnp.NPY_INT64)
        out = _paged_data(res)
        with cython.critical_section(self):
            if count > <Py_ssize_t>self.n_free + self.n_lru:
                self._exhausted(count)
            self._take_locked(count, out)
        return res

    def release(self, ids):
        """Drop one reference per id (last to first, so a chain's tail is evicted first)."""
        cdef int32_t local[_PAGED_LOCAL_IDS]
        cdef _paged_in_t a
        cdef Py_ssize_t i
        keep = _paged_load(ids, False, self.num_blocks, local, _PAGED_LOCAL_IDS, &a)
        with cython.critical_section(self):
            self._check_held_locked(a.v, a.n)
            for i in range(a.n - 1, -1, -1):
                self._decref_locked(a.v[i])

    def incref(self, ids):
        """Take one more reference on each (already referenced) block id."""
        cdef int32_t local[_PAGED_LOCAL_IDS]
        cdef _paged_in_t a
        cdef Py_ssize_t i, n
        cdef int32_t* v
        keep = _paged_load(ids, False, self.num_blocks, local, _PAGED_LOCAL_IDS, &a)
        v = a.v
        n = a.n
        with cython.critical_section(self):
            for i in range(n):
                if self.meta[v[i]].refcount <= 0:
                    raise ValueError(f"block {v[i]} is not referenced; use match() to reuse a "
                                     "cached block")
            for i in range(n):
                self.meta[v[i]].refcount += 1

    def match(self, tokens):
        """Reference the longest cached run of whole blocks prefixing `tokens`.

        Return `(n_cached_tokens, block_ids)`.
        """
        cdef int32_t local[_PAGED_LOCAL_TOKENS]
        cdef int64_t idlocal[_PAGED_LOCAL_IDS]
        cdef _paged_in_t a
        cdef int32_t* t
        cdef int64_t* out
        cdef uint64_t* dig
        cdef Py_ssize_t nfull, i, k = 0, start, end, nxt
        cdef int32_t par = -1, b
        cdef uint64_t pgen = 0
        cdef uint64_t d[2]
        cdef uint64_t plo = 0, phi = 0
        self._require_prefix()
        keep = _paged_load(tokens, True, _PAGED_TOKEN_LIMIT, local, _PAGED_LOCAL_TOKENS, &a)
        t = a.v
        nfull = min(a.n // self.block_size, <Py_ssize_t>self.num_blocks)
        # The matched ids go to this call's own buffer, and the result array is made after
        # the critical section: an allocation can run a finalizer that calls match() again.
        out = idlocal
        if nfull > _PAGED_LOCAL_IDS:
            ids_owner = _paged_new(nfull, _cnp.NPY_INT64)
            out = _paged_data(ids_owner)
        with cython.critical_section(self):
            # A digest depends on the tokens only, so the blocks go by windows, in a
            # pipeline: hash window w+1 (prefetching its index slots) while the records of
            # window w, prefetched from its slots, arrive; then look up window w, then read
            # window w+1's slots (arrived meanwhile) and prefetch its records. The lookups
            # wait on no cache miss of their own, the digests cover the latency.
            dig = self.plan_dig
            end = min(<Py_ssize_t>_PAGED_WINDOW, nfull)
            self._digests_locked(t, 0, end, &plo, &phi)
            self._prefetch_records_locked(0, end)
            start = 0
            while start < nfull:
                nxt = min(end + _PAGED_WINDOW, nfull)
                self._digests_locked(t, end, nxt, &plo, &phi)
                for i in range(start, end):
                    b = self._find_locked(dig[2 * i], dig[2 * i + 1], par, pgen,
                                          t + i * self.block_size)
                    if b < 0:
                        break
                    out[k] = b
                    k += 1
                    par = b
                    pgen = self.meta[b].gen
                if k < end:
                    break
                self._prefetch_records_locked(end, nxt)
                start = end
                end = nxt
            for i in range(k):
                b = <int32_t>out[i]
                if self.meta[b].refcount == 0:
                    self._lru_unlink_locked(b)
                self.meta[b].refcount += 1
            self.n_queries += 1
            self.n_hit_blocks += k
        try:
            res = _paged_new(k, _cnp.NPY_INT64)
        except BaseException:
            with cython.critical_section(self):
                for i in range(k - 1, -1, -1):
                    self._decref_locked(<int32_t>out[i])
            raise
        memcpy(_paged_data(res), out, k * sizeof(int64_t))
        return k * self.block_size, res

    def commit(self, tokens, ids):
        """Register every full block of `tokens` held in `ids` (the request's block table).

        Return the number of blocks newly added to the table; a block whose content is
        already cached under another id stays private and is freed on release.
        """
        cdef int32_t tlocal[_PAGED_LOCAL_TOKENS]
        cdef int32_t vlocal[_PAGED_LOCAL_IDS]
        cdef _paged_in_t ta, va
        cdef int32_t* t
        cdef int32_t* v
        cdef Py_ssize_t nfull, i, n_plan = 0, n_new
        cdef int32_t par = -1, b, canon
        cdef uint64_t pgen = 0, plo = 0, phi = 0
        cdef uint64_t d[2]
        cdef const int32_t* tb
        self._require_prefix()
        tkeep = _paged_load(tokens, True, _PAGED_TOKEN_LIMIT, tlocal, _PAGED_LOCAL_TOKENS, &ta)
        vkeep = _paged_load(ids, False, self.num_blocks, vlocal, _PAGED_LOCAL_IDS, &va)
        t = ta.v
        v = va.v
        nfull = ta.n // self.block_size
        if va.n < nfull:
            raise ValueError(f"{nfull} full block(s) of tokens but only {va.n} "
                             "block id(s)")
        with cython.critical_section(self):
            for i in range(nfull):
                if self.meta[v[i]].refcount <= 0:
                    raise ValueError(f"block {v[i]} is not referenced; commit only blocks you hold")
            # Pass 1 decides everything and raises on bad input; pass 2 only writes.
            self.stamp += 1
            for i in range(nfull):
                b = v[i]
                tb = t + i * self.block_size
                if self.meta[b].registered:
                    if memcmp(self.tokens + <Py_ssize_t>b * self.block_size, tb,
                              4 * <size_t>self.block_size) != 0:
                        raise ValueError(f"block {b} is cached for other tokens than position {i}")
                    if self.meta[b].parent == par and self.meta[b].parent_gen == pgen:
                        # Its stored digest was computed from this very parent chain and
                        # these tokens when it was committed: both confirmed, reuse it.
                        d[0] = self.meta[b].lo
                        d[1] = self.meta[b].hi
                        canon = b
                    else:
                        # Committed under another parent holding the same prefix: a private
                        # duplicate's canonical block that has since been evicted, say. The
                        # whole-prefix digest tells whether the content is the same.
                        self._pack_locked(tb)
                        self._digest_locked(plo, phi, d)
                        if d[0] != self.meta[b].lo or d[1] != self.meta[b].hi:
                            raise ValueError(
                                f"block {b} is cached for other tokens before position {i}")
                        canon = self._find_locked(d[0], d[1], par, pgen, tb)
                        if canon < 0:
                            # Nothing under this chain holds it: re-link b here, so the
                            # prefix committed now stays reachable through it.
                            if self.meta[b].mark == self.stamp:
                                raise ValueError(f"block {b} appears twice in the block table")
                            self.meta[b].mark = self.stamp
                            self.plan[n_plan] = b
                            self.plan_pos[n_plan] = -1
                            self.plan_parent[n_plan] = par
                            self.plan_gen[n_plan] = pgen
                            n_plan += 1
                            canon = b
                else:
                    self._pack_locked(tb)
                    self._digest_locked(plo, phi, d)
                    canon = self._find_locked(d[0], d[1], par, pgen, tb)
                    if canon < 0:
                        if self.meta[b].mark == self.stamp:
                            raise ValueError(f"block {b} appears twice in the block table")
                        self.meta[b].mark = self.stamp
                        self.plan[n_plan] = b
                        self.plan_pos[n_plan] = <int32_t>i
                        self.plan_dig[2 * n_plan] = d[0]
                        self.plan_dig[2 * n_plan + 1] = d[1]
                        self.plan_parent[n_plan] = par
                        self.plan_gen[n_plan] = pgen
                        n_plan += 1
                        canon = b
                par = canon
                pgen = self.meta[canon].gen
                plo = d[0]
                phi = d[1]
            n_new = 0
            for i in range(n_plan):
                if self.plan_pos[i] < 0:
                    # A re-link keeps the digest and the gen: b's children stay valid.
                    self.meta[self.plan[i]].parent = self.plan_parent[i]
                    self.meta[self.plan[i]].parent_gen = self.plan_gen[i]
                    continue
                self._register_locked(self.plan[i], self.plan_dig[2 * i], self.plan_dig[2 * i + 1],
                                      self.plan_parent[i], self.plan_gen[i],
                                      t + <Py_ssize_t>self.plan_pos[i] * self.block_size)
                n_new += 1
            self.n_committed += n_new
        return n_new

    def clear(self):
        """Evict every free cached block (referenced blocks stay cached)."""
        cdef int32_t b
        with cython.critical_section(self):
            while self.lru_head >= 0:
                b = self.lru_head
                self._lru_unlink_locked(b)
                self._unregister_locked(b)
                self.free_stack[self.n_free] = b
                self.n_free += 1
                self.n_evictions += 1

    def digests(self, tokens):
        """Return the chained digest (16 bytes) of every full block of `tokens`."""
        cdef int32_t local[_PAGED_LOCAL_TOKENS]
        cdef _paged_in_t a
        cdef Py_ssize_t i
        cdef uint64_t d[2]
        cdef uint64_t plo = 0, phi = 0
        self._require_prefix()
        keep = _paged_load(tokens, True, _PAGED_TOKEN_LIMIT, local, _PAGED_LOCAL_TOKENS, &a)
        cdef Py_ssize_t nfull = a.n // self.block_size
        # Digests go to an array of this call's, the bytes objects are made after: the
        # critical section holds no allocation (self.buf is shared scratch).
        digs = _paged_new(2 * nfull, _cnp.NPY_UINT64)
        cdef uint64_t* dv = <uint64_t*>_cnp.PyArray_DATA(<_cnp.ndarray>digs)
        with cython.critical_section(self):
            for i in range(nfull):
                self._pack_locked(a.v + i * self.block_size)
                self._digest_locked(plo, phi, dv + 2 * i)
                plo = dv[2 * i]
                phi = dv[2 * i + 1]
        raw = digs.tobytes()
        return [raw[16 * i:16 * i + 16] for i in range(nfull)]

    cdef int32_t _block_id(self, object b) except -1:
        cdef Py_ssize_t v = _paged_int(b, "a block id")
        if v < 0 or v >= self.num_blocks:
            raise ValueError(f"block id {v} out of range [0, {self.num_blocks})")
        return <int32_t>v

    def refcount_of(self, b):
        """Return the reference count of block `b`."""
        return self.meta[self._block_id(b)].refcount

    def is_cached(self, b):
        """Return True if block `b` is in the prefix table."""
        return bool(self.meta[self._block_id(b)].registered)

    def refcounts(self):
        """Return a copy of all reference counts."""
        cdef int32_t[::1] out
        cdef Py_ssize_t i
        res = _paged_np.empty(self.num_blocks, dtype=_paged_np.int32)
        out = res
        with cython.critical_section(self):
            for i in range(self.num_blocks):
                out[i] = self.meta[i].refcount
        return res

    def lru_order(self):
        """Return the free cached blocks, next to be evicted first."""
        cdef int32_t[::1] out
        cdef int32_t b
        cdef Py_ssize_t k = 0
        res = _paged_np.empty(self.num_blocks, dtype=_paged_np.int32)
        out = res
        with cython.critical_section(self):
            b = self.lru_head
            while b >= 0:
                out[k] = b
                k += 1
                b = self.lru[b].next
        return res[:k].copy()

    def free_blocks(self):
        """Return the uncached free blocks, next to be handed out last."""
        cdef int32_t[::1] out
        cdef Py_ssize_t i, k = 0
        res = _paged_np.empty(self.num_blocks, dtype=_paged_np.int32)
        out = res
        with cython.critical_section(self):
            k = self.n_free
            for i in range(k):
                out[i] = self.free_stack[i]
        return res[:k].copy()

    @property
    def num_free(self):
        """Blocks that hold nothing."""
        return self.n_free

    @property
    def num_evictable(self):
        """Free blocks that are still cached (evicted in LRU order when needed)."""
        return self.n_lru

    @property
    def num_cached(self):
        """Blocks in the prefix table, referenced or not."""
        return self.n_registered

    def stats(self):
        """Return a PrefixCacheStats snapshot."""
        cdef int64_t q, hits, committed, evictions
        cdef int32_t registered, nfree, nlru
        with cython.critical_section(self):
            q, hits, committed, evictions = (self.n_queries, self.n_hit_blocks, self.n_committed,
                                             self.n_evictions)
            registered, nfree, nlru = self.n_registered, self.n_free, self.n_lru
        return PrefixCacheStats(q, hits, hits * self.block_size, committed, evictions,
                                registered, nfree, nlru, self.num_blocks - nfree - nlru,
                                self.num_blocks)

    def _check(self):
        """Verify refcounts, the free stack, the LRU list and the prefix table (for tests)."""
        cdef Py_ssize_t i, n = self.num_blocks, k, nzero = 0, nreg = 0, used = 0
        cdef int32_t b, prev
        cdef bint hit
        seen = _paged_np.zeros(n, dtype=_paged_np.uint8)
        cdef uint8_t[::1] mark = seen
        with cython.critical_section(self):
            for i in range(n):
                if self.meta[i].refcount < 0:
                    raise AssertionError(f"block {i} has refcount {self.meta[i].refcount}")
                nzero += self.meta[i].refcount == 0
                nreg += self.meta[i].registered != 0
            if not 0 <= self.n_free <= n or not 0 <= self.n_lru <= n:
                raise AssertionError("free or evictable counts out of range")
            for i in range(self.n_free):
                b = self.free_stack[i]
                if b < 0 or b >= n or mark[b]:
                    raise AssertionError(f"free stack slot {i} holds block {b} twice or out of range")
                mark[b] = 1
                if self.meta[b].refcount != 0 or self.meta[b].registered:
                    raise AssertionError(f"free block {b} is referenced or cached")
            k = 0
            prev = -1
            b = self.lru_head
            while b >= 0:
                k += 1
                if k > n or mark[b] or self.lru[b].prev != prev:
                    raise AssertionError("the LRU list is corrupt")
                mark[b] = 1
                if self.meta[b].refcount != 0 or not self.meta[b].registered:
                    raise AssertionError(f"evictable block {b} is referenced or not cached")
                prev = b
                b = self.lru[b].next
            if k != self.n_lru or prev != self.lru_tail:
                raise AssertionError("the LRU list does not match its count or tail")
            if nzero != self.n_free + self.n_lru:
                raise AssertionError(f"{nzero} unreferenced blocks, but {self.n_free} free and "
                                     f"{self.n_lru} evictable")
            if nreg != self.n_registered:
                raise AssertionError("the cached count is wrong")
            if not self.prefix_enabled:
                return
            if self.t.count != nreg:
                raise AssertionError("the prefix table count is wrong")
            for i in range(<Py_ssize_t>self.t.mask + 1):
                b = self.t.index[i]
                if b != SLOT_EMPTY:
                    used += 1
                    if b < 0 or b >= n or not self.meta[b].registered:
                        raise AssertionError(f"slot {i} points to uncached block {b}")
            if used != nreg:
                raise AssertionError("the prefix table slots do not match the cached blocks")
            for i in range(n):
                if not self.meta[i].registered:
                    if self.t.ent[i].prev != ENTRY_FREE:
                        raise AssertionError(f"uncached block {i} is marked live in the table")
                    continue
                if self.t.ent[i].hash != self.meta[i].lo:
                    raise AssertionError(f"block {i} has a stale table hash")
                b = <int32_t>i
                probe(self.t.index, self.meta[i].lo, self.t.mask, &b, _paged_step_id, &hit)
                if not hit:
                    raise AssertionError(f"cached block {i} is not reachable in the table")
