# cython: language_level=3, freethreading_compatible=False
"""The compiled engine of kvcache: hash table, eviction policies and the native cache classes.

Reentrancy rules (after CPython's lru_cache, Modules/_functoolsmodule.c)
-----------------------------------------------------------------------
``__hash__`` and ``__eq__`` of user keys run Python code.  That code may raise, release the
GIL (letting another thread in), or mutate this very cache.  Every method follows four rules:

1. Hash first, change nothing before a comparison.  ``hash(key)`` and every ``==`` on a stored
   key run before the first write to the structure; an exception leaves the cache unchanged.
2. Detect and restart.  ``table_t`` changes bump ``Cache._version``; a lookup that sees the
   version move across an ``==`` starts again from the top (the buffers may have been rebuilt).
3. Consistent before release.  Evicted or replaced keys and values are moved into local
   variables and released only after the structure is consistent again, because their
   ``__del__`` may run arbitrary code (including calls into this cache).
4. User callbacks outside.  ``getsizeof`` runs before any change; ``on_evict`` runs after the
   operation has finished, outside the critical section.
5. Allocate before the first write.  Allocating any object (a list, a numpy array, a tuple)
   can start the garbage collector, whose finalizers run Python code and may switch threads;
   numpy calls are Python calls and may release the GIL during a copy.  So a structural change
   contains none: a rebuild allocates all its buffers first (``_new_buffers``), checks
   that the cache is still what they were sized for (``_fits``; otherwise it drops them and the
   caller looks again), then moves everything across with memcpy and pointer swaps
   (``_adopt``).  An insertion that finds no free entry number grows and looks its key up
   again.  Sizes from ``getsizeof`` are kept as exact ints and floats, so that their sums run
   no user code either.

Threads: under the GIL, rules 1-5 are the whole locking contract: between its first write and
the structure being consistent again no operation runs Python code, so no other thread (and
no finalizer) can see a half-made change, and no lock is taken on the hit path.  Every public
method also runs inside ``cython.critical_section(self)``, a per-object lock on a free-threaded
build; the module does not declare itself free-threading compatible yet.
"""

cimport cython
cimport numpy as cnp
from cpython.object cimport Py_EQ, PyObject_RichCompareBool
from cpython.long cimport PyLong_CheckExact, PyLong_AsLongLongAndOverflow, PyLong_AsUnsignedLongLong, PyLong_FromLongLong, PyLong_FromUnsignedLongLong
from cpython.list cimport PyList_GET_ITEM, PyList_SET_ITEM
from cpython.ref cimport Py_DECREF, Py_INCREF, Py_XDECREF, PyObject
from libc.stdint cimport INT32_MAX, int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libc.string cimport memcpy, memset
from libc.math cimport INFINITY
from murmurhash.mrmr cimport hash64

import collections
import collections.abc
import decimal
import math
import numbers
import operator
import os
import random
import sys
import types

import numpy as np

cnp.import_array()

cdef extern from "Python.h":
    int Py_ReprEnter(object)
    void Py_ReprLeave(object)

__all__ = ["Cache", "FIFOCache", "LFUCache", "LRUCache", "RRCache", "CacheStats"]

CacheStats = collections.namedtuple("CacheStats", "hits misses evictions currsize maxsize",
                                    module="kvcache")    # where pickle finds it
CacheStats.__doc__ = "Counters of one cache: hits, misses, evictions, currsize, maxsize."

cdef object _MARKER = object()
cdef object _random_choice = random.choice
cdef Py_ssize_t _INITIAL_CAPACITY = 64           # grown geometrically up to the limit: an empty
                                                # cache (one per instance, per closure) is small
cdef int32_t[8] _EMPTY_INDEX = [SLOT_EMPTY] * 8     # the index of a cache not set up yet
cdef uint8_t[8] _EMPTY_TAGS = [TAG_EMPTY] * 8


# ---------------------------------------------------------------------------------------------
# Hashing
# ---------------------------------------------------------------------------------------------

cdef bint _int_hash_native = False   # set at import: does our int hash equal Python's?


cdef inline hash_t _int_hash(uint64_t seed, int64_t sv, uint64_t uv, bint unsigned) noexcept nogil:
    return mix_hash(hash_u64(uv) if unsigned else hash_i64(sv), seed)


def _check_int_hash():
    probes = [0, 1, -1, -2, 2**61 - 1, 2**61, -(2**61), 2**63 - 1, -(2**63), 12345678901234]
    return all(hash(p) == hash_i64(p) for p in probes) and hash(2**64 - 1) == hash_u64(2**64 - 1)


_int_hash_native = _check_int_hash()


cdef extern from *:
    """
    /* hash(o) for an exact int o, without calling long_hash: on 3.12+ a compact int (below
       2**30 in magnitude) is its own hash; before, CPython's algorithm (the magnitude modulo
       2**61 - 1, signed, -1 becomes -2) unrolled for up to three 30-bit digits, reading them
       in place.  0 when o is bigger or this build's layout is not the one assumed: the caller
       then asks PyObject_Hash. */
    #if PY_VERSION_HEX < 0x030B0000
    #include "longintrepr.h"            /* Python.h includes it itself from 3.11 on */
    #endif
    static inline int kv_int_hash(PyObject* o, Py_hash_t* out) {
    #if SIZEOF_PY_HASH_T == 8 && PY_VERSION_HEX >= 0x030C0000
        Py_hash_t v;
        if (!PyUnstable_Long_IsCompact((PyLongObject*)o))
            return 0;
        v = (Py_hash_t)PyUnstable_Long_CompactValue((PyLongObject*)o);   /* |v| < 2**30 */
        *out = v == -1 ? -2 : v;
        return 1;
    #elif SIZEOF_PY_HASH_T == 8 && PyLong_SHIFT == 30
        const uint64_t M = ((uint64_t)1 << 61) - 1;
        const digit* d = ((PyLongObject*)o)->ob_digit;
        Py_ssize_t n = Py_SIZE(o);
        uint64_t x;
        switch (n < 0 ? -n : n) {
        case 0: *out = 0; return 1;
        case 1: x = d[0]; break;
        case 2: x = (uint64_t)d[0] | ((uint64_t)d[1] << 30); break;      /* below 2**60 */
        case 3:
            x = ((uint64_t)d[2] << 30) + d[1];                            /* below 2**60 */
            x = ((x << 30) & M) | (x >> 31);
            x += d[0];
            if (x >= M)
                x -= M;
            break;
        default: return 0;
        }
        if (n < 0)
            x = (uint64_t)0 - x;
        *out = x == (uint64_t)-1 ? -2 : (Py_hash_t)x;
        return 1;
    #else
        return 0;
    #endif
    }
    """
    bint kv_int_hash(object o, Py_hash_t* out) noexcept


cdef bint _fast_int_hash = False     # set at import, once kv_int_hash matched hash() on probes


def _check_fast_int_hash():
    cdef Py_hash_t h
    cdef object rnd = random.Random(54321)
    probes = [0, 1, -1, -2, 2, 2**30 - 1, 2**30, -(2**30), 2**60 - 1, 2**60, -(2**60), 2**61 - 2,
              2**61 - 1, 2**61, 2**62, -(2**61 - 1), -(2**61), 2**63 - 1, -(2**63), 2**64 - 1,
              2**89, 2**90 - 1, -(2**90 - 1), 2**90, 2**200]
    probes += [rnd.getrandbits(b) * rnd.choice((1, -1)) for b in (8, 31, 45, 61, 62, 64, 75, 90)
               for _ in range(40)]
    for p in probes:
        if kv_int_hash(p, &h) and h != hash(p):
            return False
    return True


_fast_int_hash = _check_fast_int_hash()


cdef inline hash_t _set_key_hash(Cache c, object key) except? 0:
    """key_hash for insertions: an exact int's hash is computed here, not by long_hash."""
    cdef Py_hash_t ph
    if PyLong_CheckExact(key) and _fast_int_hash and kv_int_hash(key, &ph):
        return mix_hash(ph, c.t.seed)
    return mix_hash(hash(key), c.t.seed)


cdef uint64_t _random_seed():
    return int.from_bytes(os.urandom(8), "little")


# ---------------------------------------------------------------------------------------------
# The table: open addressing with linear probing over an int32 index
# ---------------------------------------------------------------------------------------------

# TAG_INT marks a slot whose key is an exact int in [0, hash modulus): Python hashes such an
# int to itself, and the stored hash is a bijection of Python's hash (MurmurHash64A of one
# word), so when the key looked up is such an int too, equal stored hashes mean equal keys:
# get_many's int path confirms a hit without loading the stored key object.  Only ints that
# the object header shows to be small get the tag (a tag is a promise, its absence is not).
cdef Py_ssize_t _INT_ID_LIMIT = <Py_ssize_t>sys.hash_info.modulus


cdef void table_rebuild_index(table_t* t) noexcept nogil:
    """Re-insert every live entry into a clean index (after the index was resized)."""
    cdef Py_ssize_t e
    cdef uint64_t nslots = t.mask + 1
    memset(t.index, 0xFF, nslots * sizeof(int32_t))   # all SLOT_EMPTY (-1)
    if t.tags != NULL:
        memset(t.tags, TAG_EMPTY, nslots)
    for e in range(t.capacity):
        if t.ent[e].prev != ENTRY_FREE:
            table_put_slot(t, table_probe_free(t, t.ent[e].hash), <entry_t>e)


# ---------------------------------------------------------------------------------------------
# Policies: each keeps only its order, as integer links (O(1) per operation)
# ---------------------------------------------------------------------------------------------

# LFU buckets -----------------------------------------------------------------------------------

cdef inline int32_t _bucket_new(order_t* o, int64_t freq, int32_t after) noexcept nogil:
    """Create an empty bucket of `freq` after bucket `after` (-1: at the front)."""
    cdef int32_t b = o.bfree
    o.bfree = o.bnext[b]
    o.bfreq[b] = freq
    o.bhead[b] = ENTRY_NONE
    o.btail[b] = ENTRY_NONE
    o.bprev[b] = after
    if after == -1:
        o.bnext[b] = o.bfirst
        o.bfirst = b
    else:
        o.bnext[b] = o.bnext[after]
        o.bnext[after] = b
    if o.bnext[b] == -1:
        o.blast = b
    else:
        o.bprev[o.bnext[b]] = b
    return b


cdef inline void _bucket_drop(order_t* o, int32_t b) noexcept nogil:
    cdef int32_t p = o.bprev[b], n = o.bnext[b]
    if p == -1:
        o.bfirst = n
    else:
        o.bnext[p] = n
    if n == -1:
        o.blast = p
    else:
        o.bprev[n] = p
    o.bnext[b] = o.bfree
    o.bfree = b


cdef inline void _bucket_append(order_t* o, table_t* t, int32_t b, entry_t e) noexcept nogil:
    o.bucket_of[e] = b
    t.ent[e].prev = o.btail[b]
    t.ent[e].next = ENTRY_NONE
    if o.btail[b] == ENTRY_NONE:
        o.bhead[b] = e
    else:
        t.ent[o.btail[b]].next = e
    o.btail[b] = e


