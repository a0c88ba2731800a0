# cython: language_level=3, freethreading_compatible=False
# Expiry for the engine: per-entry time-to-live, TTLCache and TLRUCache (a layer over kvcache._core).
#
# A cache pays nothing for expiry until it first stores an entry with a time-to-live: then
# `Cache._xp` gets an `_Expiry` (the timer, the default expiry policy, and the buffers below)
# and `Cache._exp` points at its per-entry expiry times.  Every hook in Cache is a test of
# `_exp != NULL`, one predictable branch for caches that never expire anything.
#
# Times.  The user's timer may return floats, ints, datetimes (with timedelta TTLs), or any
# value whose difference with another is a timedelta or a number.  Each is mapped once to a
# double: numbers as themselves, anything else as its offset from the first value seen (in
# microseconds for timedeltas, which keeps datetime arithmetic exact up to ~285 years).  An
# entry is alive while `now < expires`, exactly the comparison cachetools makes; `+inf` means
# "never expires" and NaN "already expired".
#
# Which entries have expired: a radix heap (Ahuja, Mehlhorn, Orlin, Tarjan 1990) over the
# 64-bit order-preserving image of each expiry time.  Bucket 0 holds the keys <= `last`;
# bucket b >= 1 the keys whose highest bit differing from `last` is bit b-1, so every key in a
# lower bucket is smaller than every key in a higher one.  Inserting and removing an entry
# (set, delete, LRU eviction) is O(1): a doubly linked list per bucket.  `expire(now)` looks
# at the first non-empty bucket only; its smallest possible key tells in O(1) whether
# anything is due.  When it may be, the bucket is scanned once and `last` moves up to
# min(its smallest key, now): every entry of that bucket then lands in a strictly lower
# bucket.  An entry can move down at most 64 times in its life, so the total expiry work is
# O(entries expired + 64 * entries inserted): O(1) amortized per operation, with no full
# scan on get or set, for fixed and for mixed per-entry TTLs alike, and exact (no rounding
# of times to ticks, unlike a timer wheel).  Entries of equal expiry keep their stamping
# order (buckets are FIFO and every move is a stable traversal), so expire() returns pairs
# in expiry order, ties in the order they were set, as cachetools' TTLCache does.
#
# Keys below `last` can only appear when time runs backwards (a fake timer, or an explicit
# expire(time) in the future); they sit in bucket 0, which is then checked entry by entry.

cimport cython
cimport numpy as cnp
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.ref cimport PyObject
from libc.math cimport INFINITY, NAN
from libc.stdint cimport int8_t, int32_t, int64_t, uint64_t
from libc.string cimport memcpy

from kvcache._core cimport *

import copy as _copy
import datetime as _datetime
import numbers as _numbers
import time as _time

import numpy as np

from kvcache._core import Cache, InitSignature

cnp.import_array()

cdef extern from *:
    """
    #if defined(_MSC_VER)
    #include <intrin.h>
    static int kv_msb64(unsigned long long x) { unsigned long i; _BitScanReverse64(&i, x); return (int)i; }
    static int kv_lsb64(unsigned long long x) { unsigned long i; _BitScanForward64(&i, x); return (int)i; }
    #else
    static int kv_msb64(unsigned long long x) { return 63 - __builtin_clzll(x); }
    static int kv_lsb64(unsigned long long x) { return __builtin_ctzll(x); }
    #endif
    """
    int kv_msb64(unsigned long long x) noexcept nogil
    int kv_lsb64(unsigned long long x) noexcept nogil

__all__ = ["TTLCache", "TLRUCache"]

cdef object _time_monotonic = _time.monotonic
cdef object _ONE_US = _datetime.timedelta(microseconds=1)
cdef object _timedelta = _datetime.timedelta
cdef object _Real = _numbers.Real
cdef int _NBUCKETS = 65
cdef uint64_t _TOP = <uint64_t>1 << 63

cdef inline uint64_t _tkey(double d) noexcept nogil:
    """Map a time to a uint64 with the same order (NaN: before everything, i.e. expired)."""
    cdef uint64_t u
    if d != d:
        d = -INFINITY
    elif d == 0.0:
        d = 0.0                       # -0.0 == 0.0 must map to one key
    memcpy(&u, &d, 8)
    if u & _TOP:
        return ~u
    return u | _TOP


