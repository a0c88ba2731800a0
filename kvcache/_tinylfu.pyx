# cython: language_level=3, freethreading_compatible=False
# Adaptive W-TinyLFU: TinyLFUCache, a policy plugged into the engine's order layer.
#
# The policy (TinyLFUCache), after Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient
# Cache Admission Policy" (ACM ToS 2017) and Caffeine:
#
# * A new entry enters an LRU *window*.  An entry pushed out of the window while the cache is
#   full is a *candidate* for the *main* region, a segmented LRU (probation 20%, protected 80%):
#   it is admitted only if a count-min sketch says it was used more often than the main region's
#   victim (the least recent probation entry), else it is evicted itself.  A hit in probation
#   promotes to protected; protected overflow is demoted to probation.
# * The sketch: 4 rows of 4-bit counters, 16 per word, one word per entry (at least 256 words:
#   small caches still see keys far outside themselves).  Every access (hit, insertion,
#   assignment) adds one (a hit's one waits in its entry: see _sketch_settle); after
#   20 * max(entries, 32) additions every counter is halved, so the history spans about twenty
#   cache turnovers.  A candidate must beat the victim by a margin
#   of one (estimate > victim's + 1): ties, and differences one collision can make, keep the
#   incumbent, which is what makes loops and scans unable to flush or churn the cache.
# * Adaptation (ARC's ghost rule applied to the window/main split, instead of Caffeine's hill
#   climber whose samples of 10 * maxsize accesses are too slow and noisy for short traces):
#   two small ghost tables remember the hashes of candidates the admission rejected and of
#   entries evicted from main.  A miss on a key the window recently rejected means a larger
#   window would have hit: the window target grows by max(1, |ghost main| / |ghost window|).
#   A miss on a key recently evicted from main shrinks it by the inverse ratio.  "Recently"
#   is within a quarter of the cache size in the ghost's own clock (window insertions, main
#   evictions): 15% of the cache size; only hits a modestly larger region would really have
#   caught count, so a loop longer than the cache does not pull the window open.  The window
#   ranges over [1, maxsize-1].
# * A key found in the window ghost is inserted straight into probation, past the admission
#   (ARC moves a hit in its recency ghost to the frequency side; S3-FIFO sends ghost hits to
#   its main queue) if it was rejected within the adaptation's reach, or, when the cache's
#   `reach` says so, within a whole cache size: the margin rejects more candidates, and this
#   is how the ones with real reuse get in.  Whether the long reach pays depends on the
#   workload (block traces gain up to 1.5 points, some CPU-address and loop traces lose up to
#   3), so two miniature simulations decide (Waldspurger et al., "Cache Modeling and
#   Optimization using Miniature Simulations", USENIX ATC 2017): two shadow caches of
#   min(maxsize, 256) entries, identical to this one but for the reach (a cache size / none),
#   replay the keys whose hash falls in a 256/maxsize sample (all keys for small caches) with
#   the real sketch; after every shadow-size (at least 16) sampled accesses their hit counts
#   are decayed (x0.9) into scores, and the cache takes the other reach when that shadow
#   leads by more than one standard deviation.  On the traces of shared/traces, margin, long
#   reach and shadows took the mean gap to OPT from 4.57 to 4.33 points (best peer chosen
#   per point: 4.36) and the worst shortfall against the best peer from 2.4 to 1.2.
# * No random admission ("jitter") as in Caffeine: it defends against crafted hash collisions,
#   which the per-process MurmurHash seed already prevents, and it costs hits on loops.
# * No doorkeeper (the paper's Bloom filter that takes a key's first access instead of the
#   sketch; Caffeine dropped it too).  Tried in this policy (4, 8 or 16 bits per entry, two
#   probes, cleared at every halving), it took the mean gap to OPT on shared/traces from 4.33 to
#   4.39-4.40 points and the worst shortfall against the best peer from 1.4 to 2.6-2.7 (16
#   seeds): both goals lost, for a sketch that is already one word per entry.
#
# Everything hashes from the entry's MurmurHash (mix_hash of hash(key) with the cache's seed): the
# sketch through a remix of it (see _sketch_estimate), the ghosts by its high 32 bits.  The sketch
# and the ghost tables are sized by the entry buffers and grow with them (the sketch by
# duplication, which keeps every estimate an upper bound of the true count).  A ghost table is
# direct-mapped with one 8-byte slot per 2 entries (window) or per 8 entries (main), so a newer
# ghost may overwrite an older one: the adaptation only needs the rate of ghost hits, which a
# sample preserves.  Memory beyond an LRUCache: about 8-16 bytes per entry of sketch, 5-10 of
# ghosts, 1 for the region byte, and about 15 KB for the shadows.
#
# A cache filled only by insertions (no evictions yet) records no ghosts, so growing the
# ghost tables while filling loses nothing.

cimport cython
cimport numpy as cnp
from cpython.list cimport PyList_GET_ITEM
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, sqrt
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint64_t
from libc.string cimport memcpy, memset

from kvcache._core cimport *

import math

import numpy as np

from kvcache._core import Cache

cnp.import_array()

__all__ = ["TinyLFUCache"]

cdef enum:
    TLFU_WINDOW = 0
    TLFU_PROBATION = 1
    TLFU_PROTECTED = 2
    _TLFU_REGION = 3                      # region byte: bits 0-1 the region,
    _TLFU_PEND1 = 4                       # bits 2-5 the pending hits (see _sketch_settle)
    _TLFU_PEND_FULL = 60

cdef double _TLFU_WINDOW0 = 0.01          # initial window: 1% (Caffeine's)
cdef double _TLFU_PROTECTED = 0.8         # protected share of main (SLRU 20/80)
cdef int64_t _TLFU_SAMPLE = 20            # halving period in multiples of the entries
cdef Py_ssize_t _TLFU_SAMPLE_FLOOR = 32   # ... and of at least this many entries
cdef uint64_t _TLFU_MIN_WORDS = 256       # smallest sketch: 4096 counters (2 KiB)
cdef double _TLFU_GHOST = 0.15            # adaptation reach of the ghosts, as a share of maxsize
cdef uint64_t _TLFU_GWIN_DIV = 2          # window-ghost slots: one per 2 entries
cdef uint64_t _TLFU_GMAIN_DIV = 8         # main-ghost slots: one per 8 entries
cdef Py_ssize_t _TLFU_SHADOW = 256        # entries per shadow (larger caches sample keys): the
                                          # cost per access is 256/maxsize of two shadow accesses
                                          # (mostly cache misses: ~2 ns per hit at 100k entries);
                                          # 128 halves it, 1024 cuts the gap to OPT by 0.013
cdef double _TLFU_DECAY = 0.9             # weight of the past epochs' shadow hits
cdef uint64_t _TLFU_ODD = 0x7777777777777777


cdef inline uint64_t _tlfu_mix(uint64_t h) noexcept nogil:
    # The sketch's index derivation, not a second table hash: it spreads bits of the entry's
    # hash, already mix_hash'ed, which the table (low bits: slot), the ghosts (high 32 bits) and
    # the shadow sampling (bits 8-31) use, so that sketch blocks and counters are independent
    # of them.  One multiply is enough for that; mix_hash here (kv_murmur64a_word(h, 0)), tried
    # for one mixer, left hit ratios within seed noise (shared/traces, 58 points, seeds 1-16:
    # mean gap to OPT 4.333 -> 4.331, paired difference -0.002 +- 0.003) but cost 26 more
    # instructions per insertion with eviction (three multiplies, on every increment and both
    # estimates of a duel), and it would misaddress every counter of a saved sketch.
    h ^= h >> 33
    h *= <uint64_t>0xff51afd7ed558ccd
    h ^= h >> 33
    return h


# Caffeine's block layout: a key's four counters lie in one 64-byte block of eight words
# (row i picks one word of the pair 2i, 2i+1), so a lookup or an increment touches one cache
# line instead of four; the block comes from the low bits of a remix of the hash, each
# counter from one byte of its high half.
cdef inline int _sketch_estimate(tinylfu_t* s, uint64_t h) noexcept nogil:
    cdef uint64_t c = _tlfu_mix(h), x
    cdef uint64_t* blk = &s.sketch[(c & (s.smask >> 3)) << 3]
    cdef int i, v, m = 15
    for i in range(4):
        x = c >> (32 + 8 * i)
        v = <int>((blk[2 * i + (x & 1)] >> (((x >> 1) & 15) << 2)) & 15)
        if v < m:
            m = v
    return m


