# C-level declarations of the kvcache engine (see _core.pyx for the rules).
#
# A cache is a `table_t` (open-addressing index + per-entry hash and links) plus an
# `order_t` (the eviction policy's bookkeeping), all living in numpy buffers that the
# owning cdef class keeps alive.  Keys and values live in two Python lists owned by
# the class (GC-traversable); the C structs only ever see entry numbers.

cimport cython
cimport numpy as cnp
from cpython.object cimport Py_EQ, PyObject_RichCompareBool
from cpython.list cimport PyList_SET_ITEM
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint32_t, uint64_t

ctypedef int32_t entry_t      # an entry number; ENTRY_NONE when there is none
ctypedef uint64_t hash_t      # a MurmurHash-mixed hash

cdef enum:
    ENTRY_NONE = -1
    ENTRY_FREE = -2           # prev[e] of an entry on the free list
    SLOT_EMPTY = -1
    TAG_EMPTY = 0             # tags[slot]: 0 empty, else 0x80 | TAG_INT? | top 6 hash bits
    TAG_INT = 0x40            # the slot's key is an exact int whose hash is itself

cdef enum policy_t:
    POLICY_CACHE = 0          # insertion order; updates do not move (cachetools.Cache)
    POLICY_FIFO = 1           # insertion order; an update re-inserts (cachetools.FIFOCache)
    POLICY_LRU = 2
    POLICY_LFU = 3            # frequency buckets; LRU among the least frequent
    POLICY_RR = 4             # random replacement over a dense array of entries
    POLICY_TINYLFU = 5        # reserved for the adaptive W-TinyLFU policy

cdef struct entry_rec:        # one 16-byte record per entry: a hit touches one cache line
    hash_t hash               # the mixed hash
    entry_t prev              # previous entry in its list (ENTRY_FREE when free)
    entry_t next              # next entry in its list / next free entry

cdef struct table_t:
    int32_t* index            # slot -> entry number or SLOT_EMPTY (no tombstones: see table_remove_slot)
    uint8_t* tags             # slot -> tag (or NULL: no tags kept); a miss reads only these
    uint64_t mask             # number of slots - 1 (a power of two)
    entry_rec* ent            # entry -> record
    Py_ssize_t capacity       # number of entry numbers
    Py_ssize_t count          # live entries
    entry_t free_head         # first free entry number
    uint64_t seed             # MurmurHash seed

cdef struct tlfu_regions_t:
    # The region bookkeeping of one W-TinyLFU (kvcache/_tinylfu.pyx), the real cache's and each
    # shadow's alike: three LRU lists linked through an entry_rec array that the owner passes
    # (the table's t.ent; a shadow's own), their targets, and the two ghost tables.
    int8_t* region            # entry -> its region (bits 0-1); the real cache: pending hits (bits 2-5)
    entry_t head[3]           # per region: least recent entry
    entry_t tail[3]           # per region: most recent entry
    Py_ssize_t size[3]
    Py_ssize_t protmax        # protected target
    Py_ssize_t wmax           # window target
    double wf                 # window target before rounding (moved by ghost hits)
    Py_ssize_t cap            # entries the regions may hold: sizes the targets
    uint64_t* gwin            # ghosts of candidates the admission rejected
    uint64_t* gmain           # ghosts of entries evicted from the main region
    uint64_t gwmask           # slots of gwin - 1
    uint64_t gmmask           # slots of gmain - 1
    int64_t gcap              # a ghost counts while younger than this many events of its clock
    int64_t reach             # a window ghost younger than this goes straight to probation
    int64_t nwin              # window insertions so far (the clock of gwin)
    int64_t nmev              # main evictions so far (the clock of gmain)

cdef struct tlfu_shadow_t:
    # A miniature W-TinyLFU over the sampled keys: no keys, only hashes.  Its slots are a
    # table_t's entries (the hash and the region links; no tags; slots 0..count-1 are live).
    tlfu_regions_t rg
    table_t t
    int64_t hits              # hits in the current epoch
    double score              # decayed hits of past epochs

cdef struct tinylfu_t:
    # Adaptive W-TinyLFU (kvcache/_tinylfu.pyx): regions are lists through table_t.ent's links.
    tlfu_regions_t rg         # rg.cap: maxsize
    uint64_t* sketch          # count-min sketch: 16 4-bit counters per word
    uint64_t smask            # words - 1
    int64_t sample            # increments between two halvings
    int64_t scount
    uint64_t sthr             # shadows: a key is sampled if bits 8..31 of its hash are below this
    Py_ssize_t bufcap         # entries the buffers hold now: sizes the sketch and the ghosts
    tlfu_shadow_t shadow[2]   # miniature simulations of the two reach settings
    Py_ssize_t salloc         # slots per shadow
    Py_ssize_t scap           # entries per shadow: min(cap, salloc)
    int64_t sticks            # sampled accesses in the current epoch
    int scur                  # the shadow whose reach the cache uses