# ---------------------------------------------------------------------------------------------
# The timer
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _Timer:
    """A cache's `timer`: calls the user's timer; `with cache.timer as now:` freezes time.

    Unknown attributes are looked up on the user's timer (as cachetools does).
    """
    cdef object _fn
    cdef kv_clock_t st               # nesting, the frozen time as a double, C clock? (read by the
                                     # engine's inline expiry_clock through Cache._clock)
    cdef object _time                # the frozen value, as the user's timer returned it
    cdef int _kind                   # 0 not known yet, 1 numbers, 2 timedelta offsets, 3 other offsets
    cdef object _origin              # the first non-numeric time seen (offsets are from it)

    def __cinit__(self, fn):
        if not callable(fn):
            raise TypeError("timer must be callable")
        self._fn = fn
        self.st.c_clock = fn is _time_monotonic and KV_HAVE_CLOCK
        if self.st.c_clock:
            self._kind = 1

    def __call__(self):
        if self.st.nesting:
            return self._time_obj()
        return self._fn()

    def __enter__(self):
        self._freeze()
        return self._time_obj()

    def __exit__(self, *exc):
        self._thaw()

    def __copy__(self):
        return _Timer(self._fn)

    def __deepcopy__(self, memo):
        return _Timer(_copy.deepcopy(self._fn, memo))

    def __reduce__(self):
        return (_Timer, (self._fn,))

    def __getattr__(self, name):
        return getattr(self._fn, name)

    def _now(self):
        """The current time as the cache compares it (a float; for tests)."""
        return self.now_f()

    cdef double _freeze(self) except? -1:
        cdef double f
        if self.st.nesting == 0:
            if self.st.c_clock:
                f = kv_monotonic()
                self._time = None        # boxed only if asked for
            else:
                t = self._fn()
                f = self.to_f(t)
                self._time = t
            self.st.frozen = f
        self.st.nesting += 1
        return self.st.frozen

    cdef object _time_obj(self):
        if self._time is None:
            self._time = self.st.frozen
        return self._time

    cdef void _thaw(self):
        if self.st.nesting > 0:
            self.st.nesting -= 1

    cdef double now_f(self) except? -1:
        if self.st.nesting:
            return self.st.frozen
        if self.st.c_clock:
            return kv_monotonic()
        return self.to_f(self._fn())

    cdef double to_f(self, object t) except? -1:
        if type(t) is float:
            if self._kind == 0:
                self._kind = 1
            return PyFloat_AS_DOUBLE(t)
        return self._to_f_slow(t)

    cdef double _to_f_slow(self, object t) except? -1:
        if isinstance(t, _Real) and self._kind != 2:
            if self._kind == 0:
                self._kind = 1
            return float(t)
        if self._origin is None:
            self._origin = t
        d = t - self._origin
        if isinstance(d, _timedelta):
            self._kind = 2
            return d / _ONE_US
        if self._kind == 0:
            self._kind = 3
        return float(d)

    cdef double scale(self):
        """Units of the double time per second."""
        return 1e6 if self._kind == 2 else 1.0


# ---------------------------------------------------------------------------------------------
# Per-cache expiry state and the radix heap
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _Expiry:
    cdef _Timer timer
    cdef int mode                    # default expiry: 0 none, 1 `ttl` after set, 2 ttu(key, value, now)
    cdef object ttl, ttu
    cdef double ttl_f                # ttl as a double when it is a real number
    cdef bint ttl_numeric
    cdef bint drop_expired           # TLRU: setting an already expired item removes the key
    cdef bint native_expire          # False when a subclass overrides expire(): call it instead
    cdef object exp_arr, link_arr, bkt_arr
    cdef Py_ssize_t capacity         # entries the buffers hold
    cdef double* exp                 # entry -> expiry time (+inf: never)
    cdef int32_t* link               # entry -> prev (2e), next (2e+1) in its bucket
    cdef int8_t* bkt                 # entry -> its bucket, -1 when not in the heap
    cdef entry_t head[65]
    cdef entry_t tail[65]
    cdef uint64_t nonempty           # bit b-1 set when bucket b >= 1 holds entries
    cdef uint64_t last
    cdef Py_ssize_t n                # entries in the heap
    cdef uint64_t bumps              # Cache._version increments made by expiry

    def __cinit__(self):
        self._clear_heap()

    cdef void _clear_heap(self) noexcept:
        cdef int b
        for b in range(_NBUCKETS):
            self.head[b] = ENTRY_NONE
            self.tail[b] = ENTRY_NONE
        self.nonempty = 0
        self.last = 0
        self.n = 0

    cdef void set_default(self, int mode, object param):
        self.mode = mode
        if mode == 1:
            self.ttl = param
            self.ttl_numeric = isinstance(param, _Real) and not isinstance(param, bool)
            self.ttl_f = float(param) if self.ttl_numeric else 0.0
        elif mode == 2:
            self.ttu = param
            self.drop_expired = True