cdef extern from *:
    """
    /* Add one to a key's four counters in its 64-byte block, saturating at 15.  Row i is a
       nibble of the block's 16-byte quarter i, chosen by the low five bits of byte i of x (the
       word by bit 0, the nibble by bits 1-4).  With SSE2 (every x86-64) a row is a few vector
       operations on its quarter: a table gives the row's nibble as a one and as a mask, a
       compare of the masked quarter with the mask finds a counter at 15, and the one is added
       unless it is. */
    #if defined(__SSE2__) || defined(_M_X64)
    #include <emmintrin.h>
    static __m128i kv_sk_one[32], kv_sk_full[32];
    static void kv_sketch_init(void) {
        for (int b = 0; b < 32; b++) {
            uint64_t one = (uint64_t)1 << (4 * ((b >> 1) & 15));
            kv_sk_one[b] = (b & 1) ? _mm_set_epi64x((long long)one, 0)
                                   : _mm_set_epi64x(0, (long long)one);
            kv_sk_full[b] = (b & 1) ? _mm_set_epi64x((long long)(one * 15), 0)
                                    : _mm_set_epi64x(0, (long long)(one * 15));
        }
    }
    static inline void kv_sketch_count(uint64_t* blk, uint64_t x) {
        for (int i = 0; i < 4; i++) {
            unsigned b = (unsigned)(x >> (8 * i)) & 31;
            __m128i* q = (__m128i*)(blk + 2 * i);
            __m128i v = _mm_load_si128(q);
            __m128i full = _mm_cmpeq_epi32(_mm_and_si128(v, kv_sk_full[b]), kv_sk_full[b]);
            _mm_store_si128(q, _mm_add_epi32(v, _mm_andnot_si128(full, kv_sk_one[b])));
        }
    }
    #else
    static void kv_sketch_init(void) {}
    static inline void kv_sketch_count(uint64_t* blk, uint64_t x) {
        for (int i = 0; i < 4; i++) {
            uint64_t b = x >> (8 * i);
            uint64_t* w = blk + 2 * i + (b & 1);
            int off = (int)(((b >> 1) & 15) << 2);
            *w += (uint64_t)(((*w >> off) & 15) != 15) << off;
        }
    }
    #endif
    """
    void kv_sketch_init() nogil
    void kv_sketch_count(uint64_t* blk, uint64_t x) nogil

kv_sketch_init()


cdef inline void _sketch_count(uint64_t* sketch, uint64_t bmask, uint64_t c) noexcept nogil:
    """Add one to the four counters of the key whose remixed hash is c (bmask: blocks - 1)."""
    kv_sketch_count(&sketch[(c & bmask) << 3], c >> 32)


cdef inline void _sketch_count_n(uint64_t* sketch, uint64_t bmask, uint64_t c, int k) noexcept nogil:
    """Add k to the four counters of the key whose remixed hash is c, each saturating at 15."""
    cdef uint64_t* blk = &sketch[(c & bmask) << 3]
    cdef uint64_t x, v, nv
    cdef int i, off
    for i in range(4):
        x = c >> (32 + 8 * i)
        off = <int>(((x >> 1) & 15) << 2)
        v = (blk[2 * i + (x & 1)] >> off) & 15
        nv = v + <uint64_t>k
        if nv > 15:
            nv = 15
        blk[2 * i + (x & 1)] += (nv - v) << off


# A hit does not touch the sketch: its count waits in bits 2-5 of the entry's region byte (which
# the hit reads anyway), and is added when the entry's estimate is read (the admission duel),
# when the entry leaves, and before every halving.  Fifteen pending hits saturate the counters
# as more would, so the byte holds all that matters, and the sample clock still ticks on every
# hit.  The entry's own estimate and every halving are thus those of immediate counting; only
# the other keys' estimates read meanwhile (the shadows' duels) miss resident entries' recent
# hits, which leaves them fewer collisions.  On the traces of shared/traces this is as good as
# immediate counting (seeds 1-32: mean gap to OPT 4.332 against 4.337), and a hit no longer
# touches the sketch (1 MB at 100k entries: the random line that made a hit slower than LRU's).
cdef inline void _sketch_settle(tinylfu_t* s, entry_rec* ent, entry_t e) noexcept nogil:
    """Add entry e's pending hits to the sketch (ent: the table's entries)."""
    cdef int b = <uint8_t>s.rg.region[e]
    if b >= _TLFU_PEND1:
        _sketch_count_n(s.sketch, s.smask >> 3, _tlfu_mix(ent[e].hash), b >> 2)
        s.rg.region[e] = <int8_t>(b & _TLFU_REGION)


cdef void _sketch_settle_all(tinylfu_t* s, table_t* t) noexcept nogil:
    """Settle every entry (free entries have no pending hits)."""
    cdef Py_ssize_t e
    for e in range(t.capacity):
        if <uint8_t>s.rg.region[e] >= _TLFU_PEND1:
            _sketch_settle(s, t.ent, <entry_t>e)


cdef void _sketch_halve(tinylfu_t* s, table_t* t) noexcept nogil:
    """Settle the pending hits, then halve every counter at once: shift each word and drop the
    bits that crossed nibbles."""
    cdef uint64_t j
    _sketch_settle_all(s, t)
    for j in range(s.smask + 1):
        s.sketch[j] = (s.sketch[j] >> 1) & _TLFU_ODD
    s.scount //= 2


# Two rare, long paths of a hit (the halving; a promotion while protected is not full) are called
# through pointers: the compiler inlines a static function called once however long it is,
# which put the hit over the inlining limit, and every hit then paid a call (24 instructions).
cdef extern from *:
    """
    typedef void (*kv_cold_fn)(void*, void*, int32_t);
    static kv_cold_fn volatile kv_cold_halve, kv_cold_promote;
    """
    ctypedef void (*kv_cold_fn)(void*, void*, int32_t) noexcept nogil
    kv_cold_fn kv_cold_halve
    kv_cold_fn kv_cold_promote


cdef void _cold_halve(void* s, void* t, int32_t e) noexcept nogil:
    _sketch_halve(<tinylfu_t*>s, <table_t*>t)


kv_cold_halve = _cold_halve


cdef inline void _sketch_tick(tinylfu_t* s, table_t* t) noexcept nogil:
    """Count one access on the sample clock; halve at the sample size."""
    s.scount += 1
    if s.scount >= s.sample:
        kv_cold_halve(s, t, 0)


cdef inline void _sketch_increment(tinylfu_t* s, table_t* t, uint64_t h) noexcept nogil:
    """Count one access of the key whose hash is h, now."""
    _sketch_count(s.sketch, s.smask >> 3, _tlfu_mix(h))
    _sketch_tick(s, t)


# ---------------------------------------------------------------------------------------------
# Regions, targets and ghosts: one tlfu_regions_t, the real cache's (s.rg, linked through the
# table's entries t.ent) and each shadow's (d.rg, linked through the shadow's own d.t.ent).  The
# functions take the entries to link through; everything else is the same algorithm for both.
# ---------------------------------------------------------------------------------------------

cdef inline void _region_unlink(tlfu_regions_t* g, entry_rec* ent, entry_t e) noexcept nogil:
    cdef int r = g.region[e] & _TLFU_REGION
    cdef entry_t p = ent[e].prev, n = ent[e].next
    if p == ENTRY_NONE:
        g.head[r] = n
    else:
        ent[p].next = n
    if n == ENTRY_NONE:
        g.tail[r] = p
    else:
        ent[n].prev = p
    g.size[r] -= 1


cdef inline void _region_append(tlfu_regions_t* g, entry_rec* ent, int r, entry_t e) noexcept nogil:
    g.region[e] = <int8_t>((g.region[e] & ~_TLFU_REGION) | r)     # pending hits stay
    ent[e].prev = g.tail[r]
    ent[e].next = ENTRY_NONE
    if g.tail[r] == ENTRY_NONE:
        g.head[r] = e
    else:
        ent[g.tail[r]].next = e
    g.tail[r] = e
    g.size[r] += 1


cdef inline void _region_move(tlfu_regions_t* g, entry_rec* ent, int r, entry_t e) noexcept nogil:
    _region_unlink(g, ent, e)
    _region_append(g, ent, r, e)


cdef inline void _regions_empty(tlfu_regions_t* g) noexcept nogil:
    cdef int r
    for r in range(3):
        g.head[r] = ENTRY_NONE
        g.tail[r] = ENTRY_NONE
        g.size[r] = 0


