# Paged KV-cache block manager: block ids, reference counts, the LRU of free cached
# blocks and the prefix table keyed by chained 128-bit digests.
#
# Included at the end of _core.pyx (`include "_paged.pxi"`), so it shares the module's
# directives (boundscheck/wraparound off): every index that comes from Python is
# checked in the `_paged_*` conversion helpers or at the top of each method, before
# any state changes.
#
# Layout (preshed style: flat C arrays, a thin class around them). Per block b, one
# 64-byte, cache-line aligned record meta[b] holds what a lookup or an LRU move needs
# beyond the table (one cache miss per block rather than one per field: a 100k-block
# pool does not fit in cache):
#   refcount           references held by requests
#   lru_prev/lru_next  doubly linked LRU of blocks that are cached AND free
#   registered         1 while b is in the prefix table
#   gen                bumped every time b leaves the table (see below)
#   hi                 the high 64 bits of the block's digest (the low half is the table hash)
#   parent, parent_gen the block it was committed after, and that block's gen
#   mark, count        scratch for validating a call's arguments
# Beside it: free_stack[..] (int32, blocks that hold nothing, LIFO, top = n_free - 1)
# and tokens[b*bs ..] (int32, the block's token ids, the ground truth of a match).
# The prefix table is the engine's `table_t` (_core.pxd): open addressing with linear
# probing over an int32 index, entry number = block id, `ent[b].hash` = the low 64 bits
# of the digest, backward-shift deletion (table_probe_free / table_slot_of /
# table_remove_slot), at most half full since it has two slots per block. The
# lookup is ours: the engine's compares Python keys, a block compares the high digest
# half, the parent and the tokens. `ent[b].prev` is ENTRY_FREE while b is not in the
# table; the LRU links stay in meta[b] with the rest.
#
# Why a match never trusts the digest: a candidate is accepted only when its stored
# tokens equal the query's AND its stored parent is the block just matched for the
# previous position with that block's current generation. By induction the whole
# prefix is confirmed token for token, whatever the digest width (the test hook
# `digest_bits` truncates digests to force collisions). The generation makes a
# block that was evicted and reused for other tokens unusable as a parent for
# the children it had before.
#
# Reentrancy: nothing here calls user Python code; inputs are converted to numpy
# arrays before the critical section, and errors are raised before any mutation.

cimport cython
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcmp, memcpy
from murmurhash.mrmr cimport hash128_x64
cimport numpy as _cnp
from cpython.ref cimport PyObject


cdef extern from "Python.h":
    # Borrowed-reference access: no refcount traffic on the items being converted.
    PyObject* _paged_list_item "PyList_GET_ITEM"(object lst, Py_ssize_t i)
    PyObject* _paged_tuple_item "PyTuple_GET_ITEM"(object tup, Py_ssize_t i)
    # Since Python 3.10 this calls __index__ on non-ints (never __int__): floats are refused.
    long long _paged_as_longlong "PyLong_AsLongLong"(PyObject* o) except? -1
    bint _paged_is_exact_int "PyLong_CheckExact"(PyObject* o)


cdef extern from *:
    """
    #if defined(__GNUC__) || defined(__clang__)
    #define KVCACHE_PREFETCH(p) __builtin_prefetch(p)
    #else
    #define KVCACHE_PREFETCH(p) ((void)0)
    #endif
    """
    void _paged_prefetch "KVCACHE_PREFETCH"(const void* p) noexcept nogil

_cnp.import_array()

# Blocks hashed ahead of the lookups in match(): enough to overlap their cache misses,
# few enough that a miss early in a long prompt wastes little hashing.
cdef Py_ssize_t _PAGED_WINDOW = 16

import numpy as _paged_np
from collections import namedtuple as _paged_namedtuple


class PoolExhaustedError(RuntimeError):
    """Raised when a block pool has no free or evictable block left; nothing was changed."""


PrefixCacheStats = _paged_namedtuple(
    "PrefixCacheStats",
    ["queries", "hit_blocks", "hit_tokens", "committed", "evictions",
     "cached", "free", "evictable", "in_use", "num_blocks"],
)