cdef inline void _rh_link(_Expiry x, entry_t e, uint64_t k) noexcept nogil:
    """Append e to the bucket its key belongs in relative to `last`."""
    cdef int b = 0
    cdef entry_t t
    if k > x.last:
        b = kv_msb64(k ^ x.last) + 1
        x.nonempty |= (<uint64_t>1) << (b - 1)
    x.bkt[e] = <int8_t>b
    t = x.tail[b]
    x.link[2 * e] = t
    x.link[2 * e + 1] = ENTRY_NONE
    if t == ENTRY_NONE:
        x.head[b] = e
    else:
        x.link[2 * t + 1] = e
    x.tail[b] = e


cdef inline void _rh_unlink(_Expiry x, entry_t e) noexcept nogil:
    cdef int b = x.bkt[e]
    cdef entry_t p = x.link[2 * e], nx = x.link[2 * e + 1]
    if p == ENTRY_NONE:
        x.head[b] = nx
    else:
        x.link[2 * p + 1] = nx
    if nx == ENTRY_NONE:
        x.tail[b] = p
    else:
        x.link[2 * nx] = p
    if b > 0 and x.head[b] == ENTRY_NONE:
        x.nonempty &= ~((<uint64_t>1) << (b - 1))
    x.bkt[e] = -1
    x.n -= 1


cdef void _ttl_stamp(Cache c, entry_t e, double exp) noexcept:
    """Give entry e the expiry time `exp` (+inf: none)."""
    cdef _Expiry x = <_Expiry>c._xp
    if x.bkt[e] >= 0:
        _rh_unlink(x, e)
    x.exp[e] = exp
    if not (exp == INFINITY):
        _rh_link(x, e, _tkey(exp))
        x.n += 1


cdef inline void _ttl_forget(Cache c, entry_t e) noexcept:
    """Entry e is being removed: drop its expiry."""
    cdef _Expiry x = <_Expiry>c._xp
    if x.bkt[e] >= 0:
        _rh_unlink(x, e)
    x.exp[e] = INFINITY


cdef tuple _ttl_pop(Cache c, entry_t e):
    value = c._remove(e, -1)
    key = c._removed_key
    c._removed_key = None
    return (key, value)


cdef list _ttl_expire_locked(Cache c, double now):
    """Remove every entry expired at `now`; return their pairs (None or [] if there are none)."""
    cdef _Expiry x = <_Expiry>c._xp
    cdef uint64_t nk, lb, m, k
    cdef entry_t e, nx
    cdef int i
    cdef list out = None
    cdef uint64_t v0 = c._version, v1
    if x is None or x.n == 0:
        return None
    nk = _tkey(now)
    while True:
        if x.head[0] != ENTRY_NONE:
            if out is None:
                out = []         # allocated before anything is removed: it may let other code in
                continue
            if x.last <= nk:
                while x.head[0] != ENTRY_NONE:
                    out.append(_ttl_pop(c, x.head[0]))
            else:                                    # time ran backwards: check each entry
                e = x.head[0]
                while e != ENTRY_NONE:
                    nx = x.link[2 * e + 1]
                    if _tkey(x.exp[e]) <= nk:
                        v1 = c._version + 1
                        out.append(_ttl_pop(c, e))   # the pair is allocated once e is out
                        if c._version != v1:
                            nx = x.head[0]           # other code ran meanwhile: nx may be gone
                    e = nx
        if x.nonempty == 0:
            break
        i = kv_lsb64(x.nonempty) + 1
        lb = ((x.last >> (i - 1)) << (i - 1)) | ((<uint64_t>1) << (i - 1))
        if nk < lb:
            break                                    # the smallest possible key is still ahead
        m = <uint64_t>0xFFFFFFFFFFFFFFFF
        e = x.head[i]
        while e != ENTRY_NONE:
            k = _tkey(x.exp[e])
            if k < m:
                m = k
            e = x.link[2 * e + 1]
        # every key of bucket i is >= the new `last` and shares its bits above i-1: each one
        # moves to a strictly lower bucket
        e = x.head[i]
        x.head[i] = ENTRY_NONE
        x.tail[i] = ENTRY_NONE
        x.nonempty &= ~((<uint64_t>1) << (i - 1))
        x.last = m if m <= nk else nk
        while e != ENTRY_NONE:
            nx = x.link[2 * e + 1]
            _rh_link(x, e, _tkey(x.exp[e]))
            e = nx
        if m > nk:
            break
    x.bumps += c._version - v0
    return out


# ---------------------------------------------------------------------------------------------
# Buffers (kept in step with the table's capacity by Cache._allocate / _grow / _clear_table)
# ---------------------------------------------------------------------------------------------