cdef inline void _regions_cap(tlfu_regions_t* g, Py_ssize_t cap) noexcept nogil:
    """Size the regions for cap entries, and the ghosts' reach with them."""
    cdef int64_t x = <int64_t>(_TLFU_GHOST * cap)
    g.cap = cap
    g.gcap = 1 if x < 1 else (x if x < (<int64_t>1 << 30) else (<int64_t>1 << 30))


cdef inline void _regions_window0(tlfu_regions_t* g) noexcept nogil:
    """Start the window target at its initial share of g.cap."""
    g.wf = <double>(g.cap - <Py_ssize_t>((1.0 - _TLFU_WINDOW0) * g.cap))


cdef void _regions_targets(tlfu_regions_t* g) noexcept nogil:
    """Round the window target into [1, cap - 1] and size protected to 80% of the rest."""
    cdef double hi = <double>(g.cap - 1) if g.cap - 1 >= 1 else 1.0
    cdef Py_ssize_t m
    if g.wf < 1.0:
        g.wf = 1.0
    if g.wf > hi:
        g.wf = hi
    g.wmax = <Py_ssize_t>g.wf
    m = g.cap - g.wmax
    if m < 0:
        m = 0
    g.protmax = <Py_ssize_t>(_TLFU_PROTECTED * m)


cdef void _regions_set_targets(tlfu_regions_t* g, entry_rec* ent) noexcept nogil:
    """Recompute the targets and demote protected overflow to probation."""
    _regions_targets(g)
    while g.size[TLFU_PROTECTED] > g.protmax:
        _region_move(g, ent, TLFU_PROBATION, g.head[TLFU_PROTECTED])


cdef inline void _ghost_add(uint64_t* table, uint64_t mask, uint64_t h, int64_t clock) noexcept nogil:
    # high 32 bits: the fingerprint (its low bits are also the slot number); bit 31: occupied;
    # low 31 bits: the ghost's clock when recorded (compared modulo 2**31, gcap < 2**30)
    table[(h >> 32) & mask] = ((h >> 32) << 32) | <uint64_t>0x80000000 | (<uint64_t>clock & 0x7FFFFFFF)


cdef inline int64_t _ghost_age(uint64_t* table, uint64_t mask, uint64_t h, int64_t clock) noexcept nogil:
    """Remove h's ghost from `table` if there is one; return its age on its clock, or -1."""
    cdef uint64_t fp = h >> 32
    cdef uint64_t i = fp & mask
    cdef uint64_t v = table[i]
    if v == 0 or (v >> 32) != fp:
        return -1
    table[i] = 0
    return <int64_t>((<uint64_t>clock - v) & 0x7FFFFFFF)


cdef inline int _ghost_check(tlfu_regions_t* g, entry_rec* ent, uint64_t h) noexcept nogil:
    """Adapt the window to a ghost hit of h; return 1 (window ghost: to probation), 2 (main) or 0."""
    cdef double nw = <double>(g.nwin if g.nwin < g.gcap else g.gcap)
    cdef double nm = <double>(g.nmev if g.nmev < g.gcap else g.gcap)
    cdef double d
    cdef int64_t age = _ghost_age(g.gwin, g.gwmask, h, g.nwin)
    if 0 <= age < g.gcap:
        d = nm / nw if nw > 0 else 1.0
        g.wf += d if d > 1.0 else 1.0
        _regions_set_targets(g, ent)
        return 1
    if 0 <= age < g.reach:
        return 1
    age = _ghost_age(g.gmain, g.gmmask, h, g.nmev)
    if 0 <= age < g.gcap:
        d = nw / nm if nm > 0 else 1.0
        g.wf -= d if d > 1.0 else 1.0
        _regions_set_targets(g, ent)
        return 2
    return 0


cdef inline void _region_admit(tlfu_regions_t* g, entry_rec* ent, entry_t e, int ghost) noexcept nogil:
    """Link the new entry e (ghost: what _ghost_check said of its key)."""
    # a key the admission rejected that is back within reach has proven its reuse: like ARC's
    # recency-ghost hit (and S3-FIFO's ghost hit) it skips the window, straight to probation
    _region_append(g, ent, TLFU_PROBATION if ghost == 1 else TLFU_WINDOW, e)
    g.nwin += 1
    # the window may be above a target that just shrank: its oldest go to probation unjudged
    while g.size[TLFU_WINDOW] > g.wmax:
        _region_move(g, ent, TLFU_PROBATION, g.head[TLFU_WINDOW])


cdef inline entry_t _regions_victim(tinylfu_t* s, tlfu_regions_t* g, entry_rec* ent,
                                    bint pending) noexcept nogil:
    """Choose the entry to evict for one insertion; a winning candidate moves to probation.

    pending: g holds pending hits (the real cache's), settled before the duel reads them."""
    cdef entry_t cand, vic = g.head[TLFU_PROBATION]
    cdef Py_ssize_t main = g.size[TLFU_PROBATION] + g.size[TLFU_PROTECTED]
    if vic == ENTRY_NONE:
        vic = g.head[TLFU_PROTECTED]
    if g.size[TLFU_WINDOW] >= 1 and (g.size[TLFU_WINDOW] >= g.wmax or main == 0):
        # the insertion will push the window's oldest out: the admission duel
        cand = g.head[TLFU_WINDOW]
        if pending:
            _sketch_settle(s, ent, cand)
            if vic != ENTRY_NONE:
                _sketch_settle(s, ent, vic)
        # a margin of one: estimates off by a collision or two do not churn loops and scans
        if vic != ENTRY_NONE and (_sketch_estimate(s, ent[cand].hash)
                                  > _sketch_estimate(s, ent[vic].hash) + 1):
            _region_move(g, ent, TLFU_PROBATION, cand)
            _ghost_add(g.gmain, g.gmmask, ent[vic].hash, g.nmev)
            g.nmev += 1
            return vic
        _ghost_add(g.gwin, g.gwmask, ent[cand].hash, g.nwin)
        return cand
    # the window is below its target (it just grew): main gives up its oldest
    _ghost_add(g.gmain, g.gmmask, ent[vic].hash, g.nmev)
    g.nmev += 1
    return vic


cdef inline void _region_swap_in(tlfu_regions_t* g, entry_rec* ent, entry_t e) noexcept nogil:
    """Promote probation's e into a full protected, whose least recent goes to probation's end.

    What _region_move does for the two entries, with the regions' ends held in locals: the
    compiler must otherwise reload them after every store (an int8 store may alias anything).
    """
    cdef entry_t bh = g.head[TLFU_PROBATION], bt = g.tail[TLFU_PROBATION]
    cdef entry_t d = g.head[TLFU_PROTECTED], pt = g.tail[TLFU_PROTECTED]
    cdef entry_t p = ent[e].prev, n = ent[e].next, dn
    if p == ENTRY_NONE:                  # e leaves probation
        bh = n
    else:
        ent[p].next = n
    if n == ENTRY_NONE:
        bt = p
    else:
        ent[n].prev = p
    ent[e].prev = pt                     # e joins protected (not empty: it is full)
    ent[e].next = ENTRY_NONE
    ent[pt].next = e
    dn = ent[d].next                     # d leaves protected (e follows it at least)
    ent[dn].prev = ENTRY_NONE
    ent[d].prev = bt                     # d joins probation
    ent[d].next = ENTRY_NONE
    if bt == ENTRY_NONE:
        bh = d
    else:
        ent[bt].next = d
    g.head[TLFU_PROBATION] = bh
    g.tail[TLFU_PROBATION] = d
    g.head[TLFU_PROTECTED] = dn
    g.tail[TLFU_PROTECTED] = e
    g.region[e] = <int8_t>((g.region[e] & ~_TLFU_REGION) | TLFU_PROTECTED)
    g.region[d] = <int8_t>((g.region[d] & ~_TLFU_REGION) | TLFU_PROBATION)


cdef void _cold_promote(void* gp, void* ep, int32_t e) noexcept nogil:
    """Move probation's e to protected, then demote protected's overflow (see _region_hit)."""
    cdef tlfu_regions_t* g = <tlfu_regions_t*>gp
    cdef entry_rec* ent = <entry_rec*>ep
    _region_move(g, ent, TLFU_PROTECTED, e)
    while g.size[TLFU_PROTECTED] > g.protmax:
        _region_move(g, ent, TLFU_PROBATION, g.head[TLFU_PROTECTED])