cdef struct policy_ops_t

cdef struct order_t:
    int policy
    const policy_ops_t* ext   # a policy defined in another part (TinyLFU): its functions
    entry_t head              # oldest / next victim (list policies)
    entry_t tail              # newest
    # LFU: buckets of equal frequency in a list sorted by frequency, each a list of entries
    int32_t* bucket_of        # entry -> bucket
    int64_t* bfreq            # bucket -> frequency
    entry_t* bhead            # bucket -> its least recent entry
    entry_t* btail            # bucket -> its most recent entry
    int32_t* bprev
    int32_t* bnext
    int32_t bfirst            # lowest-frequency bucket
    int32_t blast
    int32_t bfree             # free list of buckets (through bnext)
    # RR: entries packed in dense[0:count]; prev[e] holds e's position
    entry_t* dense
    uint64_t rng              # xorshift64* state
    tinylfu_t tl


cdef struct kv_clock_t:
    # The state of a cache's timer that a lookup reads (kvcache._expiry's _Timer holds it)
    int nesting               # > 0 while frozen (`with cache.timer as now:`)
    double frozen             # the frozen time, as a double
    bint c_clock              # the timer is time.monotonic, read in C when needed


cdef struct policy_ops_t:
    # A policy kept outside the engine (kvcache._tinylfu) plugs into the order layer through
    # these; the engine's own policies (FIFO, LRU, LFU, RR) are branches of the order_* functions.
    void (*link_new)(order_t* o, table_t* t, entry_t e) noexcept nogil
    void (*unlink)(order_t* o, table_t* t, entry_t e) noexcept nogil
    void (*touch)(order_t* o, table_t* t, entry_t e) noexcept nogil
    entry_t (*victim)(order_t* o, table_t* t) noexcept nogil
    Py_ssize_t (*fill)(order_t* o, table_t* t, entry_t* out) noexcept nogil


cdef enum:
    MAX_RESTARTS = 1000       # a lookup restarted this often by concurrent mutation gives up
    MAX_ENTRIES = 2147483646  # entry numbers are int32 (INT32_MAX - 1)

cdef extern from *:
    """
    #define KV_PYHASH_MODULUS ((((uint64_t)1) << 61) - 1)
    """
    const uint64_t PYHASH_MODULUS "KV_PYHASH_MODULUS"   # CPython's int hash modulus (64-bit)


# ---------------------------------------------------------------------------------------------
# C helpers every part inlines
# ---------------------------------------------------------------------------------------------