cdef _ttl_new_buffers(_Buffers b, Py_ssize_t capacity):
    """Allocate empty expiry buffers for `capacity` entries into b (see _new_buffers in kvcache/_core.pyx)."""
    b.xexp = np.full(capacity, np.inf, dtype=np.float64)
    b.xlink = np.full(2 * capacity, ENTRY_NONE, dtype=np.int32)
    b.xbkt = np.full(capacity, -1, dtype=np.int8)


cdef void _ttl_adopt(Cache c, _Buffers b, Py_ssize_t old) noexcept:
    """Move the expiry of entries 0..old-1 into b's buffers and use them (old 0: empty heap).

    Plain C, part of Cache._adopt's single step."""
    cdef _Expiry x = <_Expiry>c._xp
    if old:
        memcpy(buffer_data(b.xexp), x.exp, old * sizeof(double))
        memcpy(buffer_data(b.xlink), x.link, 2 * old * sizeof(int32_t))
        memcpy(buffer_data(b.xbkt), x.bkt, old * sizeof(int8_t))
    x.exp_arr, x.link_arr, x.bkt_arr = b.xexp, b.xlink, b.xbkt
    b.xexp = b.xlink = b.xbkt = None
    x.capacity = b.capacity
    x.exp = <double*>buffer_data(x.exp_arr)
    x.link = <int32_t*>buffer_data(x.link_arr)
    x.bkt = <int8_t*>buffer_data(x.bkt_arr)
    if not old:
        x._clear_heap()
    c._exp = x.exp


cdef int _ttl_start(Cache c) except -1:
    """Give a cache that has an _Expiry but no expiry buffers its buffers (all: never expire)."""
    cdef _Buffers b = _Buffers()
    cdef Py_ssize_t cap
    while c._exp == NULL:
        cap = c.t.capacity
        _ttl_new_buffers(b, cap)         # may run other threads: check before using them
        if c._exp == NULL and c.t.capacity == cap:
            b.capacity = cap
            _ttl_adopt(c, b, 0)
    return 0


cdef void _ttl_reset(Cache c) noexcept:
    cdef _Expiry x = <_Expiry>c._xp
    cdef Py_ssize_t e
    for e in range(x.capacity):
        x.exp[e] = INFINITY
        x.link[2 * e] = ENTRY_NONE
        x.link[2 * e + 1] = ENTRY_NONE
        x.bkt[e] = -1
    x._clear_heap()


cdef inline void _install(Cache c, _Expiry x) noexcept:
    """Make x the cache's expiry state; Cache._clock points into its timer (kept alive by x)."""
    c._xp = x
    c._clock = &(<_Timer>x.timer).st


cdef _Expiry _new_expiry(Cache c, object timer):
    cdef _Expiry x = _Expiry()
    x.timer = timer if isinstance(timer, _Timer) else _Timer(timer)
    # cachetools documents overriding expire() to see what expires: every implicit expiry
    # (set, len, popitem, resize...) then goes through it
    x.native_expire = type(c).expire is _CACHE_EXPIRE
    return x


cdef _Expiry _ttl_state(Cache c):
    """The cache's expiry state, created on first use with the default timer."""
    if c._xp is None:
        _install(c, _new_expiry(c, _time_monotonic))
    return <_Expiry>c._xp


cdef _ttl_enable(Cache c, object timer, int mode, object param):
    """Give a fresh cache its timer and default expiry and allocate the buffers (TTL/TLRU init)."""
    cdef _Expiry x = _new_expiry(c, timer)
    x.set_default(mode, param)
    c._exp = NULL                    # the new state gets buffers of its own (entries: no expiry)
    _install(c, x)
    _ttl_start(c)


cdef void _ttl_need_buffers(Cache c) except *:
    _ttl_state(c)
    _ttl_start(c)


cdef inline double _ttl_now(Cache c) except? -1:
    """The time for a lookup: NaN when it is the C clock, read later only if needed (see entry_dead)."""
    cdef _Timer tm = (<_Expiry>c._xp).timer
    if tm.st.nesting:
        return tm.st.frozen
    if tm.st.c_clock:
        return NAN
    return tm.to_f(tm._fn())


cdef _ttl_expire_now(Cache c):
    """Remove what has expired by now (the pairs are released when this returns)."""
    cdef _Timer tm = (<_Expiry>c._xp).timer
    cdef double now
    cdef list out
    if not (<_Expiry>c._xp).native_expire:
        tm._freeze()
        try:
            c.expire(tm._time_obj())
        finally:
            tm._thaw()
        return None
    now = tm.now_f()
    with cython.critical_section(c):
        out = _ttl_expire_locked(c, now)
    return None


# ---------------------------------------------------------------------------------------------
# The public operations (methods of Cache delegate here)
# ---------------------------------------------------------------------------------------------