cdef inline void _bucket_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil:
    cdef int32_t b = o.bucket_of[e]
    cdef entry_t p = t.ent[e].prev, n = t.ent[e].next
    if p == ENTRY_NONE:
        o.bhead[b] = n
    else:
        t.ent[p].next = n
    if n == ENTRY_NONE:
        o.btail[b] = p
    else:
        t.ent[n].prev = p


cdef void _lfu_insert(order_t* o, table_t* t, entry_t e, int64_t freq) noexcept nogil:
    """Link a new entry with `freq` uses; buckets are searched from the front (freq is 1 except on load)."""
    cdef int32_t b = o.bfirst, before = -1
    while b != -1 and o.bfreq[b] < freq:
        before = b
        b = o.bnext[b]
    if b == -1 or o.bfreq[b] != freq:
        b = _bucket_new(o, freq, before)
    _bucket_append(o, t, b, e)


cdef void _lfu_touch(order_t* o, table_t* t, entry_t e) noexcept nogil:
    cdef int32_t b = o.bucket_of[e]
    cdef int32_t nb = o.bnext[b]
    cdef int64_t f = o.bfreq[b] + 1
    if nb != -1 and o.bfreq[nb] == f:
        _bucket_unlink(o, t, e)
        if o.bhead[b] == ENTRY_NONE:
            _bucket_drop(o, b)
        _bucket_append(o, t, nb, e)
    elif o.bhead[b] == e and o.btail[b] == e:
        o.bfreq[b] = f                   # alone in its bucket: the bucket moves up in place
    else:
        _bucket_unlink(o, t, e)
        nb = _bucket_new(o, f, b)
        _bucket_append(o, t, nb, e)


# RR: dense array ---------------------------------------------------------------------------------

cdef inline uint64_t _rng_next(order_t* o) noexcept nogil:
    # xorshift64*: fast, good enough to pick victims, never zero
    cdef uint64_t x = o.rng
    x ^= x >> 12
    x ^= x << 25
    x ^= x >> 27
    o.rng = x
    return x * <uint64_t>0x2545F4914F6CDD1D


# Dispatch ----------------------------------------------------------------------------------------

cdef void order_link_new(order_t* o, table_t* t, entry_t e) noexcept nogil:
    """Link a new entry (table count not yet incremented)."""
    if o.ext != NULL:
        o.ext.link_new(o, t, e)
    elif o.policy == POLICY_LFU:
        _lfu_insert(o, t, e, 1)
    elif o.policy == POLICY_RR:
        o.dense[t.count] = e
        t.ent[e].prev = <entry_t>t.count
        t.ent[e].next = ENTRY_NONE
    else:
        list_append(o, t, e)


cdef void order_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil:
    """Unlink a live entry (table count not yet decremented)."""
    cdef entry_t pos, last
    cdef int32_t b
    if o.ext != NULL:
        o.ext.unlink(o, t, e)
    elif o.policy == POLICY_LFU:
        b = o.bucket_of[e]
        _bucket_unlink(o, t, e)
        if o.bhead[b] == ENTRY_NONE:
            _bucket_drop(o, b)
    elif o.policy == POLICY_RR:
        pos = t.ent[e].prev
        last = o.dense[t.count - 1]
        o.dense[pos] = last
        t.ent[last].prev = pos
    else:
        list_unlink(o, t, e)


cdef void order_touch(order_t* o, table_t* t, entry_t e) noexcept nogil:
    """Record a hit on entry e."""
    if o.policy == POLICY_LRU:
        list_move_to_end(o, t, e)
    elif o.policy == POLICY_LFU:
        _lfu_touch(o, t, e)
    elif o.ext != NULL:
        o.ext.touch(o, t, e)


cdef void order_update(order_t* o, table_t* t, entry_t e) noexcept nogil:
    """Record an assignment to the existing entry e."""
    if o.policy == POLICY_LRU or o.policy == POLICY_FIFO:
        list_move_to_end(o, t, e)
    elif o.policy == POLICY_LFU:
        _lfu_touch(o, t, e)
    elif o.ext != NULL:
        o.ext.touch(o, t, e)


cdef entry_t order_victim(order_t* o, table_t* t) noexcept nogil:
    """Return the entry the policy evicts next (the table must not be empty)."""
    if o.ext != NULL:
        return o.ext.victim(o, t)     # may move entries and record ghosts: call only to evict
    if o.policy == POLICY_LFU:
        return o.bhead[o.bfirst]
    elif o.policy == POLICY_RR:
        return o.dense[_rng_next(o) % <uint64_t>t.count]
    return o.head


cdef Py_ssize_t order_fill(order_t* o, table_t* t, entry_t* out) noexcept nogil:
    """Write the live entries in iteration order (eviction order where there is one)."""
    cdef Py_ssize_t n = 0
    cdef entry_t e
    cdef int32_t b
    if o.ext != NULL:
        return o.ext.fill(o, t, out)
    if o.policy == POLICY_LFU:
        b = o.bfirst
        while b != -1:
            e = o.bhead[b]
            while e != ENTRY_NONE:
                out[n] = e
                n += 1
                e = t.ent[e].next
            b = o.bnext[b]
    elif o.policy == POLICY_RR:
        memcpy(out, o.dense, t.count * sizeof(entry_t))
        n = t.count
    else:
        e = o.head
        while e != ENTRY_NONE:
            out[n] = e
            n += 1
            e = t.ent[e].next
    return n


# The policies' own buffers (LFU buckets, RR's dense array), kept in a cache's _Buffers ----------

cdef void order_alloc(int policy, _Buffers b, Py_ssize_t capacity) except *:
    """Allocate the arrays `policy` needs for `capacity` entries into b (may run Python code)."""
    if policy == POLICY_LFU:
        b.bucket_of = np.zeros(capacity, dtype=np.int32)
        b.bfreq = np.zeros(capacity, dtype=np.int64)
        b.bhead = np.zeros(capacity, dtype=np.int32)
        b.btail = np.zeros(capacity, dtype=np.int32)
        b.bprev = np.zeros(capacity, dtype=np.int32)
        b.bnext = np.zeros(capacity, dtype=np.int32)
    elif policy == POLICY_RR:
        b.dense = np.zeros(capacity, dtype=np.int32)


cdef void order_copy(_Buffers dst, _Buffers src, Py_ssize_t old) noexcept:
    """Copy the policy arrays of entries 0..old-1 (plain memcpy)."""
    if src.bucket_of is not None:
        _copy_prefix(dst.bucket_of, src.bucket_of, old * sizeof(int32_t))
        _copy_prefix(dst.bfreq, src.bfreq, old * sizeof(int64_t))
        _copy_prefix(dst.bhead, src.bhead, old * sizeof(int32_t))
        _copy_prefix(dst.btail, src.btail, old * sizeof(int32_t))
        _copy_prefix(dst.bprev, src.bprev, old * sizeof(int32_t))
        _copy_prefix(dst.bnext, src.bnext, old * sizeof(int32_t))
    if src.dense is not None:
        _copy_prefix(dst.dense, src.dense, old * sizeof(int32_t))


cdef void order_point(order_t* o, _Buffers b) noexcept:
    if b.bucket_of is not None:
        o.bucket_of = <int32_t*>buffer_data(b.bucket_of)
        o.bfreq = <int64_t*>buffer_data(b.bfreq)
        o.bhead = <entry_t*>buffer_data(b.bhead)
        o.btail = <entry_t*>buffer_data(b.btail)
        o.bprev = <int32_t*>buffer_data(b.bprev)
        o.bnext = <int32_t*>buffer_data(b.bnext)
    if b.dense is not None:
        o.dense = <entry_t*>buffer_data(b.dense)


cdef void order_grow(order_t* o, Py_ssize_t old, Py_ssize_t capacity) noexcept nogil:
    """Make room for entries old..capacity-1 (LFU: their buckets join the free list)."""
    cdef Py_ssize_t i
    if o.policy == POLICY_LFU:
        for i in range(capacity - 1, old - 1, -1):
            o.bnext[i] = o.bfree
            o.bfree = <int32_t>i


cdef void order_reset(order_t* o, Py_ssize_t capacity) noexcept nogil:
    """Forget every entry (the table is emptied alongside)."""
    o.head = ENTRY_NONE
    o.tail = ENTRY_NONE
    o.bfirst = -1
    o.blast = -1
    o.bfree = -1
    order_grow(o, 0, capacity)


cdef inline bint order_counts(order_t* o) noexcept nogil:
    """Does the policy keep a use count per entry (saved and restored with the entries)?"""
    return o.policy == POLICY_LFU


cdef inline int64_t order_count_of(order_t* o, entry_t e) noexcept nogil:
    return o.bfreq[o.bucket_of[e]]


cdef void order_link_counted(order_t* o, table_t* t, entry_t e, int64_t count) noexcept nogil:
    """Link a new entry with `count` uses, behind every entry of lower or equal count (loading)."""
    cdef int32_t b = o.blast
    if b == -1 or o.bfreq[b] != count:
        b = _bucket_new(o, count, o.blast)
    _bucket_append(o, t, b, e)


cdef str order_check(order_t* o):
    """Return the first broken invariant of the order's own structures, or None."""
    cdef int32_t b
    cdef int64_t lastf = 0
    if o.policy == POLICY_LFU:
        b = o.bfirst
        while b != -1:
            if o.bhead[b] == ENTRY_NONE or o.bfreq[b] <= lastf:
                return "LFU buckets are not strictly increasing and non-empty"
            lastf = o.bfreq[b]
            b = o.bnext[b]
    return None


cdef inline void order_prefetch_victim(order_t* o, table_t* t) noexcept nogil:
    """Start loading the index slot of the entry a full cache evicts next.

    Called before probing for a new key: the victim's slot is a second random memory access,
    and issued here its miss overlaps the probe's instead of following it.
    """
    cdef entry_t v
    cdef uint64_t i
    if t.count == 0:
        return                          # maxsize 0: no victim (and LFU has no first bucket)
    if o.policy <= POLICY_LRU:
        v = o.head
    elif o.policy == POLICY_LFU:
        v = o.bhead[o.bfirst]
    else:
        return
    if v < 0:
        return
    i = t.ent[v].hash & t.mask
    if t.tags != NULL:
        kv_prefetch(&t.tags[i])
    kv_prefetch(&t.index[i])


# ---------------------------------------------------------------------------------------------
# Buffers
# ---------------------------------------------------------------------------------------------

cdef void* buffer_data(object arr) noexcept:
    return cnp.PyArray_DATA(<cnp.ndarray>arr)


