# cython: language_level=3, freethreading_compatible=False
"""The simulator's compiled loops: exact replay of a cache class over integer keys, and
Belady's OPT (kvcache.simulate is the Python side)."""

cimport cython
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint64_t

from kvcache._core cimport (Cache, ENTRY_NONE, PROBE_EMPTY, PROBE_HIT, PROBE_ON, SLOT_EMPTY, probe, entry_t, hash_t, hash_i64, hash_u64,
                            mix_hash, order_link_new, order_t, order_touch, order_unlink,
                            order_victim, table_probe_free, table_put_free, table_put_slot,
                            table_remove_slot, table_slot_of, table_t, table_take_free, buffer_data)

import numpy as np

cnp.import_array()

__all__ = ["Replayer", "opt_hits"]


# ---------------------------------------------------------------------------------------------
# Replay: the exact behaviour of a cache class over an int64/uint64 key array, without the GIL
# ---------------------------------------------------------------------------------------------

ctypedef struct _replay_key_t:
    hash_t h
    uint64_t k
    const uint64_t* rk         # entry -> its key


cdef int _step_key(const void* table, uint64_t slot, const void* key) noexcept nogil:
    cdef const table_t* t = <const table_t*>table
    cdef const _replay_key_t* q = <const _replay_key_t*>key
    cdef int32_t e = t.index[slot]
    if e == SLOT_EMPTY:
        return PROBE_EMPTY
    return PROBE_HIT if t.ent[e].hash == q.h and q.rk[e] == q.k else PROBE_ON


@cython.final
cdef class Replayer:
    """Replays keys through a fresh native cache's own table and policy code, as a Python loop
    `if c.get(k, MISS) is MISS: c[k] = v` would, but with keys kept as C integers."""
    cdef Cache cache
    cdef object raw            # uint64 array: the key of each entry (the cache's key lists stay None)
    cdef uint64_t* rk
    cdef readonly int64_t hits
    cdef readonly int64_t accesses

    def __init__(self, Cache cache):
        if len(cache):
            raise ValueError("replay needs an empty cache")
        self.cache = cache
        self.raw = np.zeros(cache.t.capacity, dtype=np.uint64)
        self.rk = <uint64_t*>buffer_data(self.raw)
        self.hits = 0
        self.accesses = 0

    cdef void _grow(self) except *:
        cdef Cache c = self.cache
        cdef Py_ssize_t old = c.t.capacity
        c._grow_for_one()
        raw = np.zeros(c.t.capacity, dtype=np.uint64)
        raw[:old] = self.raw
        self.raw = raw
        self.rk = <uint64_t*>buffer_data(raw)

    def feed(self, keys):
        """Replay a 1-D int64 or uint64 array; return the hits among these keys."""
        cdef cnp.ndarray arr = np.ascontiguousarray(keys)
        cdef bint signed = arr.dtype == np.int64
        cdef Py_ssize_t n = arr.shape[0], i, slot
        cdef uint64_t* kp = <uint64_t*>cnp.PyArray_DATA(arr)
        cdef Cache c = self.cache
        cdef table_t* t = &c.t
        cdef order_t* o = &c.o
        cdef Py_ssize_t max_entries = c._max_entries
        cdef uint64_t k, i2
        cdef hash_t h
        cdef int32_t e
        cdef entry_t v
        cdef int64_t hits = 0
        cdef _replay_key_t key
        cdef bint hit
        if arr.ndim != 1 or not (signed or arr.dtype == np.uint64):
            raise TypeError("keys must be a 1-D int64 or uint64 array")
        with nogil:
            for i in range(n):
                k = kp[i]
                h = mix_hash(hash_i64(<int64_t>k) if signed else hash_u64(k), t.seed)
                key.h = h
                key.k = k
                key.rk = self.rk
                i2 = <uint64_t>probe(t, h, t.mask, &key, _step_key, &hit)
                e = t.index[i2]
                if hit:
                    hits += 1
                    order_touch(o, t, e)
                    continue
                if max_entries < 1:
                    continue                        # the class raises "value too large"
                slot = <Py_ssize_t>i2
                if t.count >= max_entries:
                    v = order_victim(o, t)
                    table_remove_slot(t, table_slot_of(t, v))
                    order_unlink(o, t, v)
                    t.count -= 1
                    table_put_free(t, v)
                    slot = table_probe_free(t, h)
                elif t.free_head == ENTRY_NONE:
                    with gil:
                        self._grow()
                    slot = table_probe_free(t, h)
                e = table_take_free(t)
                t.ent[e].hash = h
                table_put_slot(t, slot, e)
                self.rk[e] = k
                order_link_new(o, t, e)
                t.count += 1
        self.hits += hits
        self.accesses += n
        c._version += 1
        return hits