cdef double _ttl_expiry(_Expiry x, object key, object value, object ttl, double now) except? -1:
    """The expiry time of an item set now (user code -- ttu, time arithmetic -- runs here)."""
    cdef _Timer tm = x.timer
    cdef double f
    if ttl is None:
        if x.mode == 0:
            return INFINITY
        if x.mode == 2:
            return tm.to_f(x.ttu(key, value, tm._time_obj()))
        if x.ttl_numeric and tm._kind == 1:
            return now + x.ttl_f            # as cachetools' float arithmetic `time + ttl`
        return tm.to_f(tm._time_obj() + x.ttl)
    if isinstance(ttl, _Real) and not isinstance(ttl, bool):
        f = float(ttl)
        if f != f:
            raise ValueError("ttl must not be NaN")
        if tm._kind == 1 or tm._kind == 2:
            return now + f * tm.scale()
    elif not isinstance(ttl, _timedelta):
        raise TypeError("ttl must be a number of seconds, a timedelta or None, not %s"
                        % type(ttl).__name__)
    return tm.to_f(tm._time_obj() + ttl)


cdef _ttl_setitem(Cache c, object key, hash_t h, object value, object ttl):
    """Set key with its expiry: expire what is due, then set as usual and stamp the entry."""
    cdef _Expiry x = <_Expiry>c._xp
    cdef _Timer tm = x.timer
    cdef double now, exp
    cdef list expired = None
    cdef Py_ssize_t slot, e
    cdef object k = None, v = None
    now = tm._freeze()
    try:
        exp = _ttl_expiry(x, key, value, ttl, now)
        if not x.native_expire:
            c.expire(tm._time_obj())
        with cython.critical_section(c):
            if x.native_expire:
                expired = _ttl_expire_locked(c, now)
            if x.drop_expired and not (now < exp):
                # an already expired item replaces nothing: the key goes (cachetools.TLRUCache)
                e = table_find(c, key, h, &slot)
                if e >= 0:
                    v = c._remove(<entry_t>e, slot)
                    k = c._removed_key
                    c._removed_key = None
                return
        if not _ttl_set_fast(c, key, h, value, exp):
            c._set_slow(key, h, value, exp)
    finally:
        tm._thaw()


cdef bint _ttl_set_fast(Cache c, object key, hash_t h, object value, double exp) except -1:
    """Cache.__setitem__'s native path with the entry stamped; False where it does not apply."""
    cdef Py_ssize_t slot, e
    cdef object old = None, evk = None, evv = None
    cdef bint evicted = False
    if c._sizefn is not None or not c._native_evict:
        return False
    with cython.critical_section(c):
        while True:
            e = table_find(c, key, h, &slot)
            if e >= 0:
                old = c._kv[2 * e + 1]              # released after the update, not during it
                c._kv[2 * e + 1] = value
                order_update(&c.o, &c.t, <entry_t>e)
                _ttl_stamp(c, <entry_t>e, exp)
                return True
            if c._max_entries < 1:
                raise ValueError("value too large")
            if c.t.count < c._max_entries and c.t.free_head == ENTRY_NONE:
                c._grow_for_one()                   # may run Python code: look the key up again
                continue
            break
        if c.t.count >= c._max_entries:
            evv = c._remove(order_victim(&c.o, &c.t), -1)
            evk = c._removed_key
            c._removed_key = None
            c._evictions += 1
            evicted = True
            slot = table_probe_free(&c.t, h)
        e = c._insert_at(slot, h, key, value, None)
        _ttl_stamp(c, <entry_t>e, exp)
    if evicted and c._on_evict is not None:
        c._on_evict(evk, evv)
    return True


cdef _ttl_set(Cache c, object key, object value, object ttl):
    if ttl is None and c._exp == NULL:
        c[key] = value
        return
    _ttl_need_buffers(c)
    _ttl_setitem(c, key, key_hash(c, key), value, ttl)


cdef object _ttl_of(Cache c, object key):
    cdef Py_ssize_t slot, e
    cdef hash_t h = key_hash(c, key)
    cdef double now = expiry_clock(c)
    cdef double exp
    cdef _Timer tm
    with cython.critical_section(c):
        e = table_find(c, key, h, &slot)
        if e < 0 or entry_dead(c, e, now):
            raise KeyError(key)
        if c._exp == NULL:
            return None
        exp = c._exp[e]
    if exp == INFINITY:
        return None
    now = resolve_clock(now)
    tm = (<_Expiry>c._xp).timer
    if tm._kind == 2:
        return _timedelta(microseconds=exp - now)
    return exp - now