cdef extern from *:
    """
    /* MurmurHash64A over one 8-byte word (murmurhash's hash64 of those 8 bytes on a
       little-endian machine; tests/test_digest.py checks it): the one mixer of every table
       (the engine's, the vector cache's, the block pool's, TinyLFU's shadows), inlined into
       each lookup. */
    static inline uint64_t kv_murmur64a_word(uint64_t k, uint64_t seed) {
        const uint64_t m = 0xc6a4a7935bd1e995ULL;
        uint64_t h = seed ^ (8 * m);
        k *= m; k ^= k >> 47; k *= m;
        h ^= k; h *= m;
        h ^= h >> 47; h *= m; h ^= h >> 47;
        return h;
    }
    /* A hint that a cache line is about to be read; nothing where no intrinsic is known. */
    #if defined(__GNUC__) || defined(__clang__)
    #define kv_prefetch(p) __builtin_prefetch((const void*)(p))
    #elif defined(_MSC_VER) && (defined(_M_X64) || defined(_M_IX86))
    #include <xmmintrin.h>
    #define kv_prefetch(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
    #else
    #define kv_prefetch(p) ((void)(p))
    #endif
    /* a == b, decided without running Python code: 1 or 0 for two exact ints or two exact
       strs (their comparisons are C code that cannot fail) and for tuples of up to eight
       items that are identical or such scalars (lru_cache's keys); -1 when it might run
       Python code. Borrowed references are enough, since nothing can drop the objects. */
    static inline int kv_scalar_eq(PyObject* a, PyObject* b) {
        if (Py_TYPE(a) != Py_TYPE(b) || !(PyLong_CheckExact(a) || PyUnicode_CheckExact(a)))
            return -1;
        return PyObject_RichCompareBool(a, b, Py_EQ);
    }
    static inline int kv_plain_eq(PyObject* a, PyObject* b) {
        Py_ssize_t n, i;
        int eq;
        if (!PyTuple_CheckExact(a) || !PyTuple_CheckExact(b))
            return kv_scalar_eq(a, b);
        n = PyTuple_GET_SIZE(a);
        if (n != PyTuple_GET_SIZE(b))
            return 0;
        if (n > 8)
            return -1;
        for (i = 0; i < n; i++) {
            PyObject* x = PyTuple_GET_ITEM(a, i);
            PyObject* y = PyTuple_GET_ITEM(b, i);
            if (x == y)
                continue;
            eq = kv_scalar_eq(x, y);
            if (eq <= 0)
                return eq;
        }
        return 1;
    }
    /* Is o an exact int that its header alone shows to be in [0, 2**60) (below the hash
       modulus on 64-bit builds)?  Never reads beyond the header: this runs on every insert. */
    static inline int kv_is_small_int(PyObject* o) {
        if (!PyLong_CheckExact(o))
            return 0;
    #if SIZEOF_PY_HASH_T != 8
        return 0;
    #elif PY_VERSION_HEX >= 0x030C0000
        return PyUnstable_Long_IsCompact((PyLongObject*)o) &&
               PyUnstable_Long_CompactValue((PyLongObject*)o) >= 0;
    #else
        return Py_SIZE(o) >= 0 && Py_SIZE(o) <= 2;    /* two digits of at most 30 bits */
    #endif
    }
    static inline PyObject** kv_list_items(PyObject* list) { return ((PyListObject*)list)->ob_item; }
    /* time.monotonic() read in C: on Linux CPython reads CLOCK_MONOTONIC and divides the
       nanoseconds by 1e9 exactly like this, so both give the same doubles.  Elsewhere the
       Python function is called. */
    #if defined(__linux__)
    #include <time.h>
    #define KV_HAVE_CLOCK 1
    static inline double kv_monotonic_coarse(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    static inline double kv_coarse_resolution(void) {
        struct timespec ts;
        if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) != 0) return -1.0;
        return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
    }
    static inline double kv_monotonic(void) {
        struct timespec ts;
        long long ns;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        if (ns % 1000000000LL == 0) return (double)(ns / 1000000000LL);
        return (double)ns / 1e9;
    }
    #else
    #define KV_HAVE_CLOCK 0
    static inline double kv_monotonic(void) { return 0.0; }
    static inline double kv_monotonic_coarse(void) { return 0.0; }
    static inline double kv_coarse_resolution(void) { return -1.0; }
    #endif
    /* A hit needs the time only to confirm that the entry has not expired.  With
       time.monotonic on Linux, an entry whose expiry is more than this margin ahead of the
       kernel's coarse clock (updated every tick, never more than a tick behind
       CLOCK_MONOTONIC: 1-10 ms) is alive for certain, and the coarse clock costs a fifth of
       the precise one.  Only entries that close to expiring read the precise clock.
       (inf: no coarse clock, always precise.)  Computed once per module that inlines it. */
    static double kv_coarse_margin_value = -1.0;
    static inline double kv_coarse_margin(void) {
        if (kv_coarse_margin_value < 0) {
            double r = KV_HAVE_CLOCK ? kv_coarse_resolution() : -1.0;
            kv_coarse_margin_value = r > 0 ? (16 * r > 0.05 ? 16 * r : 0.05) : HUGE_VAL;
        }
        return kv_coarse_margin_value;
    }
    """
    uint64_t kv_murmur64a_word(uint64_t k, uint64_t seed) noexcept nogil
    void kv_prefetch(const void* p) noexcept nogil
    int kv_plain_eq(PyObject* a, PyObject* b)
    bint kv_is_small_int(object key) noexcept   # may key's slot carry TAG_INT?
    PyObject** kv_list_items(object lst) noexcept nogil
    PyObject** kv_list_items_borrowed "kv_list_items" (PyObject* lst) noexcept nogil
    double kv_monotonic() noexcept nogil
    double kv_monotonic_coarse() noexcept nogil
    double kv_coarse_margin() noexcept nogil
    int KV_HAVE_CLOCK


cdef inline hash_t mix_hash(Py_hash_t h, uint64_t seed) noexcept nogil:
    """Spread Python's hash (often the identity for ints) over 64 bits: the one mixer."""
    return kv_murmur64a_word(<uint64_t>h, seed)