# ---------------------------------------------------------------------------------------------
# Belady's OPT with bypass: on a miss, evict whichever of the cached keys and the new one is
# used again furthest in the future (never again counts as infinitely far)
# ---------------------------------------------------------------------------------------------

cdef inline void _heap_push(int64_t* hk, int64_t* hv, Py_ssize_t* hs, int64_t key, int64_t val) noexcept nogil:
    cdef Py_ssize_t j = hs[0], p
    hs[0] += 1
    while j > 0:
        p = (j - 1) >> 1
        if hk[p] >= key:
            break
        hk[j] = hk[p]
        hv[j] = hv[p]
        j = p
    hk[j] = key
    hv[j] = val


cdef inline void _heap_pop(int64_t* hk, int64_t* hv, Py_ssize_t* hs) noexcept nogil:
    cdef Py_ssize_t j = 0, c, n
    cdef int64_t k, v
    hs[0] -= 1
    n = hs[0]
    k = hk[n]
    v = hv[n]
    while True:
        c = 2 * j + 1
        if c >= n:
            break
        if c + 1 < n and hk[c + 1] > hk[c]:
            c += 1
        if hk[c] <= k:
            break
        hk[j] = hk[c]
        hv[j] = hv[c]
        j = c
    if n > 0:
        hk[j] = k
        hv[j] = v


def opt_hits(ids, Py_ssize_t ndistinct, Py_ssize_t maxsize):
    """Belady's hits for dense key ids 0..ndistinct-1 (a max-heap of next uses, lazily cleaned)."""
    cdef cnp.ndarray ida = np.ascontiguousarray(ids, dtype=np.int64)
    cdef Py_ssize_t n = ida.shape[0], i, size = 0, hs = 0
    cdef int64_t* idp = <int64_t*>cnp.PyArray_DATA(ida)
    nxt_a = np.empty(n, dtype=np.int64)
    last_a = np.empty(max(ndistinct, 1), dtype=np.int64)
    cur_a = np.empty(max(ndistinct, 1), dtype=np.int64)
    in_a = np.zeros(max(ndistinct, 1), dtype=np.uint8)
    hk_a = np.empty(n + 1, dtype=np.int64)
    hv_a = np.empty(n + 1, dtype=np.int64)
    cdef int64_t* nxt = <int64_t*>buffer_data(nxt_a)
    cdef int64_t* last = <int64_t*>buffer_data(last_a)
    cdef int64_t* cur = <int64_t*>buffer_data(cur_a)
    cdef uint8_t* inc = <uint8_t*>buffer_data(in_a)
    cdef int64_t* hk = <int64_t*>buffer_data(hk_a)
    cdef int64_t* hv = <int64_t*>buffer_data(hv_a)
    cdef int64_t hits = 0, d, top
    if maxsize <= 0 or n == 0:
        return 0
    with nogil:
        for i in range(ndistinct):
            last[i] = n + i                 # "never again": distinct, later than any access
        for i in range(n - 1, -1, -1):
            d = idp[i]
            nxt[i] = last[d]
            last[d] = i
        for i in range(n):
            d = idp[i]
            cur[d] = nxt[i]
            _heap_push(hk, hv, &hs, nxt[i], d)
            if inc[d]:
                hits += 1
                continue
            inc[d] = 1
            size += 1
            if size > maxsize:
                while True:                 # the furthest next use that is still current
                    top = hv[0]
                    d = hk[0]
                    _heap_pop(hk, hv, &hs)
                    if inc[top] and cur[top] == d:
                        inc[top] = 0
                        size -= 1
                        break
    return hits