cdef list _ttl_expire(Cache c, object time):
    cdef _Timer tm
    cdef double now
    cdef list out
    if c._exp == NULL:
        return []
    tm = (<_Expiry>c._xp).timer
    now = tm.now_f() if time is None else tm.to_f(time)
    with cython.critical_section(c):
        out = _ttl_expire_locked(c, now)
    return [] if out is None else out


cdef object _ttl_get_timer(Cache c):
    return _ttl_state(c).timer


cdef _ttl_set_timer(Cache c, object timer):
    cdef _Timer tm = _Timer(timer)
    cdef _Expiry x = _ttl_state(c)
    x.timer = tm
    _install(c, x)


# ---------------------------------------------------------------------------------------------
# State: export/import (remaining TTLs), pickling (absolute times and the timer), checks
# ---------------------------------------------------------------------------------------------

cdef object _ttl_live_order(Cache c, object order, double now):
    """The entries of `order` that have not expired at `now`."""
    cdef cnp.ndarray arr = <cnp.ndarray>order
    cdef entry_t* op = <entry_t*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t i, j = 0, n = arr.shape[0]
    for i in range(n):
        if not entry_dead(c, op[i], now):
            op[j] = op[i]
            j += 1
    return order[:j]


cdef object _ttl_export(Cache c, object order, double now, bint absolute):
    """Each entry's remaining time-to-live in seconds (or absolute expiry time), inf: never."""
    cdef cnp.ndarray arr = <cnp.ndarray>order
    cdef entry_t* op = <entry_t*>cnp.PyArray_DATA(arr)
    cdef Py_ssize_t i, n = arr.shape[0]
    cdef cnp.ndarray out = np.full(n, np.inf, dtype=np.float64)
    cdef double* fp = <double*>cnp.PyArray_DATA(out)
    cdef double scale
    if c._exp == NULL:
        return out
    now = resolve_clock(now)
    scale = (<_Expiry>c._xp).timer.scale()
    for i in range(n):
        if absolute:
            fp[i] = c._exp[op[i]]
        elif c._exp[op[i]] != INFINITY:
            fp[i] = (c._exp[op[i]] - now) / scale
    return out


cdef object _ttl_import_prepare(Cache self, Cache fresh, Py_ssize_t n, object ttl, object expires):
    """Give `fresh` this cache's timer and default; return the absolute expiry times to stamp."""
    cdef _Expiry x, fx
    if self._xp is None and ttl is None and expires is None:
        return None
    if self._xp is None:                 # this cache keeps no state until the import succeeds
        x = _new_expiry(self, _time_monotonic)
    else:
        x = <_Expiry>self._xp
    fx = _new_expiry(fresh, x.timer)
    fx.mode, fx.ttl, fx.ttu, fx.ttl_f = x.mode, x.ttl, x.ttu, x.ttl_f
    fx.ttl_numeric, fx.drop_expired = x.ttl_numeric, x.drop_expired
    _install(fresh, fx)
    if self._exp != NULL or fx.mode != 0 or ttl is not None or expires is not None:
        _ttl_start(fresh)
    if expires is not None:
        arr = np.array(expires, dtype=np.float64)
    elif ttl is not None:
        arr = np.array(ttl, dtype=np.float64)
        if arr.ndim == 1 and arr.shape[0] == n:
            arr = np.where(np.isnan(arr), np.inf, arr)
            arr = x.timer.now_f() + arr * x.timer.scale()
    else:
        return None
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError("state expiry times do not match the keys")
    return arr


cdef tuple _ttl_getstate(Cache c):
    cdef _Expiry x = <_Expiry>c._xp
    return (x.timer._fn, x.timer._kind, x.timer._origin, x.mode, x.ttl, x.ttu)


cdef _ttl_setstate(Cache c, tuple st):
    fn, kind, origin, mode, ttl, ttu = st
    cdef _Expiry x = _new_expiry(c, fn)
    if not x.timer.st.c_clock:
        x.timer._kind = kind
    x.timer._origin = origin
    x.set_default(mode, ttu if mode == 2 else ttl)
    _install(c, x)