cdef inline Py_hash_t hash_i64(int64_t v) noexcept nogil:
    """hash(int(v)) as CPython computes it on 64-bit builds, with no object."""
    cdef uint64_t a
    cdef Py_hash_t r
    if v < 0:
        a = <uint64_t>(-(v + 1)) + 1
        r = -<Py_hash_t>(a % PYHASH_MODULUS)
    else:
        r = <Py_hash_t>(<uint64_t>v % PYHASH_MODULUS)
    if r == -1:
        r = -2
    return r


cdef inline Py_hash_t hash_u64(uint64_t v) noexcept nogil:
    return <Py_hash_t>(v % PYHASH_MODULUS)


cdef inline uint8_t slot_tag(hash_t h) noexcept nogil:
    """The tag of a used slot, without its TAG_INT bit (compare with `tags[i] & ~TAG_INT`)."""
    return <uint8_t>(0x80 | (h >> 58))


# The one probe loop ------------------------------------------------------------------------------
# Every open-addressing table here probes linearly from a home slot; the tables differ only in
# what a slot holds. `probe` walks the slots and asks the table's own `step` about each: the
# vector cache's key slots, the block pool's digests, TinyLFU's shadow index, the simulator and
# the engine's consistency check all use it (the engine's lookups keep their tag-array loops:
# table_find's comparison runs Python code and may restart).  `step` is a static function, so
# the compiler inlines it into each caller.

cdef enum:
    PROBE_ON = 0              # not this slot: go on
    PROBE_HIT = 1             # this slot holds the key
    PROBE_EMPTY = 2           # an empty slot: the key is absent (insert here)

ctypedef int (*probe_step_t)(const void* table, uint64_t slot, const void* key) noexcept nogil


cdef inline Py_ssize_t probe(const void* table, uint64_t home, uint64_t mask, const void* key,
                             probe_step_t step, bint* hit) noexcept nogil:
    """Return the slot where `step` stops (hit or empty) walking from home; -1 if none does."""
    cdef uint64_t i = home & mask
    cdef uint64_t n = 0
    cdef int r
    while True:
        r = step(table, i, key)
        if r != PROBE_ON:
            hit[0] = r == PROBE_HIT
            return <Py_ssize_t>i
        i = (i + 1) & mask
        n += 1
        if n > mask:                  # every slot visited: a full (or corrupt) table ends here
            hit[0] = False
            return -1


# The table (open addressing, linear probing, backward-shift deletion) --------------------------
cdef inline uint64_t table_slots_for(Py_ssize_t capacity) noexcept nogil:
    """Index size for `capacity` entries: a power of two, at most half full of live entries."""
    cdef uint64_t n = 8
    while n < <uint64_t>capacity * 2:
        n <<= 1
    return n

cdef void table_rebuild_index(table_t* t) noexcept nogil


cdef inline Py_ssize_t table_probe_free(table_t* t, hash_t h) noexcept nogil:
    """Return the first empty slot on h's probe chain (the key must be absent)."""
    cdef uint64_t i = h & t.mask
    if t.tags != NULL:                  # the small tag array answers without the index
        while t.tags[i] >= 0x80:
            i = (i + 1) & t.mask
        return <Py_ssize_t>i
    while t.index[i] >= 0:
        i = (i + 1) & t.mask
    return <Py_ssize_t>i


cdef inline Py_ssize_t table_slot_of(table_t* t, entry_t e) noexcept nogil:
    """Return the slot holding entry e (found by its stored hash, no key comparison)."""
    cdef hash_t h = t.ent[e].hash
    cdef uint64_t i = h & t.mask
    cdef uint8_t tag
    if t.tags != NULL:                  # read the index only where the tag matches
        tag = slot_tag(h)
        while (t.tags[i] & ~TAG_INT) != tag or t.index[i] != e:
            i = (i + 1) & t.mask
        return <Py_ssize_t>i
    while t.index[i] != e:
        i = (i + 1) & t.mask
    return <Py_ssize_t>i


cdef inline void table_put_slot(table_t* t, Py_ssize_t slot, entry_t e) noexcept nogil:
    """Point the empty `slot` at entry e, whose hash is already stored."""
    t.index[slot] = e
    if t.tags != NULL:
        t.tags[slot] = slot_tag(t.ent[e].hash)


cdef inline void table_remove_slot(table_t* t, Py_ssize_t slot) noexcept nogil:
    """Empty `slot` by backward-shift deletion (Knuth's Algorithm R for linear probing).

    Later members of the probe run move back into the hole when their home slot is not
    between the hole and where they are, so every run stays unbroken without tombstones:
    probes stay as short as the live load factor makes them, however many keys came and
    went. Any slot found before a removal must be looked up again after it.
    """
    cdef uint64_t mask = t.mask, i = <uint64_t>slot, j = i, home
    cdef int32_t e
    while True:
        j = (j + 1) & mask
        e = t.index[j]
        if e == SLOT_EMPTY:
            break
        home = t.ent[e].hash & mask
        if ((j - home) & mask) >= ((j - i) & mask):
            t.index[i] = e
            if t.tags != NULL:
                t.tags[i] = t.tags[j]
            i = j
    t.index[i] = SLOT_EMPTY
    if t.tags != NULL:
        t.tags[i] = TAG_EMPTY