cdef object zeros_line_aligned(Py_ssize_t n, object dtype):
    """Return n zeros starting on a 64-byte boundary (a view into a slightly larger array).

    numpy only promises 16-byte alignment; a structure read in 64-byte blocks (the TinyLFU
    sketch) would otherwise straddle two cache lines per block.
    """
    cdef Py_ssize_t item = np.dtype(dtype).itemsize
    raw = np.zeros(n + 64 // item, dtype=dtype)
    cdef Py_ssize_t off = ((-<Py_ssize_t>buffer_data(raw)) & 63) // item
    return raw[off:off + n]


@cython.final
cdef class _Buffers:
    """The numpy arrays behind one cache's table_t and order_t (allocated once per capacity).

    Between `_new_buffers` and `_adopt` it also carries the new object lists and
    expiry arrays, so that every allocation of a rebuild happens before its first write.
    """

    def nbytes(self):
        return sum(a.nbytes for a in (self.index, self.tags, self.ent, self.bucket_of,
                                      self.bfreq, self.bhead, self.btail, self.bprev, self.bnext,
                                      self.dense) if a is not None) + \
            (self.ext.nbytes() if self.ext is not None else 0)


cdef inline void _copy_prefix(object dst, object src, Py_ssize_t nbytes) noexcept:
    """Copy the first nbytes of one buffer into another (plain memcpy: keeps the GIL)."""
    memcpy(buffer_data(dst), buffer_data(src), nbytes)


cdef extern from *:
    """
    /* Move src[0:n] into dst[0:n], where dst holds None, leaving None in src.  References
       move with the items, so no object is freed and no Python code runs. */
    static void kv_move_items(PyObject* dst, PyObject* src, Py_ssize_t n) {
        PyObject** d = ((PyListObject*)dst)->ob_item;
        PyObject** s = ((PyListObject*)src)->ob_item;
        Py_ssize_t i;
        for (i = 0; i < n; i++) {
            PyObject* none = d[i];
            d[i] = s[i];
            s[i] = none;
        }
    }
    """
    void _move_items "kv_move_items" (list dst, list src, Py_ssize_t n) noexcept


# ---------------------------------------------------------------------------------------------
# The native cache classes
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# Snapshots (issue 7): `Class.load(path)` builds a cache, `cache.load(path)` fills this one.
# The format lives in kvcache.snapshot, which installs its functions here when imported
# (`install_snapshots`; kvcache/__init__ imports it): the engine imports nothing of ours.
# ---------------------------------------------------------------------------------------------

class _ClassOrInstanceMethod:
    """Bind to the class when looked up on the class, to the instance otherwise."""

    def __init__(self, func):
        self.__func__ = func
        self.__doc__ = func.__doc__

    def __get__(self, obj, objtype=None):
        return types.MethodType(self.__func__, objtype if obj is None else obj)


class InitSignature:
    """Give a compiled class the constructor signature of `stub` (a function taking self first).

    inspect reads a compiled class's signature from the first line of its docstring, which
    allows only literal defaults; a class whose defaults are objects (random.choice,
    time.monotonic) sets `__signature__ = InitSignature(lambda self, ...: None)` instead,
    with the parameters of its __init__.  A subclass with its own __init__ or __new__ gets
    inspect's usual answer, and an instance none.
    """

    def __init__(self, stub):
        self._stub = stub

    def __get__(self, obj, objtype=None):
        if obj is None:
            for klass in objtype.__mro__:
                attrs = vars(klass)
                if attrs.get("__signature__") is self:
                    import inspect
                    sig = inspect.signature(self._stub)
                    return sig.replace(parameters=tuple(sig.parameters.values())[1:])
                if "__init__" in attrs or isinstance(attrs.get("__new__"), staticmethod):
                    break
        # AttributeError is what sends inspect on to its other ways of finding a signature
        raise AttributeError("__signature__")


def _snapshot_load(target, path, *, pickle_key=None, **kwargs):
    """Load the snapshot at `path`: ``Class.load(path, **ctor_kwargs)`` returns a new cache,
    ``cache.load(path)`` replaces this cache's contents (left untouched if the file is bad).

    Contents, order and frequencies are restored; nothing in the file is executed, and a
    malformed file raises SnapshotError (a ValueError).  With `pickle_key`, only a file signed
    with that key is accepted (see kvcache.snapshot.load for other classes' files).
    """
    if _snapshots is None:
        raise RuntimeError("snapshots need kvcache.snapshot: import kvcache")
    if isinstance(target, type):
        return _snapshots.load(target, path, pickle_key=pickle_key, **kwargs)
    if kwargs:
        raise TypeError("constructor arguments only apply to Class.load(path, ...)")
    return _snapshots.load_into(target, path, pickle_key=pickle_key)


cdef object _snapshots = None        # the module that reads and writes snapshot files


def install_snapshots(module):
    """Serve `Cache.save` and `Cache.load` with `module.save`, `.load` and `.load_into`."""
    global _snapshots
    _snapshots = module


# ---------------------------------------------------------------------------------------------
# A cache's buffers: allocated first (`_new_buffers`, may run Python code), checked (`_fits`),
# then adopted in one step of plain C (`_adopt`): rule 5 in the header
# ---------------------------------------------------------------------------------------------

cdef _Buffers _new_buffers(Cache self, Py_ssize_t capacity, bint fresh):
    """Allocate empty buffers for `capacity` entries; change nothing in the cache."""
    cdef _Buffers b = _Buffers()
    cdef uint64_t nslots = table_slots_for(capacity)
    b.capacity = capacity
    b.max_entries = self._max_entries
    b.index = np.full(nslots, SLOT_EMPTY, dtype=np.int32)
    b.tags = np.zeros(nslots, dtype=np.uint8)              # all TAG_EMPTY
    b.ent = np.zeros((capacity, 2), dtype=np.uint64)     # entry_rec: hash, prev, next
    order_alloc(self.o.policy, b, capacity)
    b.ext = self._policy_alloc(capacity, fresh)
    b.kv = [None] * (2 * capacity)
    if self._sizes is not None:
        b.sizes = [None] * capacity
    if self._exp != NULL:            # expiry buffers follow the capacity (kvcache._expiry)
        EXPIRY.new_buffers(b, capacity)
    return b


cdef bint _fits(Cache self, _Buffers b, Py_ssize_t capacity) noexcept:
    """Whether buffers allocated when the cache had `capacity` entries still suit it."""
    return self.t.capacity == capacity and b.max_entries == self._max_entries \
        and (b.sizes is None) == (self._sizes is None) \
        and (b.xexp is None) == (self._exp == NULL)


cdef void _adopt(Cache self, _Buffers b, Py_ssize_t old) noexcept:
    """Make `b` the cache's buffers, moving entries 0..old-1 into it (old 0: start empty).

    One step of plain C: the caller holds the previous object lists when old is 0, so
    that their contents are released after the cache is consistent again.
    """
    cdef _Buffers ob = self._buf         # kept alive until the copies are done
    cdef Py_ssize_t capacity = b.capacity, e, i
    if old:
        _copy_prefix(b.ent, ob.ent, old * sizeof(entry_rec))
        order_copy(b, ob, old)
        _move_items(b.kv, self._kv, 2 * old)
        if b.sizes is not None:
            _move_items(b.sizes, self._sizes, old)
    if b.ext is not None:
        self._policy_adopt(b.ext, ob.ext if old else None, b.max_entries)
    if b.xexp is not None:           # (kvcache._expiry)
        EXPIRY.adopt(self, b, old)
    self._buf = b
    _point(self, b)
    self._kv = b.kv
    b.kv = None
    if b.sizes is not None:
        self._sizes = b.sizes
        b.sizes = None
    self.t.capacity = capacity
    self.t.mask = table_slots_for(capacity) - 1
    if old:
        for e in range(capacity - 1, old - 1, -1):
            table_put_free(&self.t, <entry_t>e)
        order_grow(&self.o, old, capacity)
        table_rebuild_index(&self.t)
        _mark_int_tags(self, )
    else:
        self.t.count = 0
        self.t.free_head = ENTRY_NONE
        for e in range(capacity - 1, -1, -1):
            table_put_free(&self.t, <entry_t>e)
        self._reset_order()
    self._version += 1


cdef _allocate(Cache self, Py_ssize_t capacity):
    """Replace the contents with empty buffers for `capacity` entries."""
    cdef _Buffers b
    cdef list kv, sizes
    cdef Py_ssize_t cap0
    while True:
        cap0 = self.t.capacity
        b = _new_buffers(self, capacity, True)
        if _fits(self, b, cap0):
            break
    kv, sizes = self._kv, self._sizes    # released once the cache is consistent
    _adopt(self, b, 0)


cdef void _point(Cache self, _Buffers b) noexcept:
    self.t.index = <int32_t*>buffer_data(b.index)
    self.t.tags = <uint8_t*>buffer_data(b.tags)
    self.t.ent = <entry_rec*>buffer_data(b.ent)
    order_point(&self.o, b)


cdef void _mark_int_tags(Cache self) noexcept:
    """Set TAG_INT again on every slot of an index rebuilt from the stored hashes alone."""
    cdef uint64_t i
    cdef int32_t e
    for i in range(self.t.mask + 1):
        e = self.t.index[i]
        if e >= 0 and kv_is_small_int(<object>PyList_GET_ITEM(self._kv, 2 * e)):
            self.t.tags[i] |= TAG_INT


# A required constructor argument's default: Cython's own error for a missing positional
# argument ("takes at least 1 positional argument (0 given)") does not name it; cachetools'
# (plain Python) does, so the constructors check for this marker and raise Python's message.
_REQUIRED = object()


def _missing_args(self, tuple names):
    """Raise the TypeError Python raises when the required arguments `names` are not given."""
    quoted = ["'%s'" % n for n in names]
    listed = quoted[0] if len(quoted) == 1 else "%s and %s" % (", ".join(quoted[:-1]), quoted[-1])
    raise TypeError("%s.__init__() missing %d required positional argument%s: %s"
                    % (type(self).__name__, len(names), "" if len(names) == 1 else "s", listed))


cdef class Cache:
    # The first line is the signature inspect and help() show (a compiled class has no other):
    # keep it equal to __init__'s, and so for every class below that has one.
    "Cache(maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)\n--\n\n" \
    """Mutable mapping to serve as a simple cache or cache base class (cachetools-compatible).

    `maxsize` bounds `currsize`, the sum of `getsizeof(value)` over the entries (1 each by
    default; `math.inf` means unbounded).  Buffers start small and grow geometrically by
    rebuilding up to what `maxsize` allows; `capacity=` preallocates room for that many
    entries.  `on_evict(key, value)` is called for every entry evicted to make room (not
    for `del`, `pop`, `popitem` or `clear`), after the cache is consistent again.
    Iteration order: insertion order (least recent first).

    Thread-safety: every method may be called from many threads at once; a lookup whose
    key's `__eq__` mutates the cache restarts rather than reading a stale structure.
    """


    def __cinit__(self, *args, **kwargs):
        # An empty, valid state until _setup runs: a cache made by __new__ alone is safe to use
        # (every insertion fails with "value too large" since maxsize is 0).
        self._kv = []
        self._maxsize = 0
        self._currsize = 0
        self._native_popitem = True
        self._native_missing = True
        self._native_getitem = True
        self._native_setitem = True
        self._native_delitem = True
        self.t.index = _EMPTY_INDEX
        self.t.tags = _EMPTY_TAGS
        self.t.mask = 7
        self.t.free_head = ENTRY_NONE
        self.o.head = self.o.tail = ENTRY_NONE
        self.o.bfirst = self.o.blast = self.o.bfree = -1

    def __init__(self, maxsize=_REQUIRED, getsizeof=None, *, on_evict=None, seed=None,
                 capacity=None):
        "__init__($self, maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)" \
        "\n--\n\n" \
        "Initialize the cache (see the class for the parameters)."
        if maxsize is _REQUIRED:
            _missing_args(self, ("maxsize",))
        self._setup(maxsize, getsizeof, on_evict, seed, capacity, None)

    cdef int _policy(self):
        return POLICY_CACHE

    cdef const policy_ops_t* _policy_ops(self):
        return NULL

    cdef Py_ssize_t _initial_capacity(self, Py_ssize_t limit):
        return min(limit, _INITIAL_CAPACITY)

    cdef object _policy_alloc(self, Py_ssize_t capacity, bint fresh):
        """Allocate a policy's own buffers for `capacity` entries (None: it has none)."""
        return None

    cdef void _policy_adopt(self, object new, object old, Py_ssize_t cap) noexcept:
        """Point o at the buffers `_policy_alloc` made, carrying state over from `old` (plain C)."""
        pass

    cdef void _policy_reset(self) noexcept:
        pass

    cdef void _policy_resize(self) noexcept:
        """Follow a new _max_entries (inside the critical section)."""
        pass

    cdef str _policy_check(self):
        """Return a description of the first broken invariant of the policy's state, or None."""
        return None

    def _setup(self, maxsize, getsizeof, on_evict, seed, capacity, choice):
        """Validate the arguments and allocate the initial buffers (shared by __init__ and unpickling)."""
        cdef Py_ssize_t limit, cap
        if maxsize is None or isinstance(maxsize, (str, bytes)):
            raise TypeError("maxsize must be a number, not %s" % type(maxsize).__name__)
        if maxsize != maxsize:
            raise ValueError("maxsize must not be NaN")
        if maxsize < 0:
            raise ValueError("maxsize must be non-negative")
        if getsizeof is not None and not callable(getsizeof):
            raise TypeError("getsizeof must be callable")
        if on_evict is not None and not callable(on_evict):
            raise TypeError("on_evict must be callable")
        if choice is not None and not callable(choice):
            raise TypeError("choice must be callable")
        if seed is not None:
            if not isinstance(seed, int) or isinstance(seed, bool):
                raise TypeError("seed must be an int or None")
            if not 0 <= seed < 2**64:
                raise ValueError("seed must be in [0, 2**64)")
        if capacity is not None:
            if not isinstance(capacity, int) or isinstance(capacity, bool):
                raise TypeError("capacity must be an int or None")
            if capacity < 0:
                raise ValueError("capacity must be non-negative")
            if capacity > MAX_ENTRIES:
                raise ValueError("capacity must be at most %d" % MAX_ENTRIES)
        cls = type(self)
        self.o.policy = self._policy()
        self.o.ext = self._policy_ops()
        self._maxsize = maxsize
        self._user_getsizeof = getsizeof
        if getsizeof is not None:
            instance_dict(self)["getsizeof"] = getsizeof
            self._sizefn = getsizeof
        elif cls.getsizeof is not Cache.getsizeof:
            self._sizefn = self.getsizeof
        else:
            self._sizefn = None
        self._on_evict = on_evict
        self._choice = None if choice is _random_choice else choice
        self._seed_arg = seed
        self.t.seed = _random_seed() if seed is None else seed
        self.o.rng = (self.t.seed * <uint64_t>0x9E3779B97F4A7C15) | 1
        self._native_popitem = cls.popitem in _NATIVE_POPITEMS
        self._native_delitem = cls.__delitem__ is Cache.__delitem__
        # cachetools removes through `del self[key]` (evictions, pop, popitem): a subclass's
        # __delitem__ sees them all, so it turns the native removals off
        self._native_evict = self._native_popitem and self._native_delitem and self._choice is None
        self._native_missing = cls.__missing__ is Cache.__missing__
        self._native_getitem = cls.__getitem__ in _NATIVE_GETITEMS
        self._native_setitem = cls.__setitem__ is Cache.__setitem__
        if self._sizefn is None:
            limit = MAX_ENTRIES if maxsize >= MAX_ENTRIES else <Py_ssize_t>math.floor(maxsize)
        else:
            limit = MAX_ENTRIES
        self._max_entries = limit
        self._capacity_arg = -1 if capacity is None else capacity
        cap = capacity if capacity is not None else self._initial_capacity(limit)
        self._sizes = [] if self._sizefn is not None else None
        self._currsize = 0
        self._hits = self._misses = self._evictions = 0
        _allocate(self, max(cap, 1))

    # -- buffers ------------------------------------------------------------------------------
    #
    # A rebuild (the first buffers, growth, load) happens in two steps.  `_new_buffers`
    # allocates everything, numpy arrays and object lists alike, and changes nothing: the
    # allocations may run the GC (so finalizers and other threads) and numpy may release the
    # GIL.  The caller then checks that the cache still is what the buffers were sized for
    # (`_fits`) and `_adopt`s them: memcpy, pointer and list swaps, no Python code at all.






    cdef void _reset_order(self):
        order_reset(&self.o, self.t.capacity)
        self._policy_reset()

    cdef int _grow_for_one(self) except -1:
        """Make room for one more entry number if the cache is out of them (double the buffers).

        The allocation may run Python code, including other threads' operations on this
        cache: every caller looks its key up again afterwards.  Another thread may have grown
        the cache meanwhile; the buffers are then dropped unused.
        """
        cdef Py_ssize_t cap0 = self.t.capacity, cap
        cdef _Buffers b
        if self.t.free_head != ENTRY_NONE:
            return 0
        if cap0 >= MAX_ENTRIES:
            raise MemoryError("cache cannot hold more than %d entries" % MAX_ENTRIES)
        cap = cap0 * 2
        if cap > self._max_entries and self._max_entries > cap0:
            cap = self._max_entries
        if cap > MAX_ENTRIES:
            cap = MAX_ENTRIES
        b = _new_buffers(self, cap, False)
        if _fits(self, b, cap0) and self.t.free_head == ENTRY_NONE:
            _adopt(self, b, cap0)
        return 0

    cdef int _reserve(self, Py_ssize_t capacity) except -1:
        """Grow the buffers to at least `capacity` entries (as _grow_for_one: look up again after)."""
        cdef Py_ssize_t cap0
        cdef _Buffers b
        while self.t.capacity < capacity:
            cap0 = self.t.capacity
            b = _new_buffers(self, capacity, False)
            if _fits(self, b, cap0):
                _adopt(self, b, cap0)
        return 0


    # -- lookups ------------------------------------------------------------------------------

    # -- structural changes (no Python code may run inside these) ------------------------------

    cdef entry_t _insert_at(self, Py_ssize_t slot, hash_t h, object key, object value, object size):
        """Insert a new entry at `slot` (free entry must exist) and link it as newest."""
        cdef entry_t e = table_take_free(&self.t)
        self.t.ent[e].hash = h
        table_put_slot(&self.t, slot, e)
        if kv_is_small_int(key):
            self.t.tags[slot] |= TAG_INT
        self._kv[2 * e] = key
        self._kv[2 * e + 1] = value
        if self._sizes is not None:
            self._sizes[e] = size
            self._currsize = self._currsize + size
        order_link_new(&self.o, &self.t, e)
        self.t.count += 1
        self._version += 1
        return e

    cdef object _remove(self, entry_t e, Py_ssize_t slot):
        """Unlink entry e; return its value and leave its key in _removed_key.

        The caller takes both (into locals) and releases them once the structure is consistent.
        """
        cdef object value = self._kv[2 * e + 1]
        self._removed_key = self._kv[2 * e]
        if slot < 0:
            slot = table_slot_of(&self.t, e)
        table_remove_slot(&self.t, slot)
        order_unlink(&self.o, &self.t, e)
        if self._exp != NULL:            # drop its expiry (kvcache._expiry)
            EXPIRY.forget(self, e)
        self.t.count -= 1
        table_put_free(&self.t, e)
        self._kv[2 * e] = None
        self._kv[2 * e + 1] = None
        if self._sizes is not None:
            self._currsize = self._currsize - self._sizes[e]
            self._sizes[e] = None
            if self.t.count == 0 or self._currsize < 0:
                self._currsize = 0       # float sizes: rounding must not outlive the entries
        self._version += 1
        return value

    cdef tuple _evict_one(self):
        """Evict the policy's victim; return (key, value) (used where several are collected)."""
        cdef entry_t e
        if self.t.count == 0:            # callers check; an empty table has no victim to read
            raise KeyError("%s is empty" % type(self).__name__) from None
        e = order_victim(&self.o, &self.t)
        self._evictions += 1
        value = self._remove(e, -1)
        key = self._removed_key
        self._removed_key = None
        return (key, value)


    cdef list _dense_keys(self):
        """Return the keys of RR's dense array (in one state: allocation may let threads in)."""
        cdef Py_ssize_t i, n
        cdef list keys
        while True:
            n = self.t.count
            keys = [None] * n
            if self.t.count == n:
                break
        for i in range(n):
            keys[i] = <object>PyList_GET_ITEM(self._kv, 2 * self.o.dense[i])
        return keys

    # -- the mapping protocol --------------------------------------------------------------------

    def __len__(self):
        if self._exp != NULL:            # expired entries do not count (kvcache._expiry)
            EXPIRY.expire_now(self)
        return self.t.count

    def __contains__(self, key):
        cdef Py_ssize_t slot, e
        cdef hash_t h = key_hash(self, key)
        cdef double now = expiry_clock(self)
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            return e >= 0 and not entry_dead(self, e, now)

    def __getitem__(self, key):
        v = cache_get(self, key, _ABSENT)
        if v is not _ABSENT:
            return v
        if self._native_missing:
            raise KeyError(key)
        return self.__missing__(key)

    def __missing__(self, key):
        raise KeyError(key)

    # A method descriptor, not a Cython function: CPython's specialised call then reaches the
    # C function directly (`get = cache.get; get(k)` costs about 8 ns less per call).  The
    # docstring carries the signature in the form inspect reads from builtins.
    @cython.binding(False)
    @cython.embedsignature(False)
    def get(self, key, default=None):
        "get($self, key, default=None)\n--\n\n" \
        "Return the value for key if key is in the cache, else default (a lookup: counts and touches)."
        if not self._native_getitem:
            return self[key] if key in self else default
        return cache_get(self, key, default)

    def peek(self, key, default=None):
        """Return the value for key without counting a lookup or changing its recency or frequency."""
        cdef Py_ssize_t slot, e
        cdef hash_t h = key_hash(self, key)
        cdef double now = expiry_clock(self)
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            return self._kv[2 * e + 1] if e >= 0 and not entry_dead(self, e, now) else default

    def __setitem__(self, key, value):
        cdef Py_ssize_t slot, e
        cdef hash_t h = _set_key_hash(self, key)
        cdef object old = None
        cdef PyObject* evk = NULL        # the evicted pair, owned here until the end
        cdef PyObject* evv = NULL
        if self._exp != NULL:            # expiry in use: expire what is due, stamp the entry (kvcache._expiry)
            EXPIRY.setitem(self, key, h, value, None)
            return
        if self._sizefn is not None or not self._native_evict:
            self._set_slow(key, h, value)
            return
        with cython.critical_section(self):
            while True:
                if self.t.count >= self._max_entries:
                    _prefetch_eviction(self, h)
                e = table_find(self, key, h, &slot)
                if e >= 0:
                    old = self._kv[2 * e + 1]           # released after the update, not during it
                    self._kv[2 * e + 1] = value
                    order_update(&self.o, &self.t, <entry_t>e)
                    return
                if self._max_entries < 1:
                    raise ValueError("value too large")
                if cache_insert_new(self, slot, h, key, value, &evk, &evv) >= 0:
                    break
                self._grow_for_one()                # may run Python code: look the key up again
        if evk != NULL:
            try:
                if self._on_evict is not None:
                    self._on_evict(<object>evk, <object>evv)
            finally:
                release_pair(evk, evv)       # released last: their __del__ sees a consistent cache

    cdef _set_slow(self, object key, hash_t h, object value, double exp=INFINITY):
        """__setitem__ with a getsizeof or an overridden popitem (cachetools' exact algorithm)."""
        cdef Py_ssize_t slot, e
        cdef object size, diff, old = None
        cdef list evicted = None
        cdef object kv
        if self._sizefn is not None:
            size = checked_size(self._sizefn(value), self._maxsize)
        else:
            size = 1
            if self._max_entries < 1:
                raise ValueError("value too large")
        while True:
            with cython.critical_section(self):
                e = table_find(self, key, h, &slot)
                if self._sizes is None:
                    need = e < 0 and self.t.count >= self._max_entries
                else:
                    diff = size if e < 0 else size - self._sizes[e]
                    need = self._currsize + diff > self._maxsize
                if not need:
                    if e >= 0:
                        old = self._kv[2 * e + 1]
                        self._kv[2 * e + 1] = value
                        if self._sizes is not None:
                            self._currsize = self._currsize + diff
                            self._sizes[e] = size
                        order_update(&self.o, &self.t, <entry_t>e)
                    else:
                        if self.t.free_head == ENTRY_NONE:
                            self._grow_for_one()    # may run Python code: look the key up again
                            continue
                        e = self._insert_at(slot, h, key, value, size)
                    if self._exp != NULL:    # the entry's expiry time (kvcache._expiry)
                        EXPIRY.stamp(self, <entry_t>e, exp)
                    break
                if self._native_evict:
                    if evicted is None:
                        evicted = []
                    evicted.append(self._evict_one())
                    continue
            # a subclass hook or a choice function: user code, outside the critical section.  As
            # cachetools, an overridden popitem's result is not needed, except by on_evict, which
            # gets it once the new entry is in
            kv = self.popitem() if not self._native_popitem else self._popitem()
            self._evictions += 1
            if self._on_evict is not None:
                if evicted is None:
                    evicted = []
                evicted.append(kv)
        if evicted is not None and self._on_evict is not None:
            for kv in evicted:
                self._on_evict(kv[0], kv[1])

    def __delitem__(self, key):
        cdef Py_ssize_t slot, e
        cdef hash_t h = key_hash(self, key)
        cdef object k, v
        cdef double now = expiry_clock(self)
        cdef bint dead
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            if e < 0:
                raise KeyError(key)
            dead = entry_dead(self, e, now)
            v = self._remove(<entry_t>e, slot)
            k = self._removed_key
            self._removed_key = None
        if dead:                         # an expired key is removed, yet missing (cachetools)
            raise KeyError(key)

    def pop(self, key, default=_MARKER):
        """Remove key and return its value; return default, or raise KeyError, if it is absent."""
        cdef Py_ssize_t slot, e
        cdef hash_t h
        cdef object k, v
        cdef double now
        if not self._native_delitem:     # cachetools' pop, through the subclass's hooks
            if key in self:
                v = self[key]
                del self[key]
                return v
            if default is _MARKER:
                raise KeyError(key)
            return default
        h = key_hash(self, key)
        now = expiry_clock(self)
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            if e >= 0 and not entry_dead(self, e, now):
                v = self._remove(<entry_t>e, slot)
                k = self._removed_key
                self._removed_key = None
                return v
        if default is _MARKER:
            raise KeyError(key)
        return default

    def popitem(self):
        """Remove and return the `(key, value)` pair first inserted."""
        return self._popitem()

    cdef tuple _popitem(self):
        cdef Py_ssize_t slot, e
        cdef list keys
        if self._exp != NULL:            # expired entries go first, silently (kvcache._expiry)
            EXPIRY.expire_now(self)
        if self._choice is not None:
            with cython.critical_section(self):
                keys = self._dense_keys()
            if not keys:
                raise KeyError("%s is empty" % type(self).__name__) from None
            key = self._choice(keys)               # user code: outside the critical section
            h = key_hash(self, key)
            with cython.critical_section(self):
                e = table_find(self, key, h, &slot)
                if e < 0:
                    raise KeyError(key)
                if self._native_delitem:
                    value = self._remove(<entry_t>e, slot)
                    self._removed_key = None
                    return (key, value)
                value = self._kv[2 * e + 1]
            del self[key]                  # a subclass hook: outside the critical section
            return (key, value)
        with cython.critical_section(self):
            if self.t.count == 0:
                raise KeyError("%s is empty" % type(self).__name__) from None
            e = order_victim(&self.o, &self.t)
            if self._native_delitem:
                value = self._remove(<entry_t>e, -1)
                key = self._removed_key
                self._removed_key = None
                return (key, value)
            key = self._kv[2 * e]
            value = self._kv[2 * e + 1]
        del self[key]
        return (key, value)

    def setdefault(self, key, default=None):
        """Return the value of key (a lookup); if absent, insert key with default and return default."""
        cdef Py_ssize_t slot, e
        cdef hash_t h = key_hash(self, key)
        cdef double now = expiry_clock(self)
        with cython.critical_section(self):
            e = table_find(self, key, h, &slot)
            if e >= 0 and not entry_dead(self, e, now):
                self._hits += 1
                order_hit(&self.o, &self.t, <entry_t>e)
                return <object>PyList_GET_ITEM(self._kv, 2 * e + 1)
        self[key] = default
        return default

    def update(self, other=(), /, **kwargs):
        """Update the cache from a mapping or an iterable of pairs, then from keyword arguments."""
        if isinstance(other, collections.abc.Mapping):
            for key in other.keys():
                self[key] = other[key]
        elif hasattr(other, "keys"):
            for key in other.keys():
                self[key] = other[key]
        else:
            for key, value in other:
                self[key] = value
        for key, value in kwargs.items():
            self[key] = value

    def clear(self):
        """Remove every entry (not counted as evictions)."""
        cdef list kv = None, sizes = None, nkv, nsizes
        cdef Py_ssize_t cap
        cdef bint done = False
        while not done:
            # the new lists first: their allocation may run other threads (and grow the cache)
            cap = self.t.capacity
            nkv = [None] * (2 * cap)
            nsizes = [None] * cap if self._sizes is not None else None
            with cython.critical_section(self):
                if self.t.capacity == cap and (nsizes is None) == (self._sizes is None):
                    kv, sizes = self._kv, self._sizes   # released after the reset
                    self._kv = nkv
                    self._sizes = nsizes
                    self._currsize = 0
                    self._clear_table()
                    done = True

    cdef void _clear_table(self):
        cdef Py_ssize_t e
        memset(self.t.index, 0xFF, (self.t.mask + 1) * sizeof(int32_t))
        memset(self.t.tags, TAG_EMPTY, self.t.mask + 1)
        self.t.count = 0
        self.t.free_head = ENTRY_NONE
        for e in range(self.t.capacity - 1, -1, -1):
            table_put_free(&self.t, <entry_t>e)
        self._reset_order()
        if self._exp != NULL:            # (kvcache._expiry)
            EXPIRY.reset(self)
        self._version += 1

    # -- sizes, stats, resize -------------------------------------------------------------------

    @property
    def maxsize(self):
        """The maximum size of the cache."""
        return self._maxsize

    @property
    def currsize(self):
        """The current size of the cache."""
        if self._exp != NULL:            # expired entries do not count (kvcache._expiry)
            EXPIRY.expire_now(self)
        if self._sizes is None:
            return self.t.count
        return self._currsize

    @staticmethod
    def getsizeof(value):
        """Return the size of a cache element's value."""
        return 1

    def stats(self):
        """Return CacheStats(hits, misses, evictions, currsize, maxsize)."""
        return CacheStats(self._hits, self._misses, self._evictions, self.currsize, self._maxsize)

    def resize(self, maxsize):
        """Set a new maxsize, evicting in policy order (with on_evict) until the cache fits."""
        cdef list evicted = []
        cdef object kv
        if isinstance(maxsize, bool) or maxsize != maxsize:
            raise TypeError("maxsize must be a number")
        if maxsize < 0:
            raise ValueError("maxsize must be non-negative")
        if self._exp != NULL:            # expired entries go before any live one (kvcache._expiry)
            EXPIRY.expire_now(self)
        with cython.critical_section(self):
            self._maxsize = maxsize
            if self._sizefn is None:
                self._max_entries = MAX_ENTRIES if maxsize >= MAX_ENTRIES else <Py_ssize_t>math.floor(maxsize)
            self._policy_resize()
        while True:
            with cython.critical_section(self):
                if self.t.count == 0:
                    break
                if self._sizes is None:
                    if self.t.count <= self._max_entries:
                        break
                elif not self._currsize > self._maxsize:
                    break
                if self._native_evict:
                    evicted.append(self._evict_one())
                    continue
            kv = self.popitem() if not self._native_popitem else self._popitem()
            self._evictions += 1
            evicted.append(kv)
        if self._on_evict is not None:
            for kv in evicted:
                self._on_evict(kv[0], kv[1])

    # -- batch ------------------------------------------------------------------------------------

    def get_many(self, keys, default=None):
        """Return a list with get(key, default) for each key (int64/uint64 arrays skip per-key objects).

        ``keys`` is an iterable of keys or a 1-d numpy array; a str or bytes is refused rather
        than taken as a batch of its characters.
        """
        return _get_many(self, keys, default)

    def set_many(self, keys, values):
        """Set cache[keys[i]] = values[i] for every i (the two must have the same length).

        Bad input changes nothing: before the first store, the lengths are compared, every key
        is hashed (an unhashable one raises TypeError) and, with ``getsizeof``, every value is
        sized (so ``getsizeof`` runs twice per value; one too large raises ValueError). An
        exception from a key's ``__eq__``, a subclass's ``__setitem__`` or ``on_evict`` still
        stops the batch where it happens, with the pairs before it stored.
        """
        _set_many(self, keys, values)

    # -- iteration and views --------------------------------------------------------------------

    cdef object _order_array(self):
        """Return the live entry numbers in iteration order (int32 array)."""
        cdef cnp.ndarray arr
        cdef Py_ssize_t n
        while True:
            n = self.t.count
            arr = np.empty(n, dtype=np.int32)
            if self.t.count == n:        # the allocation may have let other threads in
                break
        if n:
            order_fill(&self.o, &self.t, <entry_t*>cnp.PyArray_DATA(arr))
        return arr

    def __iter__(self):
        with cython.critical_section(self):
            return _CacheIterator(self, 0)

    def __reversed__(self):
        with cython.critical_section(self):
            return _CacheIterator(self, 3)

    def keys(self):
        """Return a set-like view of the keys, in iteration order."""
        return _KeysView(self)

    def values(self):
        """Return a view of the values, in iteration order (no lookups are counted)."""
        return _ValuesView(self)

    def items(self):
        """Return a set-like view of the (key, value) pairs, in iteration order."""
        return _ItemsView(self)

    # -- comparison, repr, copy -----------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, collections.abc.Mapping):
            return NotImplemented
        return dict(self.items()) == dict(other.items())

    def __ne__(self, other):
        r = self.__eq__(other)
        return r if r is NotImplemented else not r

    __hash__ = None

    def __repr__(self):
        if self._exp != NULL:            # (kvcache._expiry)
            EXPIRY.expire_now(self)
        if Py_ReprEnter(self) != 0:
            return "%s(...)" % type(self).__name__
        try:
            return "%s(%r, maxsize=%r, currsize=%r)" % (
                type(self).__name__, dict(self.items()), self._maxsize, self.currsize)
        finally:
            Py_ReprLeave(self)

    @classmethod
    def __class_getitem__(cls, item):
        return types.GenericAlias(cls, item)

    def __reduce__(self):
        params = (self._maxsize, self._user_getsizeof, self._on_evict, self._seed_arg,
                  None if self._capacity_arg < 0 else self._capacity_arg, self._choice)
        if self._xp is not None:         # expiry: absolute times and the timer ride along (kvcache._expiry)
            keys, values, aux, expires = self._export_state(ttl=_ABSOLUTE)
        else:
            keys, values, aux = self._export_state()
        extra = dict(instance_dict(self))
        extra.pop("getsizeof", None)
        state = (keys, values, aux, extra, self._hits, self._misses, self._evictions)
        if self._xp is not None:
            state += (EXPIRY.getstate(self), expires)
        return (_rebuild, (type(self), params), state)

    def __setstate__(self, state):
        keys, values, aux, extra, hits, misses, evictions = state[:7]
        if len(state) > 7:               # expiry state (kvcache._expiry)
            EXPIRY.setstate(self, state[7])
            self._import_state(keys, values, aux, _expires=state[8])
        else:
            self._import_state(keys, values, aux)
        if extra:
            instance_dict(self).update(extra)
        self._hits, self._misses, self._evictions = hits, misses, evictions

    def __copy__(self):
        fn, args, state = self.__reduce__()
        obj = fn(*args)
        obj.__setstate__(state)
        return obj

    def _export_state(self, ttl=False):
        """Return (keys, values, aux) in iteration (eviction) order; aux holds LFU frequencies or None.

        Expired entries are left out.  With ttl=True a fourth item follows: each entry's
        remaining time-to-live in seconds (float64 array; inf: never expires).
        """
        return _export_state(self, ttl)

    def _import_state(self, keys, values, aux=None, ttl=None, *, _expires=None):
        """Replace the contents with keys/values in eviction order (aux: LFU frequencies).

        `ttl`: each entry's remaining time-to-live in seconds (inf or NaN: never expires).
        All checks run on a fresh cache first: on any error this cache is left untouched.
        """
        _import_state(self, keys, values, aux, ttl, _expires)

    cdef void _swap(self, Cache other):
        self.t, other.t = other.t, self.t
        self.o, other.o = other.o, self.o
        self._buf, other._buf = other._buf, self._buf
        self._kv, other._kv = other._kv, self._kv
        self._sizes, other._sizes = other._sizes, self._sizes
        self._currsize, other._currsize = other._currsize, self._currsize
        self._exp, other._exp = other._exp, self._exp      # expiry state (kvcache._expiry)
        self._xp, other._xp = other._xp, self._xp
        self._clock, other._clock = other._clock, self._clock
        self._version += other._version + 1

    def _check(self):
        """Verify every internal invariant; raise AssertionError on the first violation (for tests)."""
        _check(self)

    def _nbytes(self):
        """Bytes held by the engine for this cache, key and value objects not counted."""
        import sys
        n = self._buf.nbytes() + sys.getsizeof(self._kv)
        if self._sizes is not None:
            n += sys.getsizeof(self._sizes)
        if self._exp != NULL:            # (kvcache._expiry)
            n += EXPIRY.nbytes(self)
        return n

    # -- per-entry time-to-live (implemented in kvcache._expiry) -----------------------------------------

    def set(self, key, value, ttl=None):
        """Set cache[key] = value, expiring `ttl` seconds from now (None: the cache's default, if any, else never).

        `ttl` may be a timedelta when the timer returns datetimes.  Setting a key again
        replaces its expiry.
        """
        EXPIRY.set(self, key, value, ttl)

    def ttl_of(self, key):
        """Return the time key has left to live (seconds, or a timedelta for datetime timers); None if it never expires.

        Raises KeyError if key is absent or expired.  Not a lookup: nothing is counted or touched.
        """
        return EXPIRY.ttl_of(self, key)

    def expire(self, time=None):
        """Remove the items expired at `time` (default: now) and return their `(key, value)` pairs."""
        return EXPIRY.expire(self, time)

    @property
    def timer(self):
        """The timer used for expiry (time.monotonic by default); `with cache.timer as now:` freezes time."""
        return EXPIRY.get_timer(self)

    @timer.setter
    def timer(self, timer):
        EXPIRY.set_timer(self, timer)

    # -- snapshots (issue 7; format and checks in kvcache.snapshot) ---------------------------

    def save(self, path, *, pickle_key=None):
        """Write contents, order and frequencies to `path` atomically (temp file, fsync, rename).

        Values must be msgpack-representable (see kvcache.serialize) unless `pickle_key`
        enables signed pickle; the same key is then needed to load the file.  `pickle_key`
        signs the file (HMAC-SHA256): use it to load files from untrusted places.  Without it
        the SHA-256 trailer is a checksum against corruption, not a signature.
        """
        if _snapshots is None:
            raise RuntimeError("snapshots need kvcache.snapshot: import kvcache")
        _snapshots.save(self, path, pickle_key=pickle_key)

    load = _ClassOrInstanceMethod(_snapshot_load)


cdef int _step_entry(const void* table, uint64_t slot, const void* key) noexcept nogil:
    cdef int32_t e = (<const table_t*>table).index[slot]
    if e == (<const entry_t*>key)[0]:
        return PROBE_HIT
    return PROBE_EMPTY if e == SLOT_EMPTY else PROBE_ON


cdef Py_ssize_t table_slot_of_checked(table_t* t, entry_t e) noexcept nogil:
    """Return the slot holding entry e, or -1 if its probe chain does not reach it."""
    cdef bint hit
    cdef Py_ssize_t slot = probe(t, t.ent[e].hash, t.mask, &e, _step_entry, &hit)
    return slot if hit else -1


cdef dict instance_dict(object obj):
    return _object_getattribute(obj, "__dict__")


cdef object _object_getattribute = object.__getattribute__


cdef inline void _prefetch_eviction(Cache c, hash_t h) noexcept nogil:
    """Start loading what inserting h into a full cache will touch, before probing for it:
    the new key's index slot (written at the end) and the victim's slot."""
    kv_prefetch(&c.t.index[h & c.t.mask])
    order_prefetch_victim(&c.o, &c.t)


cdef inline void _prefetch_home(table_t* t, hash_t h) noexcept nogil:
    """Start loading the first slot of h's probe (tag and index)."""
    cdef uint64_t i = h & t.mask
    kv_prefetch(&t.tags[i])
    kv_prefetch(&t.index[i])


cdef inline void _prefetch_entry(table_t* t, list kv, hash_t h, bint objects) noexcept:
    """Start loading what a lookup of h will read after its first slot (already loaded):
    the entry record and key/value pointers, or (objects) the key and value objects and the
    LRU neighbours' records."""
    cdef uint64_t i = h & t.mask
    cdef int32_t e = t.index[i]
    cdef PyObject** items
    if e < 0:
        return
    items = kv_list_items(kv)
    if not objects:
        kv_prefetch(&t.ent[e])
        kv_prefetch(&items[2 * e])
        return
    if not (t.tags[i] & TAG_INT):
        kv_prefetch(items[2 * e])
    kv_prefetch(items[2 * e + 1])
    if t.ent[e].prev >= 0:
        kv_prefetch(&t.ent[t.ent[e].prev])
    if t.ent[e].next >= 0:
        kv_prefetch(&t.ent[t.ent[e].next])


cdef str _ABSOLUTE = "absolute"      # _export_state(ttl="absolute"): absolute times (pickling)
cdef object _ABSENT = object()      # "no such key" where None could be a value


cdef object checked_size(object size, object maxsize):
    """Return getsizeof's result as an int or float, or raise before anything changes.

    Sizes are kept as exact ints and floats so that the sums run no user code; NaN, infinite
    and negative sizes would leave the cache unbounded or stuck, so they are errors.
    """
    cdef type tp = type(size)
    if tp is not int and tp is not float:
        try:
            size = operator.index(size)
        except TypeError:
            if not isinstance(size, (numbers.Real, decimal.Decimal)):
                raise TypeError("getsizeof must return a number, not %s"
                                % type(size).__name__) from None
            size = float(size)
    if size != size or size == INFINITY or size < 0:
        raise ValueError("value size must be a finite non-negative number, not %r" % (size,))
    if size > maxsize:
        raise ValueError("value too large")
    return size


def _rebuild(cls, params):
    """Create an empty cache of `cls` with `params` (unpickling and copying)."""
    obj = cls.__new__(cls)
    Cache._setup(obj, *params)
    return obj


# ---------------------------------------------------------------------------------------------
# What Cache's batch, state and check methods run (kept out of the class body, which is the
# mapping protocol and the structural steps)
# ---------------------------------------------------------------------------------------------

cdef object _get_many(Cache self, object keys, object default):
    cdef Py_ssize_t n, i
    cdef list out
    if isinstance(keys, np.ndarray):
        if (<cnp.ndarray>keys).ndim != 1:
            raise ValueError(f"a batch of keys must be 1-d, not an array of shape {keys.shape}")
        if _int_hash_native and self._native_getitem and \
                (keys.dtype == np.int64 or keys.dtype == np.uint64):
            return _get_many_int(self, keys, default)
        keys = keys.tolist()
    elif isinstance(keys, (str, bytes)):
        raise TypeError("get_many() takes a batch of keys; wrap a single str or bytes key "
                        "in a list")
    out = []
    for key in keys:
        out.append(self.get(key, default))
    return out


cdef object _set_many(Cache self, object keys, object values):
    if isinstance(keys, np.ndarray):
        if (<cnp.ndarray>keys).ndim != 1:
            raise ValueError(f"a batch of keys must be 1-d, not an array of shape {keys.shape}")
        keys = keys.tolist()
    elif isinstance(keys, (str, bytes)):
        raise TypeError("set_many() takes a batch of keys; wrap a single str or bytes key "
                        "in a list")
    else:
        keys = list(keys)
    if isinstance(values, np.ndarray):
        if values.ndim == 0:
            raise ValueError("set_many() values must be a batch, not a 0-d array")
        values = values.tolist() if values.ndim == 1 else list(values)
    else:
        values = list(values)
    if len(keys) != len(values):
        raise ValueError("set_many: %d keys but %d values" % (len(keys), len(values)))
    for key in keys:
        if type(key) is not int and type(key) is not str:   # whose hash cannot fail
            hash(key)
    if self._sizefn is not None:
        for value in values:
            size = self._sizefn(value)
            if size > self._maxsize:
                raise ValueError("value too large")
            if size < 0:
                raise ValueError("value size must be non-negative")
    elif self._max_entries < 1 and keys:
        raise ValueError("value too large")
    for i in range(len(keys)):
        self[keys[i]] = values[i]


cdef object _export_state(Cache self, object ttl):
    cdef Py_ssize_t i, n
    cdef cnp.ndarray order
    cdef entry_t* op
    cdef int64_t* fp
    cdef double now = expiry_clock(self)
    cdef uint64_t version
    with cython.critical_section(self):
        while True:
            # the allocations below may let other threads in: start again if they changed
            # the table, so that keys, values and frequencies come from one state
            version = self._version
            order = self._order_array()
            if self._exp != NULL:    # expired entries are not exported (kvcache._expiry)
                order = EXPIRY.live_order(self, order, now)
            rem = EXPIRY.export(self, order, now, isinstance(ttl, str) and ttl == _ABSOLUTE) if ttl else None
            op = <entry_t*>cnp.PyArray_DATA(order)
            n = order.shape[0]
            keys = [self._kv[2 * op[i]] for i in range(n)]
            values = [self._kv[2 * op[i] + 1] for i in range(n)]
            aux = None
            if order_counts(&self.o):
                aux = np.empty(n, dtype=np.int64)
                fp = <int64_t*>cnp.PyArray_DATA(aux)
                for i in range(n):
                    fp[i] = order_count_of(&self.o, op[i])
            if self._version == version:
                break
    if ttl:
        return keys, values, aux, rem
    return keys, values, aux


cdef object _import_state(Cache self, object keys, object values, object aux, object ttl, object _expires):
    cdef Cache fresh
    cdef Py_ssize_t n, i, slot
    cdef hash_t h
    cdef int64_t f, last = 0
    cdef entry_t e
    cdef list evicted = []
    keys = list(keys)
    values = list(values)
    n = len(keys)
    if len(values) != n:
        raise ValueError("state has %d keys but %d values" % (n, len(values)))
    if aux is not None:
        aux = np.asarray(aux, dtype=np.int64)
        if aux.ndim != 1 or aux.shape[0] != n:
            raise ValueError("state frequencies do not match the keys")
        if not order_counts(&self.o):
            aux = None
    fresh = type(self).__new__(type(self))
    Cache._setup(fresh, self._maxsize, self._user_getsizeof, self._on_evict, self._seed_arg,
                 None if self._capacity_arg < 0 else self._capacity_arg, self._choice)
    exps = EXPIRY.import_prepare(self, fresh, n, ttl, _expires)   # expiry times (kvcache._expiry)
    if n > fresh.t.capacity:
        fresh._reserve(min(max(n, 1), MAX_ENTRIES))
    for i in range(n):
        key = keys[i]
        value = values[i]
        h = key_hash(fresh, key)
        size = checked_size(fresh._sizefn(value), fresh._maxsize) if fresh._sizefn is not None else None
        if table_find(fresh, key, h, &slot) >= 0:
            raise ValueError("state holds the key %r twice" % (key,))
        if fresh.t.free_head == ENTRY_NONE:
            fresh._grow_for_one()        # fresh is ours alone: the key is still absent
        slot = table_probe_free(&fresh.t, h)
        if aux is not None:
            f = aux[i]
            if f < 1 or f < last:
                raise ValueError("state frequencies must be positive and in eviction order")
            last = f
            e = fresh._insert_at(slot, h, key, value, size)
            # re-link with the saved frequency: appended behind equal or lower frequencies
            order_unlink(&fresh.o, &fresh.t, e)
            fresh.t.count -= 1
            order_link_counted(&fresh.o, &fresh.t, e, f)
            fresh.t.count += 1
        else:
            e = fresh._insert_at(slot, h, key, value, size)
        if exps is not None:         # (kvcache._expiry)
            EXPIRY.stamp(fresh, e, exps[i])
    with cython.critical_section(self):
        self._swap(fresh)
    # a state bigger than maxsize is trimmed in policy order, like resize()
    self.resize(self._maxsize)


cdef object _check(Cache self):
    cdef Py_ssize_t e, n = 0, nfree = 0, i, nlive = 0
    cdef int32_t b
    cdef int64_t lastf = 0
    with cython.critical_section(self):
        cap = self.t.capacity
        for e in range(cap):
            if self.t.ent[e].prev == ENTRY_FREE:
                nfree += 1
                if self._kv[2 * e] is not None or self._kv[2 * e + 1] is not None:
                    raise AssertionError("free entry %d still holds objects" % e)
            else:
                nlive += 1
                i = table_slot_of_checked(&self.t, <entry_t>e)
                if i < 0:
                    raise AssertionError("live entry %d is not reachable in the index" % e)
                if self.t.ent[e].hash != key_hash(self, self._kv[2 * e]):
                    raise AssertionError("entry %d has a stale hash" % e)
        if nlive != self.t.count or nfree + nlive != cap:
            raise AssertionError("count %d, live %d, free %d, capacity %d"
                                 % (self.t.count, nlive, nfree, cap))
        e = self.t.free_head
        n = 0
        while e != ENTRY_NONE:
            n += 1
            if n > cap or self.t.ent[e].prev != ENTRY_FREE:
                raise AssertionError("free list is corrupt")
            e = self.t.ent[e].next
        if n != nfree:
            raise AssertionError("free list holds %d of %d free entries" % (n, nfree))
        order = self._order_array()
        if len(set(order.tolist())) != self.t.count:
            raise AssertionError("policy order does not list each live entry once")
        msg = self._policy_check()
        if msg is not None:
            raise AssertionError(msg)
        msg = order_check(&self.o)
        if msg is not None:
            raise AssertionError(msg)
        if self._sizes is not None:
            total = 0
            for e in order.tolist():
                total += self._sizes[e]
            if total != self._currsize and not (
                    isinstance(total, float) and math.isclose(total, self._currsize,
                                                              rel_tol=1e-9, abs_tol=1e-9)):
                raise AssertionError("currsize %r != sum of sizes %r" % (self._currsize, total))
            if self._currsize > self._maxsize:
                raise AssertionError("currsize above maxsize")
            if self.t.count == 0 and self._currsize != 0:
                raise AssertionError("an empty cache has currsize %r" % (self._currsize,))
        elif self.t.count > self._max_entries:
            raise AssertionError("more entries than maxsize")
        used = 0
        for i in range(self.t.mask + 1):
            if self.t.index[i] != SLOT_EMPTY:
                used += 1
            if (self.t.tags[i] & ~TAG_INT) != (TAG_EMPTY if self.t.index[i] == SLOT_EMPTY else
                                               slot_tag(self.t.ent[self.t.index[i]].hash)):
                raise AssertionError("tag of slot %d does not match the index" % i)
            if self.t.tags[i] & TAG_INT and not (
                    PyLong_CheckExact(self._kv[2 * self.t.index[i]]) and
                    0 <= self._kv[2 * self.t.index[i]] < _INT_ID_LIMIT):
                raise AssertionError("slot %d is tagged as a small int but holds %r"
                                     % (i, self._kv[2 * self.t.index[i]]))
        if used != self.t.count:
            raise AssertionError("%d used slots for %d entries" % (used, self.t.count))
        if self._exp != NULL:        # the radix heap of expiry times (kvcache._expiry)
            EXPIRY.check(self)


cdef list _get_many_int(Cache self, cnp.ndarray arr, object default):
    # arr is 1-d int64 or uint64 (checked by get_many).
    # Software pipeline: a key's hash is computed and its index slot prefetched 32 keys
    # ahead, its entry record and key/value pointers 16 ahead, and its key and value objects
    # and LRU neighbours 8 ahead, so the random accesses of successive keys overlap
    # instead of following one another.  Prefetches only: the lookups, counts and touches
    # happen in key order exactly as in a loop of get().
    cdef Py_ssize_t n = arr.shape[0], i, j
    cdef bint unsigned = arr.dtype == np.uint64
    # Read in place only when aligned and contiguous (ascontiguousarray alone keeps an
    # unaligned buffer, whose int64 loads are undefined behaviour in C).
    cdef cnp.ndarray carr = arr if cnp.PyArray_ISCARRAY_RO(arr) else np.array(arr, order="C")
    cdef int64_t* sp = <int64_t*>cnp.PyArray_DATA(carr)
    cdef uint64_t* up = <uint64_t*>cnp.PyArray_DATA(carr)
    cdef list out = [default] * n
    cdef Py_ssize_t e
    cdef hash_t[32] ring
    cdef hash_t h, hi
    cdef double now = expiry_clock(self)
    for j in range(32 if n > 32 else n):
        ring[j] = _int_hash(self.t.seed, sp[j], up[j], unsigned)
    for i in range(n):
        with cython.critical_section(self):
            hi = ring[i & 31]                    # its slot takes the hash of key i + 32
            j = i + 32
            if j < n:
                h = _int_hash(self.t.seed, sp[j], up[j], unsigned)
                ring[j & 31] = h
                _prefetch_home(&self.t, h)
            if i + 16 < n:
                _prefetch_entry(&self.t, self._kv, ring[(i + 16) & 31], False)
            if i + 8 < n:
                _prefetch_entry(&self.t, self._kv, ring[(i + 8) & 31], True)
            e = _find_int(self, sp[i], up[i], unsigned, hi)
            if e >= 0 and entry_dead(self, e, now):   # expired: a miss (kvcache._expiry)
                e = -1
            if e >= 0:
                self._hits += 1
                order_touch(&self.o, &self.t, <entry_t>e)
                out[i] = self._kv[2 * e + 1]
                continue
            elif e == -1:
                self._misses += 1
                continue
        # a stored key equal to this int is not an exact int (1.0, True...): the generic path
        key = PyLong_FromUnsignedLongLong(up[i]) if unsigned else PyLong_FromLongLong(sp[i])
        out[i] = self.get(key, default)
    return out


cdef Py_ssize_t _find_int(Cache self, int64_t sv, uint64_t uv, bint unsigned, hash_t h) except -3:
    """Find an int key given as a C integer (h: its hash): entry, -1 if absent, -2 if a slow
    comparison is needed."""
    cdef uint64_t i = h & self.t.mask
    cdef int32_t e
    cdef int overflow
    cdef long long v
    cdef PyObject* other
    cdef uint8_t tag = slot_tag(h), tg
    cdef bint id_int = uv < <uint64_t>_INT_ID_LIMIT if unsigned else 0 <= sv < _INT_ID_LIMIT
    while True:
        tg = self.t.tags[i]
        if tg == TAG_EMPTY:
            return -1
        e = self.t.index[i]
        if (tg & ~TAG_INT) == tag and self.t.ent[e].hash == h:
            if id_int and tg & TAG_INT:
                return e                                # equal hashes, equal ints (TAG_INT)
            other = PyList_GET_ITEM(self._kv, 2 * e)   # borrowed: no Python code runs below
            if not PyLong_CheckExact(<object>other):
                return -2
            v = PyLong_AsLongLongAndOverflow(<object>other, &overflow)
            if overflow == 0:
                if unsigned:
                    if v >= 0 and <uint64_t>v == uv:
                        return e
                elif v == sv:
                    return e
            elif unsigned and overflow > 0 and uv > <uint64_t>0x7FFFFFFFFFFFFFFF:
                if PyLong_AsUnsignedLongLong(<object>other) == uv:
                    return e
        i = (i + 1) & self.t.mask


cdef class FIFOCache(Cache):
    "FIFOCache(maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)\n--\n\n" \
    """First In First Out (FIFO) cache; assigning to an existing key re-inserts it (as cachetools).

    Iteration order: first in first.
    """

    cdef int _policy(self):
        return POLICY_FIFO

    def popitem(self):
        """Remove and return the `(key, value)` pair first inserted."""
        return self._popitem()


cdef class LRUCache(Cache):
    "LRUCache(maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)\n--\n\n" \
    """Least Recently Used (LRU) cache.

    Iteration order: least recently used first.  `in`, `peek` and iteration do not count as use.
    """

    cdef int _policy(self):
        return POLICY_LRU

    def popitem(self):
        """Remove and return the `(key, value)` pair least recently used."""
        return self._popitem()


cdef class LFUCache(Cache):
    "LFUCache(maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)\n--\n\n" \
    """Least Frequently Used (LFU) cache; ties go to the least recently used of the least frequent.

    Every lookup hit and every assignment counts as one use.  Iteration order: eviction order
    (lowest frequency first, least recent first within a frequency).
    """

    cdef int _policy(self):
        return POLICY_LFU

    def popitem(self):
        """Remove and return the `(key, value)` pair least frequently used."""
        return self._popitem()


cdef class RRCache(Cache):
    """Random Replacement (RR) cache.

    With the default `choice` (random.choice) victims come from a fast built-in generator,
    deterministic under `seed=`; any other `choice` is called as cachetools does, with the
    list of keys.  Iteration order: arbitrary (a dense array where removals swap in the last).
    """

    # the signature shown by inspect and help(): keep it equal to __init__'s
    __signature__ = InitSignature(
        lambda self, maxsize, choice=random.choice, getsizeof=None, *, on_evict=None, seed=None,
               capacity=None: None)

    def __init__(self, maxsize=_REQUIRED, choice=random.choice, getsizeof=None, *, on_evict=None,
                 seed=None, capacity=None):
        if maxsize is _REQUIRED:
            _missing_args(self, ("maxsize",))
        self._setup(maxsize, getsizeof, on_evict, seed, capacity, choice)

    cdef int _policy(self):
        return POLICY_RR

    @property
    def choice(self):
        """The `choice` function used by the cache."""
        return _random_choice if self._choice is None else self._choice

    def popitem(self):
        """Remove and return a random `(key, value)` pair."""
        return self._popitem()

    def __reduce__(self):
        fn, args, state = Cache.__reduce__(self)
        # the built-in generator's position travels too: a copy draws the victims the original would
        return (fn, args, (state, self.o.rng))

    def __setstate__(self, state):
        if len(state) != 2:              # pickled before the generator travelled
            Cache.__setstate__(self, state)
            return
        rng = state[1]
        if not isinstance(rng, int) or not 0 < rng < 2**64:
            raise ValueError("state holds an invalid random generator position")
        Cache.__setstate__(self, state[0])
        self.o.rng = rng



# popitem methods that are the engine's own (`_popitem`): a class using one evicts in C.  Parts
# defining cache classes register theirs.
cdef set _NATIVE_POPITEMS = {Cache.popitem, FIFOCache.popitem, LRUCache.popitem, LFUCache.popitem,
                             RRCache.popitem}
cdef set _NATIVE_GETITEMS = {Cache.__getitem__}
cdef set _NATIVE_GETS = {Cache.get}


cdef void register_native_lookup(object getitem, object get):
    # a part's own __getitem__ and get (a policy's hit path) that keep Cache's contract
    _NATIVE_GETITEMS.add(getitem)
    _NATIVE_GETS.add(get)


cdef bint native_get(type cls):
    """Is cls.get the engine's (Cache.get or a policy's registered one)?"""
    return cls.get in _NATIVE_GETS


cdef void register_native_popitem(object method):
    _NATIVE_POPITEMS.add(method)


# ---------------------------------------------------------------------------------------------
# The expiry layer's hooks: kvcache._expiry registers the real ones on import
# ---------------------------------------------------------------------------------------------

cdef class ExpiryHooks:
    """The engine's view of expiry; this base serves caches while no expiry layer is loaded."""

    cdef double now(self, Cache c) except? -1:
        return 0.0

    cdef uint64_t bumps(self, Cache c) noexcept:
        return 0

    cdef void stamp(self, Cache c, entry_t e, double exp) noexcept:
        pass

    cdef void forget(self, Cache c, entry_t e) noexcept:
        pass

    cdef object expire_now(self, Cache c):
        return None

    cdef object setitem(self, Cache c, object key, hash_t h, object value, object ttl):
        raise RuntimeError("kvcache._expiry is not loaded")

    cdef void reset(self, Cache c) noexcept:
        pass

    cdef object new_buffers(self, _Buffers b, Py_ssize_t capacity):
        return None

    cdef void adopt(self, Cache c, _Buffers b, Py_ssize_t old) noexcept:
        pass

    cdef tuple getstate(self, Cache c):
        return None

    cdef object setstate(self, Cache c, tuple st):
        raise RuntimeError("kvcache._expiry is not loaded")

    cdef object live_order(self, Cache c, object order, double now):
        return order

    cdef object export(self, Cache c, object order, double now, bint absolute):
        return None

    cdef object import_prepare(self, Cache c, Cache fresh, Py_ssize_t n, object ttl, object expires):
        if ttl is not None or expires is not None:
            raise RuntimeError("kvcache._expiry is not loaded")
        return None

    cdef object check(self, Cache c):
        return None

    cdef Py_ssize_t nbytes(self, Cache c) except -1:
        return 0

    cdef object set(self, Cache c, object key, object value, object ttl):
        if ttl is not None:
            raise RuntimeError("kvcache._expiry is not loaded")
        c[key] = value

    cdef object ttl_of(self, Cache c, object key):
        if key not in c:
            raise KeyError(key)
        return None

    cdef object expire(self, Cache c, object time):
        return []

    cdef object get_timer(self, Cache c):
        raise RuntimeError("kvcache._expiry is not loaded")

    cdef object set_timer(self, Cache c, object timer):
        raise RuntimeError("kvcache._expiry is not loaded")

    cdef double scale(self, Cache c) except? -1:
        return 1.0


EXPIRY = ExpiryHooks()


cdef void register_expiry(ExpiryHooks hooks):
    global EXPIRY
    EXPIRY = hooks


cdef inline uint64_t _iter_version(Cache c) noexcept:
    # Iterators fail on any change but expiry: len(), currsize or expire() may remove expired
    # entries while a loop runs (list(cache) itself calls len()); the iterator skips them.
    if c._xp is None:
        return c._version
    return c._version - EXPIRY.bumps(c)


# ---------------------------------------------------------------------------------------------
# Iteration: a snapshot of the order, checked against the version on every step
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _CacheIterator:

    def __cinit__(self, Cache cache, int mode):
        self.cache = cache
        self.order = cache._order_array()
        self.op = <entry_t*>cnp.PyArray_DATA(<cnp.ndarray>self.order)
        self.n = len(self.order)
        self.pos = 0
        self.version = _iter_version(cache)     # expirations do not count (kvcache._expiry)
        self.mode = mode

    def __iter__(self):
        return self

    def __next__(self):
        cdef Cache c = self.cache
        cdef entry_t e
        cdef double now = expiry_clock(c)
        if self.pos >= self.n:
            raise StopIteration
        with cython.critical_section(c):
            if _iter_version(c) != self.version:
                self.pos = self.n
                raise RuntimeError("cache changed size during iteration")
            while True:
                if self.mode == 3:
                    e = self.op[self.n - 1 - self.pos]
                else:
                    e = self.op[self.pos]
                self.pos += 1
                if not entry_dead(c, e, now) and c.t.ent[e].prev != ENTRY_FREE:
                    break
                if self.pos >= self.n:  # expired entries are skipped (kvcache._expiry)
                    raise StopIteration
            if self.mode == 1:
                return c._kv[2 * e + 1]
            if self.mode == 2:
                return (c._kv[2 * e], c._kv[2 * e + 1])
            return c._kv[2 * e]

    def __length_hint__(self):
        return self.n - self.pos


def _own_iter(cache):
    """Whether iteration follows a class's own __iter__ (TTLCache's tolerant walk, a subclass's).

    The views then walk it as collections.abc's views do, reading values with peek.
    """
    return type(cache).__iter__ is not Cache.__iter__


class _KeysView(collections.abc.KeysView):
    __slots__ = ()

    def __iter__(self):
        if _own_iter(self._mapping):
            return iter(self._mapping)
        return _CacheIterator(self._mapping, 0)

    def __reversed__(self):
        return reversed(self._mapping)


class _ValuesView(collections.abc.ValuesView):
    __slots__ = ()

    def __iter__(self):
        m = self._mapping
        if _own_iter(m):
            return (v for v in (m.peek(k, _MARKER) for k in m) if v is not _MARKER)
        return _CacheIterator(m, 1)

    def __contains__(self, value):
        for v in self:
            if v is value or v == value:
                return True
        return False


class _ItemsView(collections.abc.ItemsView):
    __slots__ = ()

    def __iter__(self):
        m = self._mapping
        if _own_iter(m):
            return ((k, v) for k, v in ((k, m.peek(k, _MARKER)) for k in m) if v is not _MARKER)
        return _CacheIterator(m, 2)

    def __contains__(self, item):
        key, value = item
        v = self._mapping.peek(key, _MARKER)
        return v is not _MARKER and (v is value or v == value)


collections.abc.MutableMapping.register(Cache)