cdef _ttl_check(Cache c):
    cdef _Expiry x = <_Expiry>c._xp
    cdef Py_ssize_t e, n = 0, cnt
    cdef int b
    cdef entry_t f, p
    cdef uint64_t k
    for e in range(c.t.capacity):
        if c.t.ent[e].prev == ENTRY_FREE:
            if x.exp[e] != INFINITY or x.bkt[e] != -1:
                raise AssertionError("free entry %d has an expiry" % e)
        elif (x.exp[e] == INFINITY) != (x.bkt[e] == -1):
            raise AssertionError("entry %d: expiry and heap membership disagree" % e)
    for b in range(_NBUCKETS):
        f = x.head[b]
        p = ENTRY_NONE
        cnt = 0
        while f != ENTRY_NONE:
            cnt += 1
            if cnt > c.t.capacity or x.bkt[f] != b or x.link[2 * f] != p:
                raise AssertionError("heap bucket %d is corrupt" % b)
            k = _tkey(x.exp[f])
            if b == 0:
                if k > x.last:
                    raise AssertionError("bucket 0 holds a key above last")
            elif k <= x.last or kv_msb64(k ^ x.last) + 1 != b:
                raise AssertionError("entry %d is in the wrong bucket" % f)
            p = f
            f = x.link[2 * f + 1]
        if x.tail[b] != p:
            raise AssertionError("heap bucket %d has a wrong tail" % b)
        if b > 0 and bool(cnt) != bool(x.nonempty & ((<uint64_t>1) << (b - 1))):
            raise AssertionError("non-empty mask is wrong for bucket %d" % b)
        n += cnt
    if n != x.n:
        raise AssertionError("heap count %d != %d entries" % (x.n, n))


cdef Py_ssize_t _ttl_nbytes(Cache c):
    cdef _Expiry x = <_Expiry>c._xp
    return x.exp_arr.nbytes + x.link_arr.nbytes + x.bkt_arr.nbytes


def _ttl_iter(Cache c):
    # A snapshot of the keys, each yielded if still there and alive when reached: inserting,
    # deleting or expiring while iterating is no error (cachetools' TTLCache.__iter__).
    for key in list(_CacheIterator(c, 0)):
        if Cache.__contains__(c, key):
            yield key


cdef object _CACHE_EXPIRE = Cache.expire


# ---------------------------------------------------------------------------------------------
# The hooks the engine calls (declared in _core.pxd as ExpiryHooks)
# ---------------------------------------------------------------------------------------------

@cython.final
cdef class _Hooks(ExpiryHooks):
    cdef double now(self, Cache c) except? -1:
        return _ttl_now(c)

    cdef uint64_t bumps(self, Cache c) noexcept:
        return (<_Expiry>c._xp).bumps

    cdef void stamp(self, Cache c, entry_t e, double exp) noexcept:
        _ttl_stamp(c, e, exp)

    cdef void forget(self, Cache c, entry_t e) noexcept:
        _ttl_forget(c, e)

    cdef object expire_now(self, Cache c):
        return _ttl_expire_now(c)

    cdef object setitem(self, Cache c, object key, hash_t h, object value, object ttl):
        return _ttl_setitem(c, key, h, value, ttl)

    cdef void reset(self, Cache c) noexcept:
        _ttl_reset(c)

    cdef object new_buffers(self, _Buffers b, Py_ssize_t capacity):
        return _ttl_new_buffers(b, capacity)

    cdef void adopt(self, Cache c, _Buffers b, Py_ssize_t old) noexcept:
        _ttl_adopt(c, b, old)

    cdef tuple getstate(self, Cache c):
        return _ttl_getstate(c)

    cdef object setstate(self, Cache c, tuple st):
        return _ttl_setstate(c, st)

    cdef object live_order(self, Cache c, object order, double now):
        return _ttl_live_order(c, order, now)

    cdef object export(self, Cache c, object order, double now, bint absolute):
        return _ttl_export(c, order, now, absolute)

    cdef object import_prepare(self, Cache c, Cache fresh, Py_ssize_t n, object ttl, object expires):
        return _ttl_import_prepare(c, fresh, n, ttl, expires)

    cdef object check(self, Cache c):
        return _ttl_check(c)

    cdef Py_ssize_t nbytes(self, Cache c) except -1:
        return _ttl_nbytes(c)

    cdef object set(self, Cache c, object key, object value, object ttl):
        return _ttl_set(c, key, value, ttl)

    cdef object ttl_of(self, Cache c, object key):
        return _ttl_of(c, key)

    cdef object expire(self, Cache c, object time):
        return _ttl_expire(c, time)

    cdef object get_timer(self, Cache c):
        return _ttl_get_timer(c)

    cdef object set_timer(self, Cache c, object timer):
        return _ttl_set_timer(c, timer)

    cdef double scale(self, Cache c) except? -1:
        return (<_Expiry>c._xp).timer.scale()


register_expiry(_Hooks())


def enable_default_ttl(Cache c, ttl, timer=_time.monotonic):
    """Give every entry set from now on a time-to-live of `ttl` (memoize(ttl=...) on any policy)."""
    _ttl_enable(c, timer, 1, ttl)


# ---------------------------------------------------------------------------------------------
# The timed caches
# ---------------------------------------------------------------------------------------------