kv_cold_promote = _cold_promote


cdef inline void _region_hit(tlfu_regions_t* g, entry_rec* ent, entry_t e, int r) noexcept nogil:
    """Move e (in region r) for a hit: probation promotes to protected, else to its region's end."""
    if r == TLFU_PROBATION:
        if g.size[TLFU_PROTECTED] == g.protmax and g.protmax > 0:
            _region_swap_in(g, ent, e)   # the steady state: protected is full
        else:
            kv_cold_promote(g, ent, e)
    elif g.tail[r] != e:
        _region_move(g, ent, r, e)


# ---------------------------------------------------------------------------------------------
# Miniature simulations (Waldspurger et al., USENIX ATC 2017): two shadow W-TinyLFU caches,
# identical but for the reach of the window ghost, replay the sampled keys (all keys up to
# _TLFU_SHADOW entries, else a hash-chosen share scaled to that size) using the real sketch.
# The cache takes the reach of the one with more (decayed) hits.  A shadow's slots are a
# table_t without tags: its index is probed and shifted by the engine's own table functions.
# ---------------------------------------------------------------------------------------------

cdef int _step_shadow(const void* table, uint64_t slot, const void* key) noexcept nogil:
    cdef const table_t* t = <const table_t*>table
    cdef int32_t e = t.index[slot]
    if e == SLOT_EMPTY:
        return PROBE_EMPTY
    return PROBE_HIT if t.ent[e].hash == (<const uint64_t*>key)[0] else PROBE_ON


cdef int _sh_access(tlfu_shadow_t* d, tinylfu_t* s, uint64_t h) noexcept nogil:
    """One access of a shadow (look up; on a miss insert, evicting first); return 1 on a hit."""
    cdef bint hit
    cdef Py_ssize_t pos = probe(&d.t, h, d.t.mask, &h, _step_shadow, &hit)
    cdef entry_t e
    if hit:
        e = d.t.index[pos]
        _region_hit(&d.rg, d.t.ent, e, d.rg.region[e] & _TLFU_REGION)
        return 1
    if d.t.count >= s.scap:
        e = _regions_victim(s, &d.rg, d.t.ent, False)   # its slot takes the new key: slots
        _region_unlink(&d.rg, d.t.ent, e)                # 0..count-1 stay live
        table_remove_slot(&d.t, table_slot_of(&d.t, e))
        d.t.count -= 1
        pos = table_probe_free(&d.t, h)
    else:
        e = <entry_t>d.t.count
    d.t.ent[e].hash = h
    table_put_slot(&d.t, pos, e)
    _region_admit(&d.rg, d.t.ent, e, _ghost_check(&d.rg, d.t.ent, h))
    d.t.count += 1
    return 0


cdef inline int64_t _tlfu_reach(tinylfu_t* s) noexcept nogil:
    # shadow 0 tries a window-ghost reach of the whole cache, shadow 1 only the adaptation's
    if s.scur != 0:
        return 0
    return s.rg.cap if s.rg.cap < (<int64_t>1 << 30) else (<int64_t>1 << 30)


cdef void _tlfu_shadows(tinylfu_t* s, uint64_t h) noexcept nogil:
    """Feed a sampled access to both shadows; at an epoch's end, follow a clearly better one."""
    cdef tlfu_shadow_t* a
    cdef tlfu_shadow_t* b
    cdef int k
    s.shadow[0].hits += _sh_access(&s.shadow[0], s, h)
    s.shadow[1].hits += _sh_access(&s.shadow[1], s, h)
    s.sticks += 1
    if s.sticks < (s.scap if s.scap > 16 else 16):
        return
    s.sticks = 0
    for k in range(2):
        s.shadow[k].score = s.shadow[k].score * _TLFU_DECAY + <double>s.shadow[k].hits
        s.shadow[k].hits = 0
    a = &s.shadow[1 - s.scur]
    b = &s.shadow[s.scur]
    # switch only on a lead beyond one standard deviation of the hit counts (Poisson): noise
    # between two close settings must not flap the real cache back and forth
    if a.score > b.score + 0.5 and a.score - b.score > sqrt(a.score + b.score + 1.0):
        s.scur = 1 - s.scur
        s.rg.reach = _tlfu_reach(s)


cdef void _tlfu_shadow_setup(tinylfu_t* s) noexcept nogil:
    """Size the shadows and the sampling for s.rg.cap and start them empty (the choice stays)."""
    cdef tlfu_shadow_t* d
    cdef Py_ssize_t cap = s.rg.cap
    cdef int k
    if cap < 1:
        s.scap = 0
        s.sthr = 0
    elif cap <= s.salloc:
        s.scap = cap
        s.sthr = <uint64_t>1 << 24
    else:
        s.scap = s.salloc
        s.sthr = ((<uint64_t>s.salloc) << 24) // <uint64_t>cap
    s.sticks = 0
    for k in range(2):
        d = &s.shadow[k]
        memset(d.t.index, 0xFF, (d.t.mask + 1) * sizeof(int32_t))
        memset(d.rg.gwin, 0, (d.rg.gwmask + 1) * sizeof(uint64_t))
        memset(d.rg.gmain, 0, (d.rg.gmmask + 1) * sizeof(uint64_t))
        _regions_empty(&d.rg)
        d.t.count = 0
        d.rg.nwin = 0
        d.rg.nmev = 0
        d.hits = 0
        d.score = 0.0
        _regions_cap(&d.rg, s.scap)
        d.rg.reach = s.scap if k == 0 else 0
        _regions_window0(&d.rg)
        _regions_set_targets(&d.rg, d.t.ent)
    s.rg.reach = _tlfu_reach(s)


# ---------------------------------------------------------------------------------------------
# The policy's entry points (order_t.ext)
# ---------------------------------------------------------------------------------------------

cdef void tinylfu_link_new(order_t* o, table_t* t, entry_t e) noexcept nogil:
    cdef tinylfu_t* s = &o.tl
    cdef uint64_t h = t.ent[e].hash
    cdef int ghost = _ghost_check(&s.rg, t.ent, h)
    if ((h >> 8) & 0xFFFFFF) < s.sthr:
        _tlfu_shadows(s, h)
    _sketch_increment(s, t, h)
    _region_admit(&s.rg, t.ent, e, ghost)


cdef void tinylfu_unlink(order_t* o, table_t* t, entry_t e) noexcept nogil:
    _sketch_settle(&o.tl, t.ent, e)      # its hits stay in the sketch: it may come back
    _region_unlink(&o.tl.rg, t.ent, e)


cdef inline void _tlfu_hit(tinylfu_t* s, table_t* t, entry_t e) noexcept nogil:
    """Record a hit on e: a pending count in its region byte, and the move of its region."""
    cdef int b = s.rg.region[e]
    cdef uint64_t h = t.ent[e].hash
    if ((h >> 8) & 0xFFFFFF) < s.sthr:
        _tlfu_shadows(s, h)
    if b < _TLFU_PEND_FULL:
        s.rg.region[e] = <int8_t>(b + _TLFU_PEND1)
    _sketch_tick(s, t)
    _region_hit(&s.rg, t.ent, e, b & _TLFU_REGION)


cdef void tinylfu_touch(order_t* o, table_t* t, entry_t e) noexcept nogil:
    _tlfu_hit(&o.tl, t, e)


cdef entry_t tinylfu_victim(order_t* o, table_t* t) noexcept nogil:
    """Choose the entry to evict for one insertion; a winning candidate moves to probation."""
    return _regions_victim(&o.tl, &o.tl.rg, t.ent, True)


cdef Py_ssize_t tinylfu_fill(order_t* o, table_t* t, entry_t* out) noexcept nogil:
    """Write probation, protected, then window, each least recent first (roughly eviction order)."""
    cdef tlfu_regions_t* g = &o.tl.rg
    cdef Py_ssize_t n = 0
    cdef int i
    cdef int[3] regions = [TLFU_PROBATION, TLFU_PROTECTED, TLFU_WINDOW]
    cdef entry_t e
    for i in range(3):
        e = g.head[regions[i]]
        while e != ENTRY_NONE:
            out[n] = e
            n += 1
            e = t.ent[e].next
    return n


