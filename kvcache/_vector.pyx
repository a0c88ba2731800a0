# cython: language_level=3, freethreading_compatible=False
# Batch numpy layer for inference workloads (issue 6): stable text digests and VectorCache.
#
# The module's directives turn bounds and wraparound checks off (setup.py): every index is
# checked here at the Python boundary, before the lock.
#
# VectorCache reuses the engine's policies (see _core.pxd): its entries are `table_t` entry
# records and free list, ordered by an `order_t` through the same order_* functions as the
# mapping classes, so LRU/FIFO/LFU/RR behave exactly as there. What it adds:
#   slab     (maxsize, dim) rows of the value dtype; row number == entry number, so an evicted
#            entry hands its row to the next insert and nothing is allocated per entry;
#   slots    its own open-addressing index of 16-byte slots {low word, 32 bits of the high
#            word, entry}: a probe compares keys inside the slot, so finding a key costs one
#            cache miss. The engine's index holds only entry numbers and confirms through the
#            entry record, a second dependent miss that halved batch lookup speed (measured
#            side by side: 12 vs 27 M keys/s). The engine's probe loop (`probe`) and mixer
#            (`mix_hash`) with this index's own slot comparison (`_vec_step_key`); linear
#            probing with backward-shift deletion, so no tombstones pile up under eviction;
#   hi       entry -> full high word of a 128-bit digest, compared on a slot match (skipped
#            while every stored key and the probe have a zero high word); the entry record's
#            `hash` field holds the low word, to find an evicted entry's slot.
# Batch loops run without the GIL over these buffers while holding the cache's own mutex:
# the GIL alone cannot protect a structure once it is released. All Python-level conversion
# (numpy.asarray, casting, shape checks) happens before the mutex is taken, so no Python code
# can run, or re-enter this cache, while the structure is being changed.

from libc.stdint cimport uint8_t, int32_t, uint32_t, int64_t, uint64_t
from libc.string cimport memcpy
from cpython.mem cimport PyMem_Free, PyMem_Malloc, PyMem_Realloc
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_AsUTF8AndSize
from murmurhash.mrmr cimport hash128_x64
cimport cython
cimport numpy as cnp

from kvcache._core cimport *

cnp.import_array()

from kvcache._core import CacheStats, InitSignature

__all__ = ["VectorCache", "digest"]

import numpy as _vnp
from operator import index as _vindex
from os import urandom as _vurandom

# ---------------------------------------------------------------------------------------------
# digest

# Digests leave the process (snapshots, other machines), so the seeds are fixed forever.
# Namespaced digests use another seed as well as a length prefix, so that a plain digest of a
# crafted text cannot equal a namespaced one by construction.
cdef uint32_t _DIGEST_SEED = 0
cdef uint32_t _DIGEST_NS_SEED = 1
cdef Py_ssize_t _DIGEST_MAX_LEN = 0x7FFFFFFF  # hash128_x64 takes an int length

# Test hook: when set, digest() clears the low word so that different texts share one 64-bit
# key; only the high word then tells them apart. Used to prove that collisions are harmless.
cdef bint _digest_truncate = False


def _set_digest_truncation(bint on):
    """Make digest() return colliding 64-bit keys (tests only). Return the previous setting."""
    global _digest_truncate
    cdef bint previous = _digest_truncate
    _digest_truncate = on
    return previous


cdef inline const char *_digest_bytes(object item, Py_ssize_t *length, list keepalive) except NULL:
    cdef const char *p
    if isinstance(item, str):
        try:
            p = PyUnicode_AsUTF8AndSize(item, length)
        except UnicodeEncodeError:
            # Lone surrogates have no strict UTF-8 form; surrogatepass keeps every str hashable
            # and still maps distinct strings to distinct bytes.
            item = (<str>item).encode("utf-8", "surrogatepass")
            keepalive.append(item)
            length[0] = PyBytes_GET_SIZE(item)
            return PyBytes_AS_STRING(item)
        return p
    if isinstance(item, bytes):
        length[0] = PyBytes_GET_SIZE(item)
        return PyBytes_AS_STRING(item)
    raise TypeError(f"digest() items must be str or bytes, not {type(item).__name__}")