# A required constructor argument's default: Cython's own error for a missing positional
# argument does not name it; cachetools' (plain Python) does, so the constructors check for
# this marker and raise Python's message (as kvcache._core's constructors do).
cdef object _REQUIRED = object()


cdef _check_required(Cache self, object maxsize, str name, object value):
    """Raise Python's TypeError naming `maxsize` and/or `name` when they were not given."""
    cdef list missing = []
    if maxsize is _REQUIRED:
        missing.append("'maxsize'")
    if value is _REQUIRED:
        missing.append("'%s'" % name)
    if missing:
        raise TypeError("%s.__init__() missing %d required positional argument%s: %s"
                        % (type(self).__name__, len(missing), "" if len(missing) == 1 else "s",
                           " and ".join(missing)))


cdef _check_ttl(object ttl):
    """Reject a `ttl` no item could live by: negative, NaN, or text (as cachebox does).

    cachetools accepts any `ttl` silently and fails later, at the first insertion (`'x'`), or
    keeps nothing (`-1`).  A non-numeric `ttl` other than text stays allowed: a `timedelta`
    with a `datetime` timer is cachetools' documented use.
    """
    if isinstance(ttl, (str, bytes, bytearray)) or ttl is None:
        raise TypeError("ttl must be a number of the timer's units, not %s" % type(ttl).__name__)
    if isinstance(ttl, _Real) and not ttl >= 0:          # `not >=`: NaN fails too
        raise ValueError("ttl must be >= 0, got %r" % (ttl,))


cdef class TTLCache(Cache):
    """LRU cache whose items expire `ttl` after they were set (cachetools.TTLCache).

    `timer()` gives the current time (`time.monotonic` by default; datetimes work with a
    timedelta `ttl`).  An item is alive while `timer() < set_time + ttl`; expired items are
    never returned, are skipped by iteration and `len`, and go before any live item is
    evicted.  `with cache.timer as now:` freezes time for a block.  `set(key, value, ttl=...)`
    gives one item its own time-to-live.  Iteration order: least recently used first.

    Thread-safety: as Cache.  Expiry costs O(1) amortized per operation (see the header of this module).
    """

    # the signature shown by inspect and help(): keep it equal to __init__'s
    __signature__ = InitSignature(
        lambda self, maxsize, ttl, timer=_time.monotonic, getsizeof=None, *, on_evict=None,
               seed=None, capacity=None: None)

    def __init__(self, maxsize=_REQUIRED, ttl=_REQUIRED, timer=_time.monotonic, getsizeof=None, *,
                 on_evict=None, seed=None, capacity=None):
        _check_required(self, maxsize, "ttl", ttl)
        _check_ttl(ttl)
        self._setup(maxsize, getsizeof, on_evict, seed, capacity, None)
        _ttl_enable(self, timer, 1, ttl)

    cdef int _policy(self):
        return POLICY_LRU

    @property
    def ttl(self):
        """The time-to-live value of the cache's items."""
        return None if self._xp is None else (<_Expiry>self._xp).ttl

    def popitem(self):
        """Remove and return the `(key, value)` pair least recently used that has not already expired."""
        return self._popitem()

    def __iter__(self):
        return _ttl_iter(self)


cdef class TLRUCache(Cache):
    """Time-aware LRU cache: each item expires at `ttu(key, value, now)` (cachetools.TLRUCache).

    An item is alive while `timer() < expires`; setting an item whose `ttu` is already past
    removes the key instead.  Otherwise as TTLCache.
    """

    # the signature shown by inspect and help(): keep it equal to __init__'s
    __signature__ = InitSignature(
        lambda self, maxsize, ttu, timer=_time.monotonic, getsizeof=None, *, on_evict=None,
               seed=None, capacity=None: None)

    def __init__(self, maxsize=_REQUIRED, ttu=_REQUIRED, timer=_time.monotonic, getsizeof=None, *,
                 on_evict=None, seed=None, capacity=None):
        _check_required(self, maxsize, "ttu", ttu)
        if not callable(ttu):
            raise TypeError("ttu must be callable")
        self._setup(maxsize, getsizeof, on_evict, seed, capacity, None)
        _ttl_enable(self, timer, 2, ttu)

    cdef int _policy(self):
        return POLICY_LRU

    @property
    def ttu(self):
        """The time-to-use function used by the cache."""
        return None if self._xp is None else (<_Expiry>self._xp).ttu

    def popitem(self):
        """Remove and return the `(key, value)` pair least recently used that has not already expired."""
        return self._popitem()

    def __iter__(self):
        return _ttl_iter(self)


register_native_popitem(TTLCache.popitem)
register_native_popitem(TLRUCache.popitem)