cdef str tinylfu_check(order_t* o, table_t* t):
    """Describe the first broken link of the region lists, or return None (for Cache._check)."""
    cdef tlfu_regions_t* g = &o.tl.rg
    cdef entry_t e, prev
    cdef Py_ssize_t k
    cdef int r
    for r in range(3):
        prev = ENTRY_NONE
        e = g.head[r]
        for k in range(g.size[r]):
            if e < 0 or e >= t.capacity or (g.region[e] & _TLFU_REGION) != r \
                    or t.ent[e].prev != prev:
                return "region %d is broken at its entry %d" % (r, k)
            prev = e
            e = t.ent[e].next
        if e != ENTRY_NONE or g.tail[r] != prev:
            return "region %d does not end at its tail after %d entries" % (r, g.size[r])
    return None


cdef void tinylfu_reset(order_t* o, table_t* t) noexcept nogil:
    """Empty the regions; the sketch (pending hits included), the ghosts and the window target
    keep their history."""
    _sketch_settle_all(&o.tl, t)
    _regions_empty(&o.tl.rg)


cdef void tinylfu_set_cap(order_t* o, table_t* t, Py_ssize_t cap) noexcept nogil:
    _regions_cap(&o.tl.rg, cap)
    _tlfu_shadow_setup(&o.tl)
    _regions_set_targets(&o.tl.rg, t.ent)


@cython.final
cdef class _TinyLFUBuffers:
    """The numpy arrays behind one cache's tinylfu_t, with their sizes as C numbers.

    `tinylfu_alloc` makes them (Python allocations: may run other threads); `tinylfu_adopt`
    points the policy at them in one step of plain C (see _new_buffers / _adopt in kvcache/_core.pyx).
    """
    cdef object region, sketch, gwin, gmain
    cdef list shadow                   # the shadows' arrays (allocated once, kept on growth)
    cdef Py_ssize_t capacity           # entries region holds
    cdef uint64_t words, nwin_slots, nmain_slots
    cdef Py_ssize_t shadow_n           # entries per shadow (0: no shadow arrays here)
    cdef uint64_t shadow_isz           # index slots per shadow

    def nbytes(self):
        return (self.region.nbytes + self.sketch.nbytes + self.gwin.nbytes + self.gmain.nbytes
                + sum(a.nbytes for a in self.shadow))


cdef inline uint64_t _ghost_slots(Py_ssize_t bufcap, uint64_t per) noexcept nogil:
    cdef uint64_t gs = 16
    while gs * per < <uint64_t>bufcap:
        gs <<= 1
    return gs


cdef void _copy_ghosts(uint64_t* src, uint64_t nsrc, uint64_t* dst, uint64_t ndst) noexcept nogil:
    # each ghost goes to its slot in the new size (its fingerprint's low bits)
    cdef uint64_t j, v, mask = ndst - 1
    for j in range(nsrc):
        v = src[j]
        if v != 0:
            dst[(v >> 32) & mask] = v


cdef void _shadow_alloc(_TinyLFUBuffers b, Py_ssize_t cap):
    """Allocate the two shadows' arrays for at most min(cap, _TLFU_SHADOW) entries."""
    cdef Py_ssize_t n = cap if cap < _TLFU_SHADOW else _TLFU_SHADOW
    cdef uint64_t isz = 16
    cdef int k
    if n < 1:
        n = 1
    while isz < <uint64_t>(2 * n):
        isz <<= 1
    b.shadow = []
    for k in range(2):
        b.shadow.extend([np.zeros((n, 2), dtype=np.uint64),     # entry_rec: hash, prev, next
                         np.zeros(n, dtype=np.int8),
                         np.full(isz, -1, dtype=np.int32),
                         np.zeros(_ghost_slots(n, _TLFU_GWIN_DIV), dtype=np.uint64),
                         np.zeros(_ghost_slots(n, _TLFU_GMAIN_DIV), dtype=np.uint64)])
    b.shadow_n = n
    b.shadow_isz = isz


cdef void _shadow_point(tinylfu_t* s, _TinyLFUBuffers b) noexcept:
    cdef tlfu_shadow_t* d
    cdef int k
    cdef list a = b.shadow
    s.salloc = b.shadow_n
    for k in range(2):
        d = &s.shadow[k]
        d.t.ent = <entry_rec*>buffer_data(<object>PyList_GET_ITEM(a, 5 * k))
        d.t.capacity = b.shadow_n
        d.t.index = <int32_t*>buffer_data(<object>PyList_GET_ITEM(a, 5 * k + 2))
        d.t.tags = NULL
        d.t.mask = b.shadow_isz - 1
        d.t.free_head = ENTRY_NONE       # no free list: slots 0..count-1 are the live ones
        d.t.seed = 0                     # unused: a shadow stores the real cache's hashes
        d.rg.region = <int8_t*>buffer_data(<object>PyList_GET_ITEM(a, 5 * k + 1))
        d.rg.gwin = <uint64_t*>buffer_data(<object>PyList_GET_ITEM(a, 5 * k + 3))
        d.rg.gwmask = _ghost_slots(b.shadow_n, _TLFU_GWIN_DIV) - 1
        d.rg.gmain = <uint64_t*>buffer_data(<object>PyList_GET_ITEM(a, 5 * k + 4))
        d.rg.gmmask = _ghost_slots(b.shadow_n, _TLFU_GMAIN_DIV) - 1


cdef object tinylfu_alloc(Py_ssize_t capacity, Py_ssize_t cap, bint fresh):
    """Allocate TinyLFU buffers for `capacity` entries (fresh: the shadows too, sized by cap)."""
    cdef _TinyLFUBuffers b = _TinyLFUBuffers()
    cdef uint64_t words = 1
    while words < <uint64_t>capacity:
        words <<= 1
    if words < _TLFU_MIN_WORDS:
        words = _TLFU_MIN_WORDS
    b.capacity = capacity
    b.words = words
    b.nwin_slots = _ghost_slots(capacity, _TLFU_GWIN_DIV)
    b.nmain_slots = _ghost_slots(capacity, _TLFU_GMAIN_DIV)
    b.region = np.zeros(capacity, dtype=np.int8)
    b.sketch = zeros_line_aligned(words, np.uint64)     # one block = one cache line
    b.gwin = np.zeros(b.nwin_slots, dtype=np.uint64)
    b.gmain = np.zeros(b.nmain_slots, dtype=np.uint64)
    if fresh:
        _shadow_alloc(b, cap)
    return b


cdef void tinylfu_adopt(order_t* o, object new, object old, Py_ssize_t cap) noexcept:
    """Point the policy at `new` (old is None: fresh state; else keep everything of `old`).

    Plain C: part of Cache._adopt's single step, after every allocation."""
    cdef tinylfu_t* s = &o.tl
    cdef _TinyLFUBuffers b = <_TinyLFUBuffers>new, ob
    cdef uint64_t j, omask
    cdef uint64_t* src
    cdef uint64_t* dst
    cdef Py_ssize_t floor
    if old is not None:
        ob = <_TinyLFUBuffers>old
        memcpy(buffer_data(b.region), buffer_data(ob.region), ob.capacity)
        # each new word j copies old word j mod old size: estimates are unchanged
        src = <uint64_t*>buffer_data(ob.sketch)
        dst = <uint64_t*>buffer_data(b.sketch)
        omask = ob.words - 1
        for j in range(b.words):
            dst[j] = src[j & omask]
        _copy_ghosts(<uint64_t*>buffer_data(ob.gwin), ob.nwin_slots, <uint64_t*>buffer_data(b.gwin), b.nwin_slots)
        _copy_ghosts(<uint64_t*>buffer_data(ob.gmain), ob.nmain_slots, <uint64_t*>buffer_data(b.gmain), b.nmain_slots)
        b.shadow = ob.shadow           # sized by maxsize, not the buffers: s points there
        b.shadow_n = ob.shadow_n
        b.shadow_isz = ob.shadow_isz
    else:
        s.rg.nwin = 0
        s.rg.nmev = 0
        s.scount = 0
        s.scur = 0
        _regions_empty(&s.rg)
        _shadow_point(s, b)
    s.rg.region = <int8_t*>buffer_data(b.region)
    s.sketch = <uint64_t*>buffer_data(b.sketch)
    s.smask = b.words - 1
    s.rg.gwin = <uint64_t*>buffer_data(b.gwin)
    s.rg.gwmask = b.nwin_slots - 1
    s.rg.gmain = <uint64_t*>buffer_data(b.gmain)
    s.rg.gmmask = b.nmain_slots - 1
    s.bufcap = b.capacity
    floor = b.capacity if b.capacity > _TLFU_SAMPLE_FLOOR else _TLFU_SAMPLE_FLOOR
    s.sample = _TLFU_SAMPLE * floor
    _regions_cap(&s.rg, cap)
    if old is None:
        _regions_window0(&s.rg)
        _tlfu_shadow_setup(s)
    _regions_targets(&s.rg)      # no demotion here: while growing, t still points at the old links