def digest(items, namespace=None):
    """Return stable 128-bit MurmurHash3 (x64) digests of str/bytes items as an (n, 2) uint64 array.

    Column 0 is the 64-bit key, column 1 the other half of the 128-bit digest. A str is hashed
    as its UTF-8 bytes (so ``"a"`` and ``b"a"`` share a digest); the result is the same in every
    process, run and (little-endian) machine, whatever PYTHONHASHSEED is. With ``namespace`` (a
    str or bytes, e.g. a model name) the digest covers the namespace and the item, unambiguously
    separated, so two namespaces never share a digest by construction. MurmurHash3 is not a
    cryptographic hash: it guards against accidental collisions, not against an adversary.
    """
    if isinstance(items, (str, bytes)):
        raise TypeError("digest() takes a sequence of str/bytes; wrap a single item in a list")
    cdef list seq = items if type(items) is list else list(items)
    cdef Py_ssize_t n = len(seq), i, length, ns_len = 0
    cdef uint32_t seed = _DIGEST_SEED
    cdef bytes ns_bytes
    cdef char *buf = NULL
    cdef char *grown
    cdef Py_ssize_t bufsize = 0
    cdef const char *p
    cdef list keepalive = []
    out = _vnp.empty((n, 2), dtype=_vnp.uint64)
    cdef uint64_t[:, ::1] o = out
    if namespace is not None:
        if isinstance(namespace, str):
            ns_bytes = (<str>namespace).encode("utf-8", "surrogatepass")
        elif isinstance(namespace, bytes):
            ns_bytes = namespace
        else:
            raise TypeError(f"namespace must be str or bytes, not {type(namespace).__name__}")
        seed = _DIGEST_NS_SEED
        ns_len = len(ns_bytes)
        # Prefix = 8-byte little-endian length of the namespace, then the namespace: the pair
        # (namespace, item) is recoverable from the hashed bytes, so no choice of texts forges it.
        prefix = ns_len.to_bytes(8, "little") + ns_bytes
        bufsize = 8 + ns_len + 256
        buf = <char *>PyMem_Malloc(bufsize)
        if buf == NULL:
            raise MemoryError()
        memcpy(buf, <const char *>prefix, 8 + ns_len)
    try:
        for i in range(n):
            p = _digest_bytes(seq[i], &length, keepalive)
            if length + 8 + ns_len > _DIGEST_MAX_LEN:
                raise ValueError(f"digest() item {i} is longer than 2 GiB")
            if buf == NULL:
                hash128_x64(p, <int>length, seed, &o[i, 0])
            else:
                if 8 + ns_len + length > bufsize:
                    bufsize = 2 * (8 + ns_len + length)
                    grown = <char *>PyMem_Realloc(buf, bufsize)
                    if grown == NULL:
                        raise MemoryError()
                    buf = grown
                memcpy(buf + 8 + ns_len, p, length)
                hash128_x64(buf, <int>(8 + ns_len + length), seed, &o[i, 0])
            if _digest_truncate:
                o[i, 0] = 0
    finally:
        PyMem_Free(buf)
    return out


# ---------------------------------------------------------------------------------------------
# VectorCache

ctypedef struct kv_vslot_t:
    uint64_t lo            # low word of the key
    uint32_t hi32          # low 32 bits of the high word: most 128-bit mismatches end here
    int32_t entry          # ENTRY_NONE: empty slot

cdef enum:
    _VEC_PREFETCH = 16     # keys ahead: enough to keep ~16 cache misses in flight
    _VEC_NOGIL_MIN = 256   # below this, releasing the GIL costs more than it frees

_VEC_POLICIES = {"lru": POLICY_LRU, "fifo": POLICY_FIFO, "lfu": POLICY_LFU, "rr": POLICY_RR}
_VEC_KEY_ERROR = "VectorCache keys must be integers (int64/uint64), or (n, 2) uint64 digests"


# The probe steps (see `probe` in _core.pxd): the slot array is the table.

ctypedef struct _vec_key_t:
    uint64_t lo
    uint64_t hi
    const uint64_t *his    # entry -> high word; NULL while no high word needs comparing


cdef int _vec_step_key(const void *table, uint64_t slot, const void *key) noexcept nogil:
    cdef const kv_vslot_t *s = &(<const kv_vslot_t *>table)[slot]
    cdef const _vec_key_t *q = <const _vec_key_t *>key
    if s.entry < 0:
        return PROBE_EMPTY
    if s.lo == q.lo and s.hi32 == <uint32_t>q.hi and (q.his == NULL or q.his[s.entry] == q.hi):
        return PROBE_HIT
    return PROBE_ON


cdef inline Py_ssize_t _vec_probe(const kv_vslot_t *slots, uint64_t mask, const uint64_t *his,
                                  bint any_hi, uint64_t home, uint64_t lo, uint64_t hi,
                                  bint *hit) noexcept nogil:
    # The slot holding (lo, hi), or else the first empty slot of its run (insert there). The
    # high word is compared in full only when some key has one (any_hi: a stored key does).
    cdef _vec_key_t q
    q.lo = lo
    q.hi = hi
    q.his = his if (hi != 0 or any_hi) else NULL
    return probe(slots, home, mask, &q, _vec_step_key, hit)


cdef int _vec_step_entry(const void *table, uint64_t slot, const void *key) noexcept nogil:
    cdef entry_t e = (<const kv_vslot_t *>table)[slot].entry
    if e == (<const entry_t *>key)[0]:
        return PROBE_HIT
    return PROBE_EMPTY if e < 0 else PROBE_ON