cdef int64_t _PAGED_MAX_TOKEN = 2147483647


cdef inline int64_t* _paged_data(object arr) noexcept:
    return <int64_t*>_cnp.PyArray_DATA(<_cnp.ndarray>arr)


cdef inline Py_ssize_t _paged_len(object arr) noexcept:
    return <Py_ssize_t>_cnp.PyArray_DIM(<_cnp.ndarray>arr, 0)


cdef inline object _paged_new(Py_ssize_t n, int typenum):
    cdef _cnp.npy_intp dim = n
    return _cnp.PyArray_EMPTY(1, &dim, typenum, 0)


cdef inline int64_t _paged_item_int64(PyObject* p) except? -1:
    # Exact ints take Cython's inlined compact-int path; anything else goes through
    # PyLong_AsLongLong, which uses __index__ (floats are refused, numpy ints accepted).
    cdef object x
    if _paged_is_exact_int(p):
        x = <object>p
        return <int64_t>x
    return _paged_as_longlong(p)


cdef object _paged_int64(object obj, str what):
    """Return `obj` (1-d ints) as a contiguous int64 array; never truncates floats."""
    cdef Py_ssize_t i, n
    cdef int64_t* v
    cdef list lst
    cdef tuple tup
    if _cnp.PyArray_Check(obj):
        if _cnp.PyArray_NDIM(<_cnp.ndarray>obj) != 1:
            raise ValueError(f"{what} must be 1-d, got shape {obj.shape}")
        if (_cnp.PyArray_TYPE(<_cnp.ndarray>obj) == _cnp.NPY_INT64
                and _cnp.PyArray_IS_C_CONTIGUOUS(<_cnp.ndarray>obj)):
            return obj
        if obj.dtype.kind not in "iu":
            raise TypeError(f"{what} must hold integers, got dtype {obj.dtype}")
        if obj.dtype.kind == "u" and obj.size and obj.max() > 0x7FFFFFFFFFFFFFFF:
            raise ValueError(f"{what} out of range")
        return _paged_np.ascontiguousarray(obj, dtype=_paged_np.int64)
    if isinstance(obj, (str, bytes, bytearray)):
        raise TypeError(f"{what} must be a sequence of ints, not {type(obj).__name__}")
    # Lists and tuples are read item by item in C: several times faster than numpy's
    # generic conversion for the short sequences of a request.
    if type(obj) is tuple:
        tup = <tuple>obj
        n = len(tup)
        arr = _paged_new(n, _cnp.NPY_INT64)
        v = _paged_data(arr)
        for i in range(n):
            v[i] = _paged_item_int64(_paged_tuple_item(tup, i))
        return arr
    lst = obj if type(obj) is list else list(obj)
    n = len(lst)
    arr = _paged_new(n, _cnp.NPY_INT64)
    v = _paged_data(arr)
    for i in range(n):
        v[i] = _paged_item_int64(_paged_list_item(lst, i))
    return arr


cdef object _paged_ids(object ids, int32_t num_blocks):
    """Return `ids` as a contiguous int64 array of valid block ids, or raise."""
    cdef int64_t* v
    cdef Py_ssize_t i
    arr = _paged_int64(ids, "block ids")
    v = _paged_data(arr)
    for i in range(_paged_len(arr)):
        if v[i] < 0 or v[i] >= num_blocks:
            raise ValueError(f"block id {v[i]} out of range [0, {num_blocks})")
    return arr


cdef object _paged_tokens(object tokens):
    """Return `tokens` as a contiguous int64 array of token ids in [0, 2**31), or raise."""
    cdef int64_t* v
    cdef Py_ssize_t i
    arr = _paged_int64(tokens, "tokens")
    v = _paged_data(arr)
    for i in range(_paged_len(arr)):
        if v[i] < 0 or v[i] > _PAGED_MAX_TOKEN:
            raise ValueError(f"token id {v[i]} out of range [0, 2**31)")
    return arr