# ---------------------------------------------------------------------------------------------
# State for pickling, copying and snapshots (format 2): one int64 array
#
#   [0, n)        each entry's region byte (the region, plus 4 per pending hit), iteration order
#   [n, n + 10)   header: 2 (the format), buffer capacity, window target (float64 bits), window
#                 insertions, main evictions, sample count, sketch words, main-ghost slots,
#                 window-ghost slots, chosen shadow
#   then          the sketch, the window ghosts, the main ghosts
#   then          hash seed, region capacity (s.rg.cap), shadow slots, the shadows' epoch count,
#                 length of the shadow part
#   then, twice   a shadow: region sizes (3), window target (float64 bits), insertions, main
#                 evictions, hits, score (float64 bits), window- and main-ghost slots; its hashes
#                 (window, probation, protected, each least recent first); its two ghost tables
#
# The hash seed travels with the state: the sketch, the ghosts and the shadows are addressed by
# seeded hashes, so only a copy that hashes as the original can decide as it does.
# ---------------------------------------------------------------------------------------------

cdef enum:
    _TLFU_FORMAT = 2
    _ST_CAPACITY = 1
    _ST_WF = 2
    _ST_NWIN = 3
    _ST_NMEV = 4
    _ST_SCOUNT = 5
    _ST_WORDS = 6
    _ST_GMAIN = 7
    _ST_GWIN = 8
    _ST_SCUR = 9
    _ST_HEADER = 10
    _SX_SEED = 0                          # the fields after the ghosts
    _SX_CAP = 1
    _SX_SALLOC = 2
    _SX_STICKS = 3
    _SX_SHADOWS = 4
    _SX_HEADER = 5
    _SH_HEADER = 10


cdef inline int64_t _f64_bits(double x) noexcept nogil:
    cdef int64_t v
    memcpy(&v, &x, 8)
    return v


cdef inline double _bits_f64(int64_t v) noexcept nogil:
    cdef double x
    memcpy(&x, &v, 8)
    return x


cdef Py_ssize_t _tlfu_shadow_len(tinylfu_t* s) noexcept nogil:
    """Length of the shadow part of the state."""
    cdef Py_ssize_t n = 0
    cdef int k
    for k in range(2):
        n += _SH_HEADER + s.shadow[k].t.count + <Py_ssize_t>(s.shadow[k].rg.gwmask + 1) \
            + <Py_ssize_t>(s.shadow[k].rg.gmmask + 1)
    return n


cdef void _tlfu_shadows_out(tinylfu_t* s, int64_t* out) noexcept nogil:
    cdef tlfu_shadow_t* d
    cdef tlfu_regions_t* g
    cdef Py_ssize_t q = 0
    cdef int k, r
    cdef int32_t e
    for k in range(2):
        d = &s.shadow[k]
        g = &d.rg
        for r in range(3):
            out[q + r] = g.size[r]
        out[q + 3] = _f64_bits(g.wf)
        out[q + 4] = g.nwin
        out[q + 5] = g.nmev
        out[q + 6] = d.hits
        out[q + 7] = _f64_bits(d.score)
        out[q + 8] = <int64_t>(g.gwmask + 1)
        out[q + 9] = <int64_t>(g.gmmask + 1)
        q += _SH_HEADER
        for r in range(3):
            e = g.head[r]
            while e != ENTRY_NONE:
                out[q] = <int64_t>d.t.ent[e].hash
                q += 1
                e = d.t.ent[e].next
        memcpy(&out[q], g.gwin, (g.gwmask + 1) * sizeof(uint64_t))
        q += <Py_ssize_t>(g.gwmask + 1)
        memcpy(&out[q], g.gmain, (g.gmmask + 1) * sizeof(uint64_t))
        q += <Py_ssize_t>(g.gmmask + 1)


cdef void _tlfu_shadows_in(tinylfu_t* s, const int64_t* src) noexcept nogil:
    """Refill the shadows (just set up, empty) from a checked state.  Slot numbers and the index
    layout may differ from the original's: lookups go by hash, so no decision changes."""
    cdef tlfu_shadow_t* d
    cdef tlfu_regions_t* g
    cdef Py_ssize_t q = 0, j
    cdef int k, r
    cdef int32_t e
    cdef uint64_t h
    for k in range(2):
        d = &s.shadow[k]
        g = &d.rg
        e = 0
        for r in range(3):
            for j in range(src[q + r]):
                h = <uint64_t>src[q + _SH_HEADER + e]
                d.t.ent[e].hash = h
                table_put_slot(&d.t, table_probe_free(&d.t, h), e)    # hashes are distinct
                _region_append(g, d.t.ent, r, e)
                e += 1
        d.t.count = e
        g.wf = _bits_f64(src[q + 3])
        g.nwin = src[q + 4]
        g.nmev = src[q + 5]
        d.hits = src[q + 6]
        d.score = _bits_f64(src[q + 7])
        q += _SH_HEADER + e
        memcpy(g.gwin, &src[q], (g.gwmask + 1) * sizeof(uint64_t))
        q += <Py_ssize_t>(g.gwmask + 1)
        memcpy(g.gmain, &src[q], (g.gmmask + 1) * sizeof(uint64_t))
        q += <Py_ssize_t>(g.gmmask + 1)
        _regions_set_targets(g, d.t.ent)


cdef inline bint _pow2(int64_t x) noexcept nogil:
    return x > 0 and (x & (x - 1)) == 0


cdef tuple _tlfu_check_state(object aux, Py_ssize_t n):
    """Check a TinyLFU state for n keys: return it as a contiguous int64 array, its header, its
    fields after the ghosts and the offset of its shadows.  Raise ValueError for anything the
    original could not have written."""
    cdef Py_ssize_t o, x, q, k, scap
    cdef int64_t capacity, words, gm, gw, cap, salloc
    try:
        aux = np.asarray(aux)
    except (TypeError, ValueError, OverflowError):
        raise ValueError("state does not come from a TinyLFUCache") from None
    if aux.dtype.kind not in "iu":
        raise ValueError("state does not come from a TinyLFUCache (not integers)")
    aux = np.ascontiguousarray(aux, dtype=np.int64)
    if aux.ndim != 1 or aux.shape[0] < n + _ST_HEADER or aux[n] != _TLFU_FORMAT:
        raise ValueError("state does not come from a TinyLFUCache of this version (format %d)"
                         % _TLFU_FORMAT)
    head = aux[n:n + _ST_HEADER].tolist()
    regions = aux[:n]
    if ((regions < 0) | (regions > 63) | ((regions & _TLFU_REGION) == 3)).any():
        raise ValueError("state holds an invalid region byte")
    capacity, words, gm, gw = head[_ST_CAPACITY], head[_ST_WORDS], head[_ST_GMAIN], head[_ST_GWIN]
    # one sketch word per entry: the state's own length bounds the buffers it makes us allocate
    if not (max(n, 1) <= capacity <= min(words, MAX_ENTRIES)) or not (
            _pow2(words) and _pow2(gm) and _pow2(gw) and gm <= words and gw <= words):
        raise ValueError("state has an invalid buffer capacity or sketch size")
    o = n + _ST_HEADER
    x = o + words + gw + gm
    if aux.shape[0] < x + _SX_HEADER:
        raise ValueError("state length does not match its header")
    ext = aux[x:x + _SX_HEADER].tolist()
    cap, salloc = ext[_SX_CAP], ext[_SX_SALLOC]
    if not (0 <= cap <= MAX_ENTRIES and 1 <= salloc <= _TLFU_SHADOW) \
            or head[_ST_SCUR] not in (0, 1) or min(head[_ST_NWIN], head[_ST_NMEV], head[_ST_SCOUNT], ext[_SX_STICKS]) < 0 \
            or not math.isfinite(_bits_f64(head[_ST_WF])):
        raise ValueError("state has invalid TinyLFU counters")
    q = x + _SX_HEADER
    if aux.shape[0] != q + ext[_SX_SHADOWS]:
        raise ValueError("state length does not match its header")
    end = aux.shape[0]
    scap = 0 if cap < 1 else min(cap, salloc)
    for k in range(2):
        if q + _SH_HEADER > end:
            raise ValueError("state has a truncated shadow")
        sh = aux[q:q + _SH_HEADER].tolist()
        cnt = sh[0] + sh[1] + sh[2]
        if min(sh[0], sh[1], sh[2], sh[4], sh[5], sh[6]) < 0 or cnt > scap \
                or not math.isfinite(_bits_f64(sh[3])) or not _bits_f64(sh[7]) >= 0.0 \
                or not math.isfinite(_bits_f64(sh[7])) or not (_pow2(sh[8]) and _pow2(sh[9])) \
                or q + _SH_HEADER + cnt + sh[8] + sh[9] > end:
            raise ValueError("state has an invalid shadow")
        if np.unique(aux[q + _SH_HEADER:q + _SH_HEADER + cnt]).shape[0] != cnt:
            raise ValueError("state has a shadow holding a hash twice")
        q += _SH_HEADER + cnt + sh[8] + sh[9]
    if q != end:
        raise ValueError("state length does not match its shadows")
    return aux, head, ext, x + _SX_HEADER