cdef int _vec_step_free(const void *table, uint64_t slot, const void *key) noexcept nogil:
    return PROBE_EMPTY if (<const kv_vslot_t *>table)[slot].entry < 0 else PROBE_ON


cdef object _vec_size(str name, object value):
    """Return value as a Python int of at least 1 (bools and floats are not sizes)."""
    if isinstance(value, (bool, _vnp.bool_)):
        raise TypeError(f"{name} must be an int, not bool")
    value = _vindex(value)
    if value < 1:
        raise ValueError(f"{name} must be at least 1, not {value}")
    return value


cdef object _vec_key_array(object keys):
    """Return keys as a C-contiguous uint64 array of shape (n,) or (n, 2).

    A batch is always a sequence: a scalar (even a 0-d array) is refused rather than taken as
    a batch of one, and an empty batch must still have a valid shape and integer dtype.
    """
    if isinstance(keys, (str, bytes)):
        raise TypeError(_VEC_KEY_ERROR + "; hash texts with kvcache.digest() first")
    cdef cnp.ndarray arr = keys if type(keys) is _vnp.ndarray else _vnp.asarray(keys)
    cdef int ndim = cnp.PyArray_NDIM(arr)
    if ndim == 0:
        # numpy makes a 0-d object array of a set, a dict or a generator as well as of a scalar.
        raise TypeError(f"{_VEC_KEY_ERROR}, in a list, tuple or array, not a "
                        f"{type(keys).__name__}; use cache[key] for a single key")
    if not (ndim == 1 or (ndim == 2 and cnp.PyArray_DIM(arr, 1) == 2)):
        raise ValueError(f"{_VEC_KEY_ERROR}; got shape {(<object>arr).shape}")
    kind = arr.dtype.kind
    if cnp.PyArray_SIZE(arr) == 0:
        if kind not in "iuO" and isinstance(keys, _vnp.ndarray):
            raise TypeError(f"{_VEC_KEY_ERROR}, not an array of {arr.dtype}")
        return _vnp.empty((<object>arr).shape, dtype=_vnp.uint64)
    if kind not in "iuO" and not isinstance(keys, _vnp.ndarray):
        # numpy turns [2**64 - 1, -1] into floats: look at the Python objects themselves.
        arr = _vnp.asarray(keys, dtype=object)
        kind = "O"
    if kind == "O":
        # Python ints beyond int64 mixed with negatives: check each one, as dict would hash it.
        return _vnp.array([_vec_key64(x) for x in arr.ravel()],
                          dtype=_vnp.uint64).reshape((<object>arr).shape)
    elif kind == "i":
        arr = _vnp.ascontiguousarray(arr, dtype=_vnp.int64).view(_vnp.uint64)
    elif kind == "u":
        arr = _vnp.ascontiguousarray(arr, dtype=_vnp.uint64)
    else:
        raise TypeError(f"{_VEC_KEY_ERROR}, not an array of {arr.dtype}")
    # ascontiguousarray keeps an unaligned buffer as it is; the batch loops load whole words.
    return arr if cnp.PyArray_ISCARRAY_RO(arr) else arr.copy()


cdef uint64_t _vec_key64(object x) except? 0:
    if isinstance(x, bool) or isinstance(x, _vnp.bool_):
        raise TypeError(_VEC_KEY_ERROR + ", not bool")
    try:
        v = _vindex(x)
    except TypeError:
        raise TypeError(f"{_VEC_KEY_ERROR}, not {type(x).__name__}") from None
    if not -(1 << 63) <= v < (1 << 64):
        raise OverflowError(f"VectorCache key {v} does not fit in 64 bits")
    return <uint64_t>(v & 0xFFFFFFFFFFFFFFFF)