ctypedef struct _paged_meta_t:
    uint64_t hi
    uint64_t gen
    uint64_t parent_gen
    uint64_t mark
    int32_t parent
    int32_t refcount
    int32_t lru_prev
    int32_t lru_next
    int32_t count
    uint8_t registered
    uint8_t pad[11]


@cython.final
cdef class _PagedBlocks:
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
    cdef int32_t* tokens
    cdef table_t t
    cdef int32_t* plan
    cdef uint64_t* plan_dig
    cdef int32_t* plan_parent
    cdef uint64_t* plan_gen
    cdef int32_t* plan_pos
    cdef int64_t* plan_ids
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
        # First pop hands out block 0, then 1, ... (keeps tests and traces readable).
        for i in range(num_blocks):
            self.free_stack[i] = <int32_t>(num_blocks - 1 - i)
            self.meta[i].lru_prev = -1
            self.meta[i].lru_next = -1
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
        if self.prefix_enabled:
            raise ValueError("this pool already has a PrefixCache attached")
        if not isinstance(salt, (bytes, bytearray, memoryview)):
            raise TypeError("salt must be bytes")
        if digest_bits < 0 or digest_bits > 128:
            raise ValueError("digest_bits must be in [0, 128]")
        self.salt = bytes(salt)
        self.digest_bits = digest_bits
        if digest_bits >= 64:
            self.mask_lo = <uint64_t>0xFFFFFFFFFFFFFFFF
            self.mask_hi = (<uint64_t>0xFFFFFFFFFFFFFFFF) if digest_bits == 128 else \
                ((<uint64_t>1 << (digest_bits - 64)) - 1)
        else:
            self.mask_lo = ((<uint64_t>1 << digest_bits) - 1) if digest_bits > 0 else 0
            self.mask_hi = 0
        cap = <Py_ssize_t>_slots_for(n)
        self.tokens = <int32_t*>self._alloc(n * self.block_size, _paged_np.int32)
        self.t.index = <int32_t*>self._alloc(cap, _paged_np.int32)
        self.t.mask = <uint64_t>(cap - 1)
        self.t.ent = <entry_rec*>self._alloc(n * sizeof(entry_rec), _paged_np.uint8)
        self.t.capacity = n
        self.t.count = 0
        self.t.free_head = ENTRY_NONE   # block ids come from the pool's free stack instead
        self.t.seed = 0
        self.plan = <int32_t*>self._alloc(n, _paged_np.int32)
        self.plan_dig = <uint64_t*>self._alloc(2 * n, _paged_np.uint64)
        self.plan_parent = <int32_t*>self._alloc(n, _paged_np.int32)
        self.plan_gen = <uint64_t*>self._alloc(n, _paged_np.uint64)
        self.plan_pos = <int32_t*>self._alloc(n, _paged_np.int32)
        self.plan_ids = <int64_t*>self._alloc(n, _paged_np.int64)
        for i in range(cap):
            self.t.index[i] = SLOT_EMPTY
        for i in range(n):
            self.t.ent[i].prev = ENTRY_FREE
            self.t.ent[i].next = ENTRY_NONE
        # Hash input: parent digest (16 bytes) | block tokens (int32, native order, i.e.
        # little-endian on every platform the wheels target) | salt.
        self.buf_len = 16 + 4 * self.block_size + len(self.salt)
        self._buf = bytearray(self.buf_len)
        self.buf = <char*>self._buf
        memcpy(self.buf + 16 + 4 * self.block_size, <char*>self.salt, len(self.salt))
        self.prefix_enabled = True

    # ---- C-level helpers; all assume the critical section is held ----

    cdef inline void _lru_unlink_locked(self, int32_t b) noexcept nogil:
        cdef int32_t p = self.meta[b].lru_prev, q = self.meta[b].lru_next
        if p >= 0:
            self.meta[p].lru_next = q
        else:
            self.lru_head = q
        if q >= 0:
            self.meta[q].lru_prev = p
        else:
            self.lru_tail = p
        self.meta[b].lru_prev = -1
        self.meta[b].lru_next = -1
        self.n_lru -= 1

    cdef inline void _lru_append_locked(self, int32_t b) noexcept nogil:
        self.meta[b].lru_prev = self.lru_tail
        self.meta[b].lru_next = -1
        if self.lru_tail >= 0:
            self.meta[self.lru_tail].lru_next = b
        else:
            self.lru_head = b
        self.lru_tail = b
        self.n_lru += 1

    cdef inline void _pack_locked(self, const int64_t* toks) noexcept nogil:
        cdef int32_t* dst = <int32_t*>(self.buf + 16)
        cdef Py_ssize_t j
        for j in range(self.block_size):
            dst[j] = <int32_t>toks[j]

    cdef inline void _digest_locked(self, uint64_t plo, uint64_t phi,
                                    uint64_t* out) noexcept nogil:
        # Tokens must already be packed into buf by _pack_locked.
        memcpy(self.buf, &plo, 8)
        memcpy(self.buf + 8, &phi, 8)
        hash128_x64(self.buf, <int>self.buf_len, 0, out)
        out[0] &= self.mask_lo
        out[1] &= self.mask_hi

    cdef int32_t _find_locked(self, uint64_t lo, uint64_t hi, int32_t par,
                              uint64_t pgen, const int32_t* toks) noexcept nogil:
        cdef uint64_t i = lo & self.t.mask
        cdef int32_t b
        cdef size_t nbytes = 4 * <size_t>self.block_size
        while True:
            b = self.t.index[i]
            if b == SLOT_EMPTY:
                return -1
            if (b >= 0 and self.t.ent[b].hash == lo and self.meta[b].hi == hi
                    and self.meta[b].parent == par and self.meta[b].parent_gen == pgen
                    and memcmp(self.tokens + <Py_ssize_t>b * self.block_size, toks, nbytes) == 0):
                return b
            i = (i + 1) & self.t.mask

    cdef void _register_locked(self, int32_t b, uint64_t lo, uint64_t hi, int32_t par,
                               uint64_t pgen, const int32_t* toks) noexcept nogil:
        cdef Py_ssize_t slot = table_probe_free(&self.t, lo)
        self.t.index[slot] = b
        self.t.ent[b].hash = lo
        self.t.ent[b].prev = ENTRY_NONE
        self.t.count += 1
        self.meta[b].hi = hi
        self.meta[b].parent = par
        self.meta[b].parent_gen = pgen
        memcpy(self.tokens + <Py_ssize_t>b * self.block_size, toks, 4 * <size_t>self.block_size)
        self.meta[b].registered = 1
        self.n_registered += 1

    cdef void _unregister_locked(self, int32_t b) noexcept nogil:
        table_remove_slot(&self.t, table_slot_of(&self.t, b))
        self.t.ent[b].prev = ENTRY_FREE
        self.t.count -= 1
        self.meta[b].registered = 0
        self.meta[b].gen += 1
        self.n_registered -= 1

    cdef int32_t _take_locked(self) noexcept nogil:
        # Caller checked n_free + n_lru > 0. Free blocks first; evict only when needed.
        cdef int32_t b
        if self.n_free > 0:
            self.n_free -= 1
            b = self.free_stack[self.n_free]
        else:
            b = self.lru_head
            self._lru_unlink_locked(b)
            self._unregister_locked(b)
            self.n_evictions += 1
        self.meta[b].refcount = 1
        return b

    cdef inline void _decref_locked(self, int32_t b) noexcept nogil:
        self.meta[b].refcount -= 1
        if self.meta[b].refcount == 0:
            if self.meta[b].registered:
                self._lru_append_locked(b)
            else:
                self.free_stack[self.n_free] = b
                self.n_free += 1

    cdef int _check_held_locked(self, const int64_t* ids, Py_ssize_t n) except -1:
        # Each id must be referenced at least as many times as it appears in `ids`.
        cdef Py_ssize_t i
        cdef int32_t b
        self.stamp += 1
        for i in range(n):
            b = <int32_t>ids[i]
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

    def allocate(self, Py_ssize_t n):
        """Return `n` block ids with refcount 1, evicting LRU free cached blocks if needed."""
        cdef Py_ssize_t i
        cdef int64_t* out
        if n < 0:
            raise ValueError("cannot allocate a negative number of blocks")
        res = _paged_new(n, _cnp.NPY_INT64)
        out = _paged_data(res)
        with cython.critical_section(self):
            if n > <Py_ssize_t>self.n_free + self.n_lru:
                raise PoolExhaustedError(
                    f"block pool exhausted: {n} block(s) requested, {self.n_free} free and "
                    f"{self.n_lru} evictable of {self.num_blocks}; the rest are referenced")
            for i in range(n):
                out[i] = self._take_locked()
        return res

    def release(self, ids):
        """Drop one reference per id (last to first, so a chain's tail is evicted first)."""
        cdef int64_t* v
        cdef Py_ssize_t i, n
        arr = _paged_ids(ids, self.num_blocks)
        v = _paged_data(arr)
        n = _paged_len(arr)
        with cython.critical_section(self):
            self._check_held_locked(v, n)
            for i in range(n - 1, -1, -1):
                self._decref_locked(<int32_t>v[i])

    def incref(self, ids):
        """Take one more reference on each (already referenced) block id."""
        cdef int64_t* v
        cdef Py_ssize_t i, n
        arr = _paged_ids(ids, self.num_blocks)
        v = _paged_data(arr)
        n = _paged_len(arr)
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
        cdef int64_t* t
        cdef int64_t* out
        cdef uint64_t* dig
        cdef Py_ssize_t nfull, i, k = 0, start, end
        cdef int32_t par = -1, b
        cdef uint64_t pgen = 0
        cdef uint64_t d[2]
        cdef uint64_t plo = 0, phi = 0
        self._require_prefix()
        arr = _paged_tokens(tokens)
        t = _paged_data(arr)
        nfull = min(_paged_len(arr) // self.block_size, <Py_ssize_t>self.num_blocks)
        out = self.plan_ids
        with cython.critical_section(self):
            # A digest depends on the tokens only, so a window of them is computed first and
            # each one's index slot, then each candidate's records, are prefetched: the
            # lookups then wait on one batch of cache misses instead of a chain of them.
            dig = self.plan_dig
            start = 0
            while start < nfull:
                end = min(start + _PAGED_WINDOW, nfull)
                for i in range(start, end):
                    self._pack_locked(t + i * self.block_size)
                    self._digest_locked(plo, phi, d)
                    dig[2 * i] = d[0]
                    dig[2 * i + 1] = d[1]
                    plo = d[0]
                    phi = d[1]
                    _paged_prefetch(&self.t.index[d[0] & self.t.mask])
                for i in range(start, end):
                    b = self.t.index[dig[2 * i] & self.t.mask]
                    if b >= 0:
                        _paged_prefetch(&self.t.ent[b])
                        _paged_prefetch(&self.meta[b])
                        _paged_prefetch(self.tokens + <Py_ssize_t>b * self.block_size)
                for i in range(start, end):
                    self._pack_locked(t + i * self.block_size)
                    b = self._find_locked(dig[2 * i], dig[2 * i + 1], par, pgen,
                                          <int32_t*>(self.buf + 16))
                    if b < 0:
                        break
                    out[k] = b
                    k += 1
                    par = b
                    pgen = self.meta[b].gen
                if k < end:
                    break
                start = end
            for i in range(k):
                b = <int32_t>out[i]
                if self.meta[b].refcount == 0:
                    self._lru_unlink_locked(b)
                self.meta[b].refcount += 1
            self.n_queries += 1
            self.n_hit_blocks += k
            res = _paged_new(k, _cnp.NPY_INT64)
            memcpy(_paged_data(res), out, k * sizeof(int64_t))
        return k * self.block_size, res

    def commit(self, tokens, ids):
        """Register every full block of `tokens` held in `ids` (the request's block table).

        Return the number of blocks newly added to the table; a block whose content is
        already cached under another id stays private and is freed on release.
        """
        cdef int64_t* t
        cdef int64_t* v
        cdef Py_ssize_t nfull, i, n_plan = 0, n_new
        cdef int32_t par = -1, b, canon
        cdef uint64_t pgen = 0, plo = 0, phi = 0
        cdef uint64_t d[2]
        cdef int32_t* packed
        self._require_prefix()
        tarr = _paged_tokens(tokens)
        varr = _paged_ids(ids, self.num_blocks)
        t = _paged_data(tarr)
        v = _paged_data(varr)
        nfull = _paged_len(tarr) // self.block_size
        if _paged_len(varr) < nfull:
            raise ValueError(f"{nfull} full block(s) of tokens but only {_paged_len(varr)} "
                             "block id(s)")
        packed = <int32_t*>(self.buf + 16)
        with cython.critical_section(self):
            for i in range(nfull):
                if self.meta[v[i]].refcount <= 0:
                    raise ValueError(f"block {v[i]} is not referenced; commit only blocks you hold")
            # Pass 1 decides everything and raises on bad input; pass 2 only writes.
            self.stamp += 1
            for i in range(nfull):
                b = <int32_t>v[i]
                self._pack_locked(t + i * self.block_size)
                if self.meta[b].registered:
                    if memcmp(self.tokens + <Py_ssize_t>b * self.block_size, packed,
                              4 * <size_t>self.block_size) != 0:
                        raise ValueError(f"block {b} is cached for other tokens than position {i}")
                    if self.meta[b].parent == par and self.meta[b].parent_gen == pgen:
                        # Its stored digest was computed from this very parent chain and
                        # these tokens when it was committed: both confirmed, reuse it.
                        d[0] = self.t.ent[b].hash
                        d[1] = self.meta[b].hi
                        canon = b
                    else:
                        # Committed under another parent holding the same prefix: a private
                        # duplicate's canonical block that has since been evicted, say. The
                        # whole-prefix digest tells whether the content is the same.
                        self._digest_locked(plo, phi, d)
                        if d[0] != self.t.ent[b].hash or d[1] != self.meta[b].hi:
                            raise ValueError(
                                f"block {b} is cached for other tokens before position {i}")
                        canon = self._find_locked(d[0], d[1], par, pgen, packed)
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
                    self._digest_locked(plo, phi, d)
                    canon = self._find_locked(d[0], d[1], par, pgen, packed)
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
                self._pack_locked(t + <Py_ssize_t>self.plan_pos[i] * self.block_size)
                self._register_locked(self.plan[i], self.plan_dig[2 * i], self.plan_dig[2 * i + 1],
                                      self.plan_parent[i], self.plan_gen[i], packed)
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
        cdef int64_t* t
        cdef Py_ssize_t i
        cdef uint64_t d[2]
        cdef uint64_t plo = 0, phi = 0
        self._require_prefix()
        arr = _paged_tokens(tokens)
        t = _paged_data(arr)
        result = []
        with cython.critical_section(self):
            for i in range(_paged_len(arr) // self.block_size):
                self._pack_locked(t + i * self.block_size)
                self._digest_locked(plo, phi, d)
                result.append((<char*>d)[:16])
                plo = d[0]
                phi = d[1]
        return result

    def refcount_of(self, Py_ssize_t b):
        """Return the reference count of block `b`."""
        if b < 0 or b >= self.num_blocks:
            raise ValueError(f"block id {b} out of range [0, {self.num_blocks})")
        return self.meta[b].refcount

    def is_cached(self, Py_ssize_t b):
        """Return True if block `b` is in the prefix table."""
        if b < 0 or b >= self.num_blocks:
            raise ValueError(f"block id {b} out of range [0, {self.num_blocks})")
        return bool(self.meta[b].registered)

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
                b = self.meta[b].lru_next
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
        with cython.critical_section(self):
            return PrefixCacheStats(
                self.n_queries, self.n_hit_blocks, self.n_hit_blocks * self.block_size,
                self.n_committed, self.n_evictions, self.n_registered, self.n_free,
                self.n_lru, self.num_blocks - self.n_free - self.n_lru, self.num_blocks)