cdef void _tlfu_restore(Cache c, object aux, list head, list ext, Py_ssize_t shadows,
                        list keys, bint hashed_alike) except *:
    """Relink c's entries (just imported from `keys`) as the checked state says; when they hash
    alike (same seed) also its sketch and ghosts, and for the same maxsize its shadows."""
    cdef tinylfu_t* s = &c.o.tl
    cdef _TinyLFUBuffers b = <_TinyLFUBuffers>c._buf.ext
    cdef Py_ssize_t n = len(keys), i, e, q, o = n + _ST_HEADER
    cdef int64_t words = head[_ST_WORDS], gw = head[_ST_GWIN], gm = head[_ST_GMAIN]
    cdef int64_t* ap = <int64_t*>buffer_data(aux)
    cdef bint same_shadows = hashed_alike and ext[_SX_CAP] == s.rg.cap
    cdef int k
    if hashed_alike and (b.sketch.shape[0] != words or b.gwin.shape[0] != gw
                         or b.gmain.shape[0] != gm or head[_ST_SCOUNT] >= s.sample):
        raise ValueError("state was sized by another version of TinyLFUCache")
    if same_shadows:
        if ext[_SX_SALLOC] != s.salloc:      # the original's were sized at its creation
            _shadow_alloc(b, ext[_SX_SALLOC])
            _shadow_point(s, b)
        q = shadows
        for k in range(2):
            if <int64_t>(s.shadow[k].rg.gwmask + 1) != ap[q + 8] or \
                    <int64_t>(s.shadow[k].rg.gmmask + 1) != ap[q + 9]:
                raise ValueError("state was sized by another version of TinyLFUCache")
            q += _SH_HEADER + ap[q] + ap[q + 1] + ap[q + 2] + ap[q + 8] + ap[q + 9]
        if ext[_SX_STICKS] >= max(min(s.rg.cap, s.salloc), 16):
            raise ValueError("state has invalid TinyLFU counters")
    # c is private to the import: nobody sees it half relinked.  The entries the import dropped
    # (expired meanwhile, beyond maxsize) are skipped.
    where = {id(c._kv[2 * e]): e for e in c._order_array().tolist()}
    tinylfu_reset(&c.o, &c.t)
    for i in range(n):
        e = where.get(id(keys[i]), -1)
        if e >= 0:
            _region_append(&s.rg, c.t.ent, <int>ap[i] & _TLFU_REGION, <entry_t>e)
            s.rg.region[e] = <int8_t>ap[i]           # with its pending hits
    s.rg.wf = _bits_f64(ap[n + _ST_WF])
    s.scur = <int>ap[n + _ST_SCUR]
    if hashed_alike:
        memcpy(s.sketch, &ap[o], words * sizeof(uint64_t))
        memcpy(s.rg.gwin, &ap[o + words], gw * sizeof(uint64_t))
        memcpy(s.rg.gmain, &ap[o + words + gw], gm * sizeof(uint64_t))
        s.rg.nwin, s.rg.nmev, s.scount = ap[n + _ST_NWIN], ap[n + _ST_NMEV], ap[n + _ST_SCOUNT]
    _tlfu_shadow_setup(s)                # empty shadows, the reach of the chosen one
    if same_shadows:
        _tlfu_shadows_in(s, &ap[shadows])
        s.sticks = ext[_SX_STICKS]
    _regions_set_targets(&s.rg, c.t.ent)
    c._version += 1


cdef object _ABSENT = object()      # "no such key" where None could be a value


cdef inline object _tinylfu_get(Cache c, object key, object default):
    """cache_get with TinyLFU's hit inlined."""
    cdef Py_ssize_t e
    cdef hash_t h = key_hash(c, key)
    cdef double now = expiry_clock(c)
    with cython.critical_section(c):
        e = cache_count(c, key, h, now)
        if e >= 0:
            _tlfu_hit(&c.o.tl, &c.t, <entry_t>e)
            return <object>kv_list_items(c._kv)[2 * e + 1]
    return default


# The policy's entry points in the engine's order layer (order_t.ext)
cdef policy_ops_t _OPS
_OPS.link_new = tinylfu_link_new
_OPS.unlink = tinylfu_unlink
_OPS.touch = tinylfu_touch
_OPS.victim = tinylfu_victim
_OPS.fill = tinylfu_fill