cdef class VectorCache:
    """Cache fixed-width vectors under integer keys, in one preallocated ``(maxsize, dim)`` slab.

    Keys are 64-bit integers (int64 and uint64 name the same 64 bits, so ``-1`` and ``2**64 - 1``
    are one key) or 128-bit digests given as rows of an ``(n, 2)`` uint64 array, as returned by
    :func:`digest`; a 64-bit key ``k`` is the digest ``(k, 0)``. Both words are stored and
    compared, so digests whose 64-bit keys collide stay distinct entries. ``policy`` is
    ``"lru"``, ``"fifo"``, ``"lfu"`` or ``"rr"``, with the semantics of LRUCache, FIFOCache,
    LFUCache and RRCache. Rows are handed out as copies: a later write or eviction never
    changes an array you hold. Memory is ``maxsize * dim * itemsize`` for the slab plus the
    index and policy links reported by :attr:`overhead_bytes` (48-100 bytes per entry).

    Thread-safety: every method may be called from many threads at once. Each operation holds
    the cache's own mutex, and batch operations release the GIL while they run.
    """

    cdef table_t t
    cdef order_t o
    cdef readonly Py_ssize_t maxsize
    cdef readonly Py_ssize_t dim
    cdef readonly object dtype
    cdef readonly str policy
    cdef object _slab
    cdef list _bufs                 # the numpy arrays behind t, o and _hi (kept alive here)
    cdef char *_slab_p
    cdef uint64_t *_hi              # entry -> high word of its 128-bit key
    cdef kv_vslot_t *_slots
    cdef uint64_t _mask             # number of slots - 1
    cdef Py_ssize_t _rowbytes
    cdef Py_ssize_t _nhi            # live entries whose high word is not zero
    cdef uint64_t _hits
    cdef uint64_t _misses
    cdef uint64_t _evictions
    cdef cython.pymutex _lock

    # the signature shown by inspect and help(): keep it equal to __init__'s
    __signature__ = InitSignature(
        lambda self, maxsize, dim, dtype=_vnp.float32, policy="lru", *, seed=None: None)

    def __init__(self, maxsize, dim, dtype=_vnp.float32, policy="lru", *, seed=None):
        if self._slots != NULL:
            # A batch on another thread may be running over the buffers a second call would swap.
            raise TypeError("VectorCache is already initialised")
        maxsize = _vec_size("maxsize", maxsize)
        dim = _vec_size("dim", dim)
        if maxsize >= (1 << 30):
            raise ValueError("maxsize must be between 1 and 2**30 - 1")
        if not isinstance(policy, str) or policy not in _VEC_POLICIES:
            raise ValueError(f"policy must be one of {sorted(_VEC_POLICIES)}, not {policy!r}")
        dt = _vnp.dtype(dtype)
        # Rows are copied as raw bytes and handed back as arrays of this dtype: a sub-array,
        # structured, string or object dtype would change the shape of what comes back, or
        # put Python objects in a slab that the GC does not see.
        if dt.kind not in "biufc" or dt.subdtype is not None or dt.itemsize == 0:
            raise TypeError(f"VectorCache needs a numeric dtype (bool, int, float, complex), not {dt}")
        cache_seed = (_vec_key64(int.from_bytes(_vurandom(8), "little"))
                      if seed is None else _vec_key64(seed))
        # At most 2/3 of the slots are live, so probe runs stay short.
        nslots = 8
        while nslots < maxsize + maxsize // 2:
            nslots *= 2
        # Everything is allocated before the first pointer is set: a failed allocation leaves
        # the instance uninitialised (every method refuses it), never half built.
        slab = _vnp.zeros((maxsize, dim), dtype=dt)
        slots = _vnp.empty(nslots * sizeof(kv_vslot_t), dtype=_vnp.uint8)
        ent = _vnp.zeros((maxsize, 2), dtype=_vnp.uint64)   # entry_rec: low word, prev, next
        hi = _vnp.zeros(maxsize, dtype=_vnp.uint64)
        pol = _VEC_POLICIES[policy]
        order_bufs = _Buffers()
        order_alloc(pol, order_bufs, maxsize)        # the policy's own arrays (LFU, RR)
        bufs = [slab, slots, ent, hi, order_bufs]
        if self._slots != NULL:
            # Another thread's __init__ finished while this one allocated; from here to the end
            # no Python code runs, so the check and the setup are one step.
            raise TypeError("VectorCache is already initialised")
        self.maxsize = maxsize
        self.dim = dim
        self.dtype = dt
        self.policy = policy
        self._slab = slab
        self._bufs = bufs
        self.o.policy = pol
        self.t.seed = cache_seed
        self.o.rng = (self.t.seed * <uint64_t>0x9E3779B97F4A7C15) | 1
        self._rowbytes = dim * dt.itemsize
        self._slab_p = <char *>cnp.PyArray_DATA(slab)
        self._mask = nslots - 1
        self.t.ent = <entry_rec *>cnp.PyArray_DATA(ent)
        self.t.index = NULL                                  # the slots below replace it
        self.t.mask = 0
        self.t.capacity = maxsize
        self._hi = <uint64_t *>cnp.PyArray_DATA(hi)
        order_point(&self.o, order_bufs)
        with self._lock:
            self._slots = <kv_vslot_t *>cnp.PyArray_DATA(slots)   # set last: the "ready" mark
            self._reset_locked()

    cdef inline int _ready(self) except -1:
        if self._slots == NULL:
            raise TypeError("VectorCache is not initialised (call VectorCache(maxsize, dim))")
        return 0

    cdef void _reset_locked(self) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(<Py_ssize_t>self._mask + 1):
            self._slots[i].entry = ENTRY_NONE
        self.t.count = 0
        self.t.free_head = ENTRY_NONE
        for i in range(self.t.capacity - 1, -1, -1):
            table_put_free(&self.t, <entry_t>i)
        self._nhi = 0
        order_reset(&self.o, self.t.capacity)

    # -- index ------------------------------------------------------------------------------

    cdef inline uint64_t _home(self, uint64_t lo) noexcept nogil:
        # The engine's mixer: sequential or structured keys spread over the whole table.
        return mix_hash(<Py_hash_t>lo, self.t.seed) & self._mask

    cdef inline Py_ssize_t _probe_from(self, uint64_t home, uint64_t lo, uint64_t hi,
                                       bint *hit) noexcept nogil:
        return _vec_probe(self._slots, self._mask, self._hi, self._nhi != 0, home, lo, hi, hit)

    cdef inline entry_t _find_from(self, uint64_t home, uint64_t lo, uint64_t hi) noexcept nogil:
        cdef bint hit
        cdef Py_ssize_t i = self._probe_from(home, lo, hi, &hit)
        return self._slots[i].entry if hit else ENTRY_NONE

    cdef inline entry_t _find(self, uint64_t lo, uint64_t hi) noexcept nogil:
        return self._find_from(self._home(lo), lo, hi)

    cdef void _remove_slot(self, entry_t e) noexcept nogil:
        # Backward-shift deletion: pull later members of the probe run into the hole when their
        # home is not between the hole and their position, so every run stays unbroken.
        cdef uint64_t i, j, home, mask = self._mask
        cdef bint hit
        cdef Py_ssize_t slot = probe(self._slots, self._home(self.t.ent[e].hash), mask, &e,
                                     _vec_step_entry, &hit)
        if not hit:
            return                        # not indexed: only a corrupt table gets here
        i = j = <uint64_t>slot
        while True:
            j = (j + 1) & mask
            if self._slots[j].entry < 0:
                break
            home = self._home(self._slots[j].lo)
            if ((j - home) & mask) >= ((j - i) & mask):
                self._slots[i] = self._slots[j]
                i = j
        self._slots[i].entry = ENTRY_NONE

    cdef void _remove_locked(self, entry_t e) noexcept nogil:
        order_unlink(&self.o, &self.t, e)
        self._remove_slot(e)
        self.t.count -= 1
        if self._hi[e] != 0:
            self._nhi -= 1
        table_put_free(&self.t, e)

    cdef entry_t _insert_locked(self, uint64_t lo, uint64_t hi, Py_ssize_t slot) noexcept nogil:
        # The key is absent and `slot` is the empty slot its probe ended on; make room by the
        # policy (the deletion moves slots: look again), then link it as the newest entry.
        cdef entry_t e
        cdef bint hit
        if self.t.free_head == ENTRY_NONE:
            self._remove_locked(order_victim(&self.o, &self.t))
            self._evictions += 1
            slot = probe(self._slots, self._home(lo), self._mask, NULL, _vec_step_free, &hit)
        e = table_take_free(&self.t)
        self._slots[slot].lo = lo
        self._slots[slot].hi32 = <uint32_t>hi
        self._slots[slot].entry = e
        self.t.ent[e].hash = lo
        self._hi[e] = hi
        if hi != 0:
            self._nhi += 1
        order_link_new(&self.o, &self.t, e)
        self.t.count += 1
        return e

    # -- batch kernels (mutex held; callable with or without the GIL) ------------------------

    cdef void _lookup_locked(self, const uint64_t *keys, int stride, Py_ssize_t n,
                             int64_t *rows, uint8_t *found, bint touch) noexcept nogil:
        # Three passes whose iterations are independent, so the CPU keeps many cache misses in
        # flight: hash every key (rows[] holds home slots meanwhile); probe with the slot of key
        # i+D prefetched; then refresh the policy with the entry records an LRU move rewrites
        # prefetched (stale hints are harmless).
        # The table's fields are read into locals once: stores through rows[] could alias
        # them, and the compiler would load them again for every key.
        cdef Py_ssize_t i, slot
        cdef uint64_t hi = 0, nhits = 0
        cdef uint64_t seed = self.t.seed, mask = self._mask
        cdef const kv_vslot_t *slots = self._slots
        cdef const uint64_t *his = self._hi
        cdef bint any_hi = self._nhi != 0, hit
        cdef entry_t e
        cdef int64_t r
        cdef entry_rec *rec
        for i in range(n):
            rows[i] = <int64_t>(mix_hash(<Py_hash_t>keys[i * stride], seed) & mask)
        for i in range(n):
            if i + _VEC_PREFETCH < n:
                kv_prefetch(&slots[rows[i + _VEC_PREFETCH]])
            if stride == 2:
                hi = keys[2 * i + 1]
            slot = _vec_probe(slots, mask, his, any_hi, <uint64_t>rows[i], keys[i * stride], hi,
                              &hit)
            e = slots[slot].entry if hit else ENTRY_NONE
            rows[i] = e
            found[i] = e >= 0
            nhits += e >= 0
        if not touch:
            return
        self._hits += nhits
        self._misses += <uint64_t>n - nhits
        if not order_hit_moves(&self.o):
            return
        for i in range(n):
            if i + _VEC_PREFETCH < n and rows[i + _VEC_PREFETCH] >= 0:
                kv_prefetch(&self.t.ent[rows[i + _VEC_PREFETCH]])
            if i + _VEC_PREFETCH // 2 < n and rows[i + _VEC_PREFETCH // 2] >= 0:
                rec = &self.t.ent[rows[i + _VEC_PREFETCH // 2]]
                if rec.prev >= 0:
                    kv_prefetch(&self.t.ent[rec.prev])
                if rec.next >= 0:
                    kv_prefetch(&self.t.ent[rec.next])
            r = rows[i]
            if r >= 0:
                order_touch(&self.o, &self.t, <entry_t>r)

    cdef void _gather_locked(self, const int64_t *rows, Py_ssize_t n, char *out) noexcept nogil:
        cdef Py_ssize_t i, rb = self._rowbytes
        for i in range(n):
            if i + 4 < n and rows[i + 4] >= 0:
                kv_prefetch(self._slab_p + rows[i + 4] * rb)
            if rows[i] >= 0:
                memcpy(out + i * rb, self._slab_p + rows[i] * rb, rb)

    cdef void _store_locked(self, const uint64_t *keys, int stride, Py_ssize_t n,
                            const char *src) noexcept nogil:
        cdef Py_ssize_t i, rb = self._rowbytes
        cdef entry_t e
        cdef uint64_t lo, hi = 0
        cdef Py_ssize_t slot
        cdef bint hit
        for i in range(n):
            if i + _VEC_PREFETCH < n:
                kv_prefetch(&self._slots[self._home(keys[(i + _VEC_PREFETCH) * stride])])
            lo = keys[i * stride]
            if stride == 2:
                hi = keys[2 * i + 1]
            slot = self._probe_from(self._home(lo), lo, hi, &hit)
            if hit:
                e = self._slots[slot].entry
                order_update(&self.o, &self.t, e)
            else:
                e = self._insert_locked(lo, hi, slot)
            memcpy(self._slab_p + e * rb, src + i * rb, rb)

    # -- Python API ---------------------------------------------------------------------------

    cdef object _rows_array(self, object rows, Py_ssize_t n):
        arr = _vnp.asarray(rows)
        if arr.dtype.hasobject or not _vnp.can_cast(arr.dtype, self.dtype, "same_kind"):
            raise TypeError(f"cannot store rows of {arr.dtype} in a VectorCache of {self.dtype}")
        if arr.shape != (n, self.dim) and not (n == 0 and arr.shape == (0,)):
            raise ValueError(f"rows must have shape ({n}, {self.dim}), not {arr.shape}")
        return _vnp.ascontiguousarray(arr, dtype=self.dtype)

    def _locate(self, keys, bint touch=True):
        """Return (row numbers, found mask) for keys; with touch, count hits and refresh the policy.

        Row numbers index the internal slab and are only meaningful until the next write; this
        is the lookup half of get_many, exposed for benchmarks and tests.
        """
        self._ready()
        k = _vec_key_array(keys)
        cdef Py_ssize_t n = k.shape[0]
        cdef int stride = 2 if k.ndim == 2 else 1
        rows = _vnp.empty(n, dtype=_vnp.int64)
        found = _vnp.empty(n, dtype=_vnp.bool_)
        if n == 0:
            return rows, found
        cdef const uint64_t[::1] kv = k.reshape(-1)
        cdef int64_t[::1] rv = rows
        cdef uint8_t[::1] fv = found.view(_vnp.uint8)
        with self._lock:
            if n >= _VEC_NOGIL_MIN:
                with nogil:
                    self._lookup_locked(&kv[0], stride, n, &rv[0], &fv[0], touch)
            else:
                self._lookup_locked(&kv[0], stride, n, &rv[0], &fv[0], touch)
        return rows, found

    def get_many(self, keys, out=None):
        """Look up a batch of keys; return ``(rows, found)``.

        ``rows`` is an ``(n, dim)`` array (``out`` if given, else a new zeroed one) holding a copy
        of each found key's vector; rows of missing keys are left as they were. ``found`` is a
        bool mask. Every key counts as a hit or a miss and refreshes the policy, in batch order.
        ``keys`` may share memory with ``out``: every key is read before the first row is written.
        """
        self._ready()
        k = _vec_key_array(keys)
        cdef Py_ssize_t n = k.shape[0]
        cdef int stride = 2 if k.ndim == 2 else 1
        if out is None:
            out = _vnp.zeros((n, self.dim), dtype=self.dtype)
        else:
            if not isinstance(out, _vnp.ndarray):
                raise TypeError("out must be a numpy array")
            if out.dtype != self.dtype or out.shape != (n, self.dim):
                raise ValueError(f"out must be a ({n}, {self.dim}) array of {self.dtype}, "
                                 f"not {out.shape} of {out.dtype}")
            if not (out.flags.c_contiguous and out.flags.writeable):
                raise ValueError("out must be C-contiguous and writeable")
        rows = _vnp.empty(n, dtype=_vnp.int64)
        found = _vnp.empty(n, dtype=_vnp.bool_)
        if n == 0:
            return out, found
        cdef const uint64_t[::1] kv = k.reshape(-1)
        cdef int64_t[::1] rv = rows
        cdef uint8_t[::1] fv = found.view(_vnp.uint8)
        cdef uint8_t[::1] ov = out.reshape(-1).view(_vnp.uint8)
        with self._lock:
            if n >= _VEC_NOGIL_MIN:
                with nogil:
                    self._lookup_locked(&kv[0], stride, n, &rv[0], &fv[0], True)
                    self._gather_locked(&rv[0], n, <char *>&ov[0])
            else:
                self._lookup_locked(&kv[0], stride, n, &rv[0], &fv[0], True)
                self._gather_locked(&rv[0], n, <char *>&ov[0])
        return out, found

    def set_many(self, keys, rows):
        """Store ``rows[i]`` under ``keys[i]``, in order (a repeated key keeps its last row).

        New keys evict by the policy when the cache is full and reuse the evicted rows. Keys and
        rows are checked before anything changes: on error the cache is as it was. Rows are
        converted to the cache's dtype as numpy's "same_kind" casting does (float64 rounds to
        float32; int to float is allowed, float to int is not); NaN and infinities are data,
        stored and returned bit for bit. Keys and rows must not be written by another thread
        during the call.
        """
        self._ready()
        k = _vec_key_array(keys)
        cdef Py_ssize_t n = k.shape[0]
        cdef int stride = 2 if k.ndim == 2 else 1
        r = self._rows_array(rows, n)
        if n == 0:
            return
        cdef const uint64_t[::1] kv = k.reshape(-1)
        cdef const uint8_t[::1] src = r.reshape(-1).view(_vnp.uint8)
        with self._lock:
            if n >= _VEC_NOGIL_MIN:
                with nogil:
                    self._store_locked(&kv[0], stride, n, <const char *>&src[0])
            else:
                self._store_locked(&kv[0], stride, n, <const char *>&src[0])

    cdef object _one_key(self, object key):
        # Shape (1,) for a 64-bit key, (1, 2) for a 128-bit one: a batch of one.
        if isinstance(key, _vnp.ndarray) and key.ndim == 0:
            key = key[()]
        if isinstance(key, (tuple, list, _vnp.ndarray)):
            k = _vec_key_array(key)
            if k.shape == (2,):
                return k.reshape(1, 2)
            raise ValueError("a single 128-bit key is a pair (low, high) of uint64 words")
        return _vnp.array([_vec_key64(key)], dtype=_vnp.uint64)

    def __getitem__(self, key):
        rows, found = self.get_many(self._one_key(key))
        if not found[0]:
            raise KeyError(key)
        return rows[0]

    def get(self, key, default=None):
        """Return a copy of the vector for key, or default."""
        rows, found = self.get_many(self._one_key(key))
        return rows[0] if found[0] else default

    def __setitem__(self, key, row):
        r = _vnp.asarray(row)
        if r.shape != (self.dim,):
            raise ValueError(f"a row must have shape ({self.dim},), not {r.shape}")
        self.set_many(self._one_key(key), r.reshape(1, -1))

    def __contains__(self, key):
        cdef uint64_t[::1] k
        self._ready()
        try:
            k = self._one_key(key).reshape(-1)
        except (TypeError, ValueError, OverflowError):
            return False
        with self._lock:
            return self._find(k[0], k[1] if k.shape[0] == 2 else 0) >= 0

    def __delitem__(self, key):
        cdef uint64_t[::1] k
        cdef entry_t e
        self._ready()
        k = self._one_key(key).reshape(-1)
        with self._lock:
            e = self._find(k[0], k[1] if k.shape[0] == 2 else 0)
            if e >= 0:
                self._remove_locked(e)
        if e < 0:
            raise KeyError(key)

    def __len__(self):
        return self.t.count

    def clear(self):
        """Remove every entry (the slab and the statistics are kept)."""
        self._ready()
        with self._lock:
            self._reset_locked()

    def stats(self):
        """Return ``CacheStats(hits, misses, evictions, currsize, maxsize)``."""
        cdef uint64_t hits, misses, evictions
        cdef Py_ssize_t count
        # Read under the mutex, build the tuple after: the namedtuple's __new__ is Python code,
        # and anything it runs (a finalizer, a signal handler) that calls back into this cache
        # would wait forever on a mutex its own thread holds.
        with self._lock:
            hits, misses, evictions, count = self._hits, self._misses, self._evictions, self.t.count
        return CacheStats(hits, misses, evictions, count, self.maxsize)

    @property
    def currsize(self):
        return self.t.count

    @property
    def nbytes(self):
        """Bytes held by the slab, the index and the policy links."""
        return sum(a.nbytes() if isinstance(a, _Buffers) else a.nbytes
                   for a in self._bufs) if self._bufs is not None else 0

    @property
    def overhead_bytes(self):
        """Bytes held beyond the slab (index, entry records, policy), for all maxsize entries."""
        return self.nbytes - (self._slab.nbytes if self._slab is not None else 0)

    def __reduce__(self):
        raise TypeError("VectorCache cannot be pickled")

    def __repr__(self):
        if self._slots == NULL:
            return "<uninitialised VectorCache>"
        return (f"VectorCache(maxsize={self.maxsize}, dim={self.dim}, "
                f"dtype={self.dtype.name}, policy={self.policy!r}, currsize={self.t.count})")

    # -- test hooks ---------------------------------------------------------------------------

    def _export(self):
        """Return (keys, rows): every entry's (low, high) key words in policy order, its row."""
        self._ready()
        order = _vnp.empty(self.maxsize, dtype=_vnp.int32)
        keys = _vnp.empty((self.maxsize, 2), dtype=_vnp.uint64)
        rows = _vnp.empty((self.maxsize, self.dim), dtype=self.dtype)
        cdef int32_t[::1] ov = order
        cdef uint64_t[:, ::1] kv = keys
        cdef char *rp = <char *>cnp.PyArray_DATA(rows)
        cdef Py_ssize_t i, n
        cdef entry_t e
        with self._lock:
            n = order_fill(&self.o, &self.t, &ov[0])
            for i in range(n):
                e = ov[i]
                kv[i, 0] = self.t.ent[e].hash
                kv[i, 1] = self._hi[e]
                memcpy(rp + i * self._rowbytes, self._slab_p + e * self._rowbytes, self._rowbytes)
        return keys[:n].copy(), rows[:n].copy()

    def _check(self):
        """Verify the slots, entry records, free list and policy order; raise AssertionError."""
        self._ready()
        order = _vnp.empty(self.maxsize, dtype=_vnp.int32)
        seen = _vnp.zeros(self.maxsize, dtype=_vnp.uint8)
        cdef int32_t[::1] ov = order
        cdef uint8_t[::1] sv = seen
        cdef int err
        with self._lock:
            err = self._check_locked(&ov[0], &sv[0])
        if err:
            raise AssertionError(_VEC_CHECK_ERRORS[err])

    cdef int _check_locked(self, entry_t *order, uint8_t *seen) noexcept nogil:
        # Error codes, not exceptions: raising allocates, and nothing under the mutex may.
        cdef Py_ssize_t e, i, live = 0, nhi = 0, used = 0, nfree = 0, n
        cdef kv_vslot_t *s
        for e in range(self.t.capacity):
            if self.t.ent[e].prev == ENTRY_FREE:
                continue
            live += 1
            nhi += self._hi[e] != 0
            if self._find(self.t.ent[e].hash, self._hi[e]) != e:
                return 1
        if live != self.t.count:
            return 2
        if nhi != self._nhi:
            return 3
        for i in range(<Py_ssize_t>self._mask + 1):
            s = &self._slots[i]
            if s.entry < 0:
                continue
            used += 1
            if (s.entry >= self.t.capacity or self.t.ent[s.entry].prev == ENTRY_FREE
                    or s.lo != self.t.ent[s.entry].hash or s.hi32 != <uint32_t>self._hi[s.entry]):
                return 4
        if used != live:
            return 5
        e = self.t.free_head
        while e != ENTRY_NONE:
            nfree += 1
            if nfree > self.t.capacity or e < 0 or e >= self.t.capacity \
                    or self.t.ent[e].prev != ENTRY_FREE:
                return 6
            e = self.t.ent[e].next
        if nfree + live != self.t.capacity:
            return 6
        n = order_fill(&self.o, &self.t, order)
        if n != live:
            return 7
        for i in range(n):
            e = order[i]
            if e < 0 or e >= self.t.capacity or seen[e] or self.t.ent[e].prev == ENTRY_FREE:
                return 7
            seen[e] = 1
        return 0


_VEC_CHECK_ERRORS = {
    1: "a live entry is not found by its key",
    2: "the live entries do not match the count",
    3: "the count of non-zero high words is wrong",
    4: "a slot points to a free entry or holds another key",
    5: "the used slots do not match the live entries",
    6: "the free list is corrupt",
    7: "the policy order does not list each live entry once",
}
