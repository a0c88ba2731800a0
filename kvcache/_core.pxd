# C-level declarations of the kvcache engine (see _core.pyx for the rules).
#
# A cache is a `table_t` (open-addressing index + per-entry hash and links) plus an
# `order_t` (the eviction policy's bookkeeping), all living in numpy buffers that the
# owning cdef class keeps alive.  Keys and values live in two Python lists owned by
# the class (GC-traversable); the C structs only ever see entry numbers.

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

cdef struct tlfu_shadow_t:
    # A miniature W-TinyLFU over the sampled keys (kvcache/_tinylfu.pxi): no keys, only hashes.
    uint64_t* hs              # slot -> key hash (slots 0..count-1 are live)
    int32_t* prev             # slot -> previous slot in its region's list
    int32_t* next
    int8_t* region
    int32_t* index            # open addressing over hs: slot or -1
    uint64_t imask
    uint64_t* gwin            # the shadow's own ghosts, as the real cache's
    uint64_t* gmain
    uint64_t gwmask
    uint64_t gmmask
    int32_t head[3]
    int32_t tail[3]
    Py_ssize_t size[3]
    Py_ssize_t count
    double wf
    Py_ssize_t wmax
    Py_ssize_t protmax
    int64_t gcap
    int64_t reach             # the setting it tries: window ghosts this young go to probation
    int64_t nwin
    int64_t nmev
    int64_t hits              # hits in the current epoch
    double score              # decayed hits of past epochs

cdef struct tinylfu_t:
    # Adaptive W-TinyLFU (kvcache/_tinylfu.pxi): regions are lists through table_t.prev/next.
    int8_t* region            # entry -> its region (bits 0-1) and pending hits (bits 2-5)
    entry_t head[3]           # per region: least recent entry
    entry_t tail[3]           # per region: most recent entry
    Py_ssize_t size[3]
    Py_ssize_t cap            # entries the cache may hold (maxsize): sizes the regions
    Py_ssize_t bufcap         # entries the buffers hold now: sizes the sketch and the ghosts
    Py_ssize_t wmax           # window target
    Py_ssize_t protmax        # protected target
    double wf                 # window target before rounding (moved by ghost hits)
    uint64_t* sketch          # count-min sketch: 16 4-bit counters per word
    uint64_t smask            # words - 1
    int64_t sample            # increments between two halvings
    int64_t scount
    uint64_t sthr             # shadows: a key is sampled if bits 8..31 of its hash are below this
    uint64_t* gwin            # ghost of candidates the admission rejected
    uint64_t* gmain           # ghost of entries evicted from the main region
    uint64_t gmask            # slots per ghost table - 1
    int64_t gcap              # a ghost entry counts while younger than this many events
    int64_t nwin              # window insertions so far (the clock of gwin)
    int64_t nmev              # main evictions so far (the clock of gmain)
    uint64_t gwmask           # slots of gwin - 1 (gmask: of gmain)
    int64_t reach             # a window ghost younger than this goes straight to probation
    tlfu_shadow_t shadow[2]   # miniature simulations of the two reach settings
    Py_ssize_t salloc         # slots per shadow
    Py_ssize_t scap           # entries per shadow: min(cap, salloc)
    int64_t sticks            # sampled accesses in the current epoch
    int scur                  # the shadow whose reach the cache uses

cdef struct order_t:
    int policy
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

cdef hash_t mix_hash(Py_hash_t h, uint64_t seed) noexcept nogil
cdef Py_ssize_t table_probe_free(table_t* t, hash_t h) noexcept nogil
cdef void table_remove_slot(table_t* t, Py_ssize_t slot) noexcept nogil
cdef void table_put_slot(table_t* t, Py_ssize_t slot, entry_t e) noexcept nogil
cdef Py_ssize_t table_slot_of(table_t* t, entry_t e) noexcept nogil
cdef void table_rebuild_index(table_t* t) noexcept nogil
cdef entry_t table_take_free(table_t* t) noexcept nogil
cdef void table_put_free(table_t* t, entry_t e) noexcept nogil

cdef void order_link_new(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_touch(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void order_update(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef entry_t order_victim(order_t* o, table_t* t) noexcept nogil
cdef Py_ssize_t order_fill(order_t* o, table_t* t, entry_t* out) noexcept nogil

# The W-TinyLFU policy (defined in _tinylfu.pxi, included at the end of _core.pyx)
cdef void tinylfu_link_new(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void tinylfu_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef void tinylfu_touch(order_t* o, table_t* t, entry_t e) noexcept nogil
cdef entry_t tinylfu_victim(order_t* o, table_t* t) noexcept nogil
cdef Py_ssize_t tinylfu_fill(order_t* o, table_t* t, entry_t* out) noexcept nogil
cdef void tinylfu_reset(order_t* o, table_t* t) noexcept nogil
cdef void tinylfu_set_cap(order_t* o, table_t* t, Py_ssize_t cap) noexcept nogil
cdef object tinylfu_alloc(Py_ssize_t capacity, Py_ssize_t cap, bint fresh)
cdef void tinylfu_adopt(order_t* o, object new, object old, Py_ssize_t cap) noexcept