cdef class TinyLFUCache(Cache):
    "TinyLFUCache(maxsize, getsizeof=None, *, on_evict=None, seed=None, capacity=None)\n--\n\n" \
    """Adaptive W-TinyLFU cache: the best hit ratio of the classes here on most workloads.

    New keys enter a small LRU window; to stay, a key leaving the window must have been used
    more often than the main region's next victim (a frequency sketch, aged by halving).  The
    window's share adapts to the workload (recency-heavy: grows toward LRU; frequency-heavy or
    looping: shrinks).  A new key is always stored, but may be the next to go.  Every lookup
    hit and every assignment counts as a use.  With a `getsizeof`, the regions are sized in
    entries up to the unbounded entry limit, so eviction follows the main region's LRU order.
    Iteration order: probation, protected, then window, each least recent first.
    """

    cdef int _policy(self):
        return POLICY_TINYLFU

    # The hit path, with the policy's hit inlined (order_hit would reach it through o.ext):
    # what Cache.__getitem__ and Cache.get do, registered as native below.
    def __getitem__(self, key):
        v = _tinylfu_get(self, key, _ABSENT)
        if v is not _ABSENT:
            return v
        if self._native_missing:
            raise KeyError(key)
        return self.__missing__(key)

    @cython.binding(False)
    @cython.embedsignature(False)
    def get(self, key, default=None):
        "get($self, key, default=None)\n--\n\n" \
        "Return the value for key if key is in the cache, else default (a lookup: counts and touches)."
        if not self._native_getitem:
            return self[key] if key in self else default
        return _tinylfu_get(self, key, default)

    cdef const policy_ops_t* _policy_ops(self):
        return &_OPS

    cdef Py_ssize_t _initial_capacity(self, Py_ssize_t limit):
        # the sketch and the ghosts are sized by the buffers: their figures were measured from 1024
        return min(limit, 1024)

    cdef object _policy_alloc(self, Py_ssize_t capacity, bint fresh):
        return tinylfu_alloc(capacity, self._max_entries, fresh)

    cdef void _policy_adopt(self, object new, object old, Py_ssize_t cap) noexcept:
        tinylfu_adopt(&self.o, new, old, cap)

    cdef void _policy_reset(self) noexcept:
        tinylfu_reset(&self.o, &self.t)

    cdef void _policy_resize(self) noexcept:
        tinylfu_set_cap(&self.o, &self.t, self._max_entries)

    cdef str _policy_check(self):
        return tinylfu_check(&self.o, &self.t)

    def popitem(self):
        """Remove and return the first `(key, value)` pair in iteration order (main's least recent).

        Evictions that make room for a new key run the admission instead: the window's oldest
        entry and main's least recent one, the less frequent goes.
        """
        cdef entry_t e
        cdef tinylfu_t* s = &self.o.tl
        with cython.critical_section(self):
            if self.t.count == 0:
                raise KeyError("%s is empty" % type(self).__name__) from None
            e = s.rg.head[TLFU_PROBATION]
            if e == ENTRY_NONE:
                e = s.rg.head[TLFU_PROTECTED]
            if e == ENTRY_NONE:
                e = s.rg.head[TLFU_WINDOW]
            if self._native_delitem:
                value = self._remove(e, -1)
                key = self._removed_key
                self._removed_key = None
                return (key, value)
            key = self._kv[2 * e]
            value = self._kv[2 * e + 1]
        del self[key]                      # a subclass's __delitem__ (as cachetools)
        return (key, value)

    def _export_state(self, ttl=False):
        """Return (keys, values, aux) in iteration order; aux: the policy state (see above).

        Expired entries are left out (their pending hits go into the saved sketch, as they
        would into the original's when it drops them).  With ttl=True a fourth item follows:
        each entry's remaining time-to-live in seconds (inf: never expires).
        """
        cdef tinylfu_t* s = &self.o.tl
        cdef Py_ssize_t n, i, live, o, words, gw, gm, hlen
        cdef uint64_t version
        cdef double now = 0.0, scale = 1.0, exp
        cdef bint expiring = self._exp != NULL, absolute = isinstance(ttl, str) and ttl == "absolute", changed = True
        cdef list keys, values
        cdef entry_t e
        cdef entry_t* op
        cdef int64_t* ap
        cdef double* tp
        if expiring:
            now = resolve_clock(expiry_clock(self))
            scale = EXPIRY.scale(self)
        while changed:
            # allocate, then copy with no Python code running, unless the cache changed meanwhile
            n, words, gw, gm = self.t.count, s.smask + 1, s.rg.gwmask + 1, s.rg.gmmask + 1
            hlen = _tlfu_shadow_len(s)
            version = self._version
            order = np.empty(max(n, 1), dtype=np.int32)
            aux = np.empty(n + _ST_HEADER + words + gw + gm + _SX_HEADER + hlen, dtype=np.int64)
            rem = np.empty(n, dtype=np.float64)
            keys = [None] * n
            values = [None] * n
            with cython.critical_section(self):
                changed = (self._version != version or self.t.count != n
                           or <Py_ssize_t>s.smask + 1 != words or <Py_ssize_t>s.rg.gwmask + 1 != gw
                           or <Py_ssize_t>s.rg.gmmask + 1 != gm or _tlfu_shadow_len(s) != hlen)
                if not changed:
                    op = <entry_t*>buffer_data(order)
                    ap = <int64_t*>buffer_data(aux)
                    tp = <double*>buffer_data(rem)
                    order_fill(&self.o, &self.t, op)
                    live = n
                    if expiring:
                        live = 0
                        for i in range(n):
                            if not expired_at(self._exp[op[i]], now):
                                live += 1
                    o = live + _ST_HEADER
                    memcpy(&ap[o], s.sketch, words * sizeof(uint64_t))
                    memcpy(&ap[o + words], s.rg.gwin, gw * sizeof(uint64_t))
                    memcpy(&ap[o + words + gw], s.rg.gmain, gm * sizeof(uint64_t))
                    o += words + gw + gm
                    ap[o + _SX_SEED] = <int64_t>self.t.seed
                    ap[o + _SX_CAP] = s.rg.cap
                    ap[o + _SX_SALLOC] = s.salloc
                    ap[o + _SX_STICKS] = s.sticks
                    ap[o + _SX_SHADOWS] = hlen
                    _tlfu_shadows_out(s, &ap[o + _SX_HEADER])
                    o = live + _ST_HEADER
                    live = 0
                    for i in range(n):
                        e = op[i]
                        exp = self._exp[e] if expiring else INFINITY
                        if expiring and expired_at(exp, now):
                            if <uint8_t>s.rg.region[e] >= _TLFU_PEND1:
                                _sketch_count_n(<uint64_t*>&ap[o], s.smask >> 3,
                                                _tlfu_mix(self.t.ent[e].hash),
                                                (<uint8_t>s.rg.region[e]) >> 2)
                            continue
                        keys[live] = self._kv[2 * e]
                        values[live] = self._kv[2 * e + 1]
                        ap[live] = <uint8_t>s.rg.region[e]
                        tp[live] = exp if absolute or exp == INFINITY else (exp - now) / scale
                        live += 1
                    o = live
                    ap[o] = _TLFU_FORMAT
                    ap[o + _ST_CAPACITY] = self.t.capacity
                    ap[o + _ST_WF] = _f64_bits(s.rg.wf)
                    ap[o + _ST_NWIN] = s.rg.nwin
                    ap[o + _ST_NMEV] = s.rg.nmev
                    ap[o + _ST_SCOUNT] = s.scount
                    ap[o + _ST_WORDS] = words
                    ap[o + _ST_GMAIN] = gm
                    ap[o + _ST_GWIN] = gw
                    ap[o + _ST_SCUR] = s.scur
        if live < n:
            del keys[live:], values[live:]
            aux = np.ascontiguousarray(
                aux[:live + _ST_HEADER + words + gw + gm + _SX_HEADER + hlen])
            rem = rem[:live]
        if ttl:
            return keys, values, aux, rem
        return keys, values, aux

    def _import_state(self, keys, values, aux=None, ttl=None, *, _expires=None):
        """Replace the contents (see Cache._import_state); with aux from _export_state also the
        policy state, so that the copy decides exactly as the original.

        The hash seed comes with the state unless this cache was given one (seed=); with
        another seed or another maxsize the sketch or the shadows cannot apply and restart.
        """
        cdef TinyLFUCache fresh
        cdef bint hashed_alike
        if aux is None:
            return Cache._import_state(self, keys, values, None, ttl, _expires=_expires)
        keys = list(keys)
        values = list(values)
        aux, head, ext, shadows = _tlfu_check_state(aux, len(keys))
        seed = ext[_SX_SEED] & 0xFFFFFFFFFFFFFFFF
        hashed_alike = self._seed_arg is None or self._seed_arg == seed
        # built aside with the original's seed and capacity (which sizes the sketch and the
        # ghosts), then swapped in: on any error this cache is left untouched
        fresh = type(self).__new__(type(self))
        Cache._setup(fresh, self._maxsize, self._user_getsizeof, self._on_evict,
                     seed if self._seed_arg is None else self._seed_arg, head[_ST_CAPACITY],
                     self._choice)
        EXPIRY.import_prepare(self, fresh, 0, None, None)      # this cache's timer and default ttl
        Cache._import_state(fresh, keys, values, None, ttl, _expires=_expires)
        _tlfu_restore(fresh, aux, head, ext, shadows, keys, hashed_alike)
        if self._capacity_arg > fresh.t.capacity:
            fresh._reserve(self._capacity_arg)   # this cache's own preallocation, grown into
        with cython.critical_section(self):
            self._swap(fresh)

    def _frequency(self, key):
        """Return the sketch's estimate of key's uses, its pending hits included (for tests)."""
        cdef hash_t h = key_hash(self, key)
        cdef Py_ssize_t slot, e
        cdef int v
        with cython.critical_section(self):
            v = _sketch_estimate(&self.o.tl, h)
            e = table_find(self, key, h, &slot)
            if e >= 0:
                v = min(15, v + ((<uint8_t>self.o.tl.rg.region[e]) >> 2))
            return v

    def _policy_state(self):
        """Return a dict of the policy's internals (for tests and the simulator)."""
        cdef tinylfu_t* s = &self.o.tl
        cdef tlfu_regions_t* g = &s.rg
        with cython.critical_section(self):
            return {
                "window": g.size[TLFU_WINDOW], "probation": g.size[TLFU_PROBATION],
                "protected": g.size[TLFU_PROTECTED], "window_target": g.wmax,
                "protected_target": g.protmax, "window_exact": g.wf,
                "sketch_words": s.smask + 1, "sample": s.sample, "sample_count": s.scount,
                "ghost_slots": g.gmmask + 1, "ghost_reach": g.gcap,
                "window_insertions": g.nwin, "main_evictions": g.nmev,
                "window_ghost_slots": g.gwmask + 1, "long_reach": g.reach, "shadow_choice": s.scur,
                "shadow_entries": (s.shadow[0].t.count, s.shadow[1].t.count),
                "shadow_scores": (s.shadow[0].score, s.shadow[1].score),
                "shadow_windows": (s.shadow[0].rg.wf, s.shadow[1].rg.wf), "shadow_sample": s.sthr,
            }


register_native_popitem(TinyLFUCache.popitem)
register_native_lookup(TinyLFUCache.__getitem__, TinyLFUCache.get)