cdef inline entry_t table_take_free(table_t* t) noexcept nogil:
    cdef entry_t e = t.free_head
    t.free_head = t.ent[e].next
    t.ent[e].prev = ENTRY_NONE
    t.ent[e].next = ENTRY_NONE
    return e


cdef inline void table_put_free(table_t* t, entry_t e) noexcept nogil:
    t.ent[e].prev = ENTRY_FREE
    t.ent[e].next = t.free_head
    t.free_head = e




# The order layer: every policy-specific step goes through these -------------------------------
cdef inline void list_append(order_t* o, table_t* t, entry_t e) noexcept nogil:
    t.ent[e].prev = o.tail
    t.ent[e].next = ENTRY_NONE
    if o.tail == ENTRY_NONE:
        o.head = e
    else:
        t.ent[o.tail].next = e
    o.tail = e


cdef inline void list_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil:
    cdef entry_t p = t.ent[e].prev, n = t.ent[e].next
    if p == ENTRY_NONE:
        o.head = n
    else:
        t.ent[p].next = n
    if n == ENTRY_NONE:
        o.tail = p
    else:
        t.ent[n].prev = p


cdef inline void list_move_to_end(order_t* o, table_t* t, entry_t e) noexcept nogil:
    if o.tail != e:
        list_unlink(o, t, e)
        list_append(o, t, e)


cdef void order_link_new(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_touch(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_update(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef entry_t order_victim(order_t* o, table_t* t) noexcept nogil
cdef Py_ssize_t order_fill(order_t* o, table_t* t, entry_t* out) noexcept nogil


cdef void order_reset(order_t* o, Py_ssize_t capacity) noexcept nogil


cdef inline bint order_hit_moves(order_t* o) noexcept nogil:
    """Does a hit change the order (FIFO and RR ignore hits)?"""
    return o.policy == POLICY_LRU or o.policy == POLICY_LFU or o.ext != NULL


cdef inline void order_hit(order_t* o, table_t* t, entry_t e) noexcept nogil:
    """Record a lookup hit: LRU's move is inlined into every caller, the rest dispatched."""
    if o.policy == POLICY_LRU:
        list_move_to_end(o, t, e)
    elif o.ext != NULL:
        o.ext.touch(o, t, e)
    else:
        order_touch(o, t, e)


# ---------------------------------------------------------------------------------------------
# Buffers and the cache classes
# ---------------------------------------------------------------------------------------------

cdef void* buffer_data(object arr) noexcept
cdef object zeros_line_aligned(Py_ssize_t n, object dtype)


cdef class _Buffers:
    cdef object index, tags, ent, bucket_of, bfreq, bhead, btail, bprev, bnext, dense
    cdef object ext                  # a policy's own buffers (TinyLFU), with an nbytes() method
    cdef Py_ssize_t capacity
    cdef Py_ssize_t max_entries      # the cache's entry limit the buffers were sized for
    cdef list kv, sizes              # only until adopted
    cdef object xexp, xlink, xbkt    # only until adopted: expiry buffers (kvcache._expiry)


# The policies' own buffers live in a cache's _Buffers: allocated (may run Python code), then
# pointed at (plain C)
cdef void order_alloc(int policy, _Buffers b, Py_ssize_t capacity) except *
cdef void order_point(order_t* o, _Buffers b) noexcept


cdef class Cache


cdef class ExpiryHooks:
    # What the engine asks of the expiry layer (kvcache._expiry implements it and registers one
    # instance with `register_expiry` when imported).  Cache._xp holds a cache's own expiry
    # state, opaque here; Cache._exp its per-entry expiry times (NULL: no expiry in use).
    cdef double now(self, Cache c) except? -1             # NaN: the C clock, read when needed
    cdef uint64_t bumps(self, Cache c) noexcept           # version bumps that were expirations
    cdef void stamp(self, Cache c, entry_t e, double exp) noexcept
    cdef void forget(self, Cache c, entry_t e) noexcept
    cdef object expire_now(self, Cache c)
    cdef object setitem(self, Cache c, object key, hash_t h, object value, object ttl)
    cdef void reset(self, Cache c) noexcept
    cdef object new_buffers(self, _Buffers b, Py_ssize_t capacity)
    cdef void adopt(self, Cache c, _Buffers b, Py_ssize_t old) noexcept
    cdef tuple getstate(self, Cache c)
    cdef object setstate(self, Cache c, tuple st)
    cdef object live_order(self, Cache c, object order, double now)
    cdef object export(self, Cache c, object order, double now, bint absolute)
    cdef object import_prepare(self, Cache c, Cache fresh, Py_ssize_t n, object ttl, object expires)
    cdef object check(self, Cache c)
    cdef Py_ssize_t nbytes(self, Cache c) except -1
    cdef object set(self, Cache c, object key, object value, object ttl)
    cdef object ttl_of(self, Cache c, object key)
    cdef object expire(self, Cache c, object time)
    cdef object get_timer(self, Cache c)
    cdef object set_timer(self, Cache c, object timer)
    cdef double scale(self, Cache c) except? -1           # timer units per second


cdef class Cache:
    cdef table_t t
    cdef order_t o
    cdef _Buffers _buf
    cdef list _kv                    # key of entry e at 2*e, its value at 2*e+1 (one cache line)
    cdef list _sizes                 # per-entry sizes, only when a getsizeof is in use
    cdef object _maxsize
    cdef object _currsize            # sum of sizes when a getsizeof is in use
    cdef object _sizefn              # the getsizeof callable, or None for "1 per entry"
    cdef object _user_getsizeof      # what the user passed (for pickling)
    cdef object _on_evict
    cdef object _removed_key         # handed from _remove to its caller (see _remove)
    cdef object _choice              # RR: user choice function, or None for the built-in RNG
    cdef object _seed_arg
    cdef Py_ssize_t _max_entries     # entry limit when sizes are all 1
    cdef Py_ssize_t _capacity_arg
    cdef uint64_t _version           # bumped by every change to table_t (not by reordering)
    cdef Py_ssize_t _hits, _misses, _evictions
    cdef bint _native_popitem        # False when a subclass overrides popitem()
    cdef bint _native_evict          # evict in C: popitem not overridden, no choice function
    cdef bint _native_missing        # False when a subclass defines __missing__
    cdef bint _native_getitem        # False when a subclass overrides __getitem__
    cdef bint _native_setitem        # False when a subclass overrides __setitem__
    cdef bint _native_delitem        # False when a subclass overrides __delitem__
    # expiry (kvcache._expiry): NULL / None until a time-to-live is first used, so a cache
    # without expiry pays one pointer test per operation and no memory
    cdef double* _exp                # entry -> expiry time (+inf: never)
    cdef object _xp                  # the expiry layer's state for this cache
    cdef const kv_clock_t* _clock    # its timer's state (inside _xp's timer), NULL without _xp
    cdef dict __dict__
    cdef object __weakref__

    # the policy: FIFO/LRU/LFU/RR are the order layer's; a class in another part overrides these
    cdef int _policy(self)
    cdef const policy_ops_t* _policy_ops(self)
    cdef Py_ssize_t _initial_capacity(self, Py_ssize_t limit)
    cdef object _policy_alloc(self, Py_ssize_t capacity, bint fresh)
    cdef void _policy_adopt(self, object new, object old, Py_ssize_t cap) noexcept
    cdef void _policy_reset(self) noexcept
    cdef void _policy_resize(self) noexcept
    cdef str _policy_check(self)

    cdef void _reset_order(self)
    cdef int _grow_for_one(self) except -1
    cdef int _reserve(self, Py_ssize_t capacity) except -1
    cdef entry_t _insert_at(self, Py_ssize_t slot, hash_t h, object key, object value, object size)
    cdef object _remove(self, entry_t e, Py_ssize_t slot)
    cdef tuple _evict_one(self)
    cdef list _dense_keys(self)
    cdef _set_slow(self, object key, hash_t h, object value, double exp=*)
    cdef tuple _popitem(self)
    cdef void _clear_table(self)
    cdef object _order_array(self)
    cdef void _swap(self, Cache other)


cdef class FIFOCache(Cache):
    pass


cdef class LRUCache(Cache):
    pass


cdef class LFUCache(Cache):
    pass


cdef class RRCache(Cache):
    pass


cdef class _CacheIterator:
    cdef Cache cache
    cdef object order          # int32 array of entry numbers
    cdef entry_t* op
    cdef Py_ssize_t pos, n
    cdef uint64_t version
    cdef int mode              # 0 keys, 1 values, 2 items; +3 reversed keys


cdef ExpiryHooks EXPIRY          # the registered expiry layer (a do-nothing one until then)
cdef void register_expiry(ExpiryHooks hooks)
cdef void register_native_popitem(object method)
cdef void register_native_lookup(object getitem, object get)
cdef bint native_get(type cls)
cdef dict instance_dict(object obj)
cdef object checked_size(object size, object maxsize)


# ---------------------------------------------------------------------------------------------
# The hot path, inlined into every part that looks keys up
# ---------------------------------------------------------------------------------------------

cdef inline hash_t key_hash(Cache c, object key) except? 0:
    return mix_hash(hash(key), c.t.seed)


cdef inline bint expired_at(double exp, double now) noexcept nogil:
    if exp == INFINITY:
        return False
    if now != now:
        if exp - kv_monotonic_coarse() > kv_coarse_margin():
            return False
        now = kv_monotonic()
    return not (now < exp)


cdef inline bint entry_dead(Cache c, Py_ssize_t e, double now) noexcept nogil:
    """Has entry e expired at `now` (NaN: the C clock, read when needed)?  False without expiry."""
    return c._exp != NULL and expired_at(c._exp[e], now)


cdef inline double resolve_clock(double now) noexcept nogil:
    """The time itself, where `now` may be NaN (the C clock, not read yet)."""
    return kv_monotonic() if now != now else now


cdef inline double expiry_clock(Cache c) except? -1:
    """The time for a lookup (read before the critical section): 0 when no expiry is in use.

    NaN for the C clock (read later, only if an entry is close to expiring: expired_at).
    """
    if c._exp == NULL:
        return 0.0
    if c._clock != NULL:
        if c._clock.nesting:
            return c._clock.frozen
        if c._clock.c_clock:
            return NAN
    return EXPIRY.now(c)


cdef inline Py_ssize_t table_find(Cache self, object key, hash_t h, Py_ssize_t* slot_out) except -2:
    """Return key's entry (or -1 and the slot to insert it at); may run key.__eq__."""
    cdef uint64_t i
    cdef int32_t e
    cdef PyObject* po
    cdef int eq, restarts = 0
    cdef uint64_t version
    cdef object other
    cdef uint8_t tag = slot_tag(h), tg
    while True:
        i = h & self.t.mask
        version = self._version
        while True:
            # the tags alone answer most probes: a miss never reads an entry record
            tg = self.t.tags[i]
            if tg == TAG_EMPTY:
                slot_out[0] = <Py_ssize_t>i
                return -1
            if (tg & ~TAG_INT) == tag and self.t.ent[self.t.index[i]].hash == h:
                e = self.t.index[i]
                po = kv_list_items(self._kv)[2 * e]
                if po == <PyObject*>key:
                    slot_out[0] = <Py_ssize_t>i     # identity: no reference taken, no Python code
                    return e
                eq = kv_plain_eq(po, <PyObject*>key)  # ints, strs, their tuples: no reference either
                if eq < 0:
                    other = <object>po              # a strong reference: __eq__ may drop the entry
                    eq = PyObject_RichCompareBool(other, key, Py_EQ)
                    if self._version != version:
                        break                       # mutated by __eq__ (or another thread): restart
                if eq:
                    slot_out[0] = <Py_ssize_t>i
                    return e
            i = (i + 1) & self.t.mask
        restarts += 1
        if restarts > MAX_RESTARTS:
            raise RuntimeError("cache mutated during lookup too many times")


cdef inline Py_ssize_t cache_count(Cache c, object key, hash_t h, double now) except -2:
    """A counted lookup, with the hit not yet given to the policy: find key, treat an expired
    entry as absent, record the hit or miss.

    `now` is the expiry clock read before the critical section (0 when no TTL is in use).
    """
    cdef Py_ssize_t slot
    cdef Py_ssize_t e
    e = table_find(c, key, h, &slot)
    if e >= 0 and entry_dead(c, e, now):        # expired: a miss
        e = -1
    if e < 0:
        c._misses += 1
        return -1
    c._hits += 1
    return e


cdef inline Py_ssize_t cache_lookup(Cache c, object key, hash_t h, double now) except -2:
    """A counted lookup whose hit the policy records (cache_count, then order_hit)."""
    cdef Py_ssize_t e = cache_count(c, key, h, now)
    if e >= 0:
        order_hit(&c.o, &c.t, <entry_t>e)
    return e


cdef inline object cache_get(Cache c, object key, object default):
    """The value of key after a counted lookup (Cache.__getitem__ and get), else `default`."""
    cdef Py_ssize_t e
    cdef hash_t h = key_hash(c, key)
    cdef double now = expiry_clock(c)
    with cython.critical_section(c):
        e = cache_lookup(c, key, h, now)
        if e >= 0:
            return <object>kv_list_items(c._kv)[2 * e + 1]
    return default


cdef inline void prefetch_victim(Cache c) noexcept:
    """Start loading all that evicting the next victim of a list policy reads and writes.

    Called at the end of an eviction: the Python code until the next insertion hides the
    misses on the victim's index slot and on its key and value objects (their reference
    counts drop when they leave).
    """
    cdef entry_t v = c.o.head
    cdef uint64_t i, mask = c.t.mask
    cdef int32_t e
    cdef PyObject** items
    if v < 0:
        return
    i = c.t.ent[v].hash & mask
    kv_prefetch(&c.t.tags[i])
    kv_prefetch(&c.t.index[i])
    # The backward-shift deletion reads the records of the entries after the victim's slot
    # (its home slot, mostly): read the index there now, so that they load early too.
    e = c.t.index[(i + 1) & mask]
    if e >= 0:
        kv_prefetch(&c.t.ent[e])
        e = c.t.index[(i + 2) & mask]
        if e >= 0:
            kv_prefetch(&c.t.ent[e])
    items = kv_list_items_borrowed(<PyObject*>c._kv)
    kv_prefetch(items[2 * v])
    kv_prefetch(items[2 * v + 1])
    v = c.t.ent[v].next                 # and the records of the victim after it
    if v >= 0:
        kv_prefetch(&c.t.ent[v])
        kv_prefetch(&items[2 * v])


cdef inline entry_t cache_insert_new(Cache c, Py_ssize_t slot, hash_t h, object key, object value,
                                     PyObject** evk, PyObject** evv) except -2:
    """Insert a key known to be absent, evicting the policy's victim if the cache is full.

    `slot` comes from a lookup made at the current version.  For caches counted one per entry
    with native eviction and no expiry (the caller checks `plain_store`).  An evicted pair is
    handed back in evk/evv as owned references (NULL when nothing was evicted): the caller
    releases them, with `release_pair`, once it has left the critical section.  Returns -1,
    changing nothing, when the cache may grow but has no free entry number: the caller then
    calls `_grow_for_one` and looks the key up again.
    """
    cdef entry_t e
    evk[0] = NULL
    evv[0] = NULL
    if c.t.count < c._max_entries:
        if c.t.free_head == ENTRY_NONE:
            return -1
        return c._insert_at(slot, h, key, value, None)
    # Evict and insert in one step: the victim's entry number takes the new key, and its key
    # and value move out to evk/evv without passing through the free list or the lists.
    cdef entry_t n
    cdef bint listed = c.o.policy <= POLICY_LRU      # FIFO, LRU, insertion order: a list
    if listed:
        e = c.o.head
    else:
        e = order_victim(&c.o, &c.t)
    table_remove_slot(&c.t, table_slot_of(&c.t, e))
    if listed:                                  # the oldest entry moves to the newest end
        n = c.t.ent[e].next
        if n != ENTRY_NONE:
            c.t.ent[n].prev = ENTRY_NONE
            c.o.head = n
            c.t.ent[c.o.tail].next = e
            c.t.ent[e].prev = c.o.tail
            c.t.ent[e].next = ENTRY_NONE
            c.o.tail = e
    else:
        order_unlink(&c.o, &c.t, e)
        c.t.count -= 1
    slot = table_probe_free(&c.t, h)            # the removal may have emptied a slot before ours
    c.t.ent[e].hash = h
    table_put_slot(&c.t, slot, e)
    if kv_is_small_int(key):
        c.t.tags[slot] |= TAG_INT
    evk[0] = kv_list_items(c._kv)[2 * e]
    evv[0] = kv_list_items(c._kv)[2 * e + 1]
    Py_INCREF(key)
    Py_INCREF(value)
    PyList_SET_ITEM(c._kv, 2 * e, key)
    PyList_SET_ITEM(c._kv, 2 * e + 1, value)
    if not listed:
        order_link_new(&c.o, &c.t, e)
        c.t.count += 1
    c._version += 1
    c._evictions += 1
    if listed:
        prefetch_victim(c)                     # the next insertion's victim, while Python runs
    return e


cdef inline bint plain_store(Cache c):
    """True when an insertion may go through cache_insert_new (no sizes, hooks or expiry)."""
    return c._sizefn is None and c._native_evict and c._native_setitem and c._exp == NULL \
        and c._max_entries >= 1


cdef inline void release_pair(PyObject* k, PyObject* v) noexcept:
    Py_XDECREF(k)
    Py_XDECREF(v)
