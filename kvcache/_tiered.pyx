# cython: language_level=3, freethreading_compatible=False
# The read path of kvcache.redis.TieredCache (issue 7), AsyncTieredCache and
# kvcache.memcached.TieredCache: a local-tier hit, compiled.
#
# Why this is compiled although the Redis tier is otherwise written against the public
# API: a local hit is the tier's whole point, and the goal is "at most 2x a plain LRUCache hit".
# A Python __getitem__ costs a frame, a bound `local.get` call, attribute loads for the live
# flag and the counter and a float comparison for carried TTLs: 3-4x an LRUCache hit, measured.
# Here the hit is one C call: when the local tier is one of the engine's caches (with the native
# lookup) it goes straight through cache_lookup, exactly what `local.get` would run; any other
# local tier is called through its bound `get`.  Everything else of the tier (Redis, locks,
# invalidation, fail-open) stays in Python in kvcache/redis.py and kvcache/memcached.py; this
# class only holds the state the hit reads: the local tier, the live flag, the local-hit counter.
# The Memcached tier's copies are Expiring entries whose deadline ends their trust window.
#
# Reentrancy and threads: the lookup is the engine's own (critical section on the local cache,
# a key's __eq__ may run Python code); the counter is a C integer bumped while holding the GIL,
# so concurrent hits are never lost.  (The module is not declared free-threading compatible;
# when it is, that counter needs an atomic add.)

cimport cython
from libc.math cimport NAN
from libc.stdint cimport int64_t

from kvcache._core cimport KV_HAVE_CLOCK, Cache, cache_get, expired_at, native_get

import time

__all__ = ["AsyncTieredBase", "Expiring", "MISSING", "TieredBase"]

cdef object _time_monotonic = time.monotonic


@cython.final
@cython.auto_pickle(False)
cdef class Expiring:
    """A local value with the monotonic deadline (time.monotonic) until which the local tier may answer.

    The Redis tier's deadline is the value's TTL; the Memcached tier's is also the end of the
    copy's trust window, and `token` carries what revalidating it needs (its CAS, its TTL).
    """

    cdef readonly object value
    cdef readonly double deadline
    cdef readonly object token

    def __init__(self, value, double deadline, token=None):
        self.value = value
        self.deadline = deadline
        self.token = token

    def __reduce__(self):
        return (Expiring, (self.value, self.deadline, self.token))

    def __repr__(self):
        return "Expiring(%r, deadline=%r, token=%r)" % (self.value, self.deadline, self.token)


# What a local lookup returns for "not there"; kvcache.redis uses the same object.
MISSING = object()
cdef object _tier_missing = MISSING


cdef inline bint _tier_alive(double deadline) except -1:
    """Is a carried deadline still ahead of time.monotonic()?"""
    if KV_HAVE_CLOCK:
        return not expired_at(deadline, NAN)      # the C clock (see kvcache._core.pxd): same doubles
    return deadline > <double>_time_monotonic()


@cython.auto_pickle(False)
cdef class TieredBase:
    """The compiled local-tier read path of kvcache.redis.TieredCache (not for direct use)."""

    cdef readonly object _local
    cdef object _local_get           # local.get, bound
    cdef Cache _native               # local itself when `local.get` is the engine's, else None
    cdef public bint _live           # invalidations flowing: the local tier may answer
    cdef int64_t _hits               # reads answered by the local tier
    cdef bint _own_getitem           # False when a subclass overrides __getitem__

    def _bind_local(self, local):
        """Make `local` the local tier (called once, by the constructor)."""
        get = local.get
        self._native = None
        if (isinstance(local, Cache) and native_get(type(local))
                and "get" not in (getattr(local, "__dict__", None) or ())):
            self._native = <Cache>local
        self._local = local
        self._local_get = get
        self._own_getitem = type(self).__getitem__ is TieredBase.__getitem__

    @property
    def _local_hits(self):
        return self._hits

    def __getitem__(self, key):
        v = _tier_hit(self, key)
        if v is _tier_missing:
            v = self._fetch(key)
            if v is _tier_missing:
                raise KeyError(key)
        return v

    @cython.binding(False)          # a method descriptor, as Cache.get (see there)
    @cython.embedsignature(False)
    def get(self, key, default=None):
        "get($self, key, default=None)\n--\n\n" \
        "Return the value for `key` (local tier, then Redis), else `default`."
        if not self._own_getitem:
            try:
                return self[key]
            except KeyError:
                return default
        v = _tier_hit(self, key)
        if v is _tier_missing:
            v = self._fetch(key)
            if v is _tier_missing:
                return default
        return v

    def __contains__(self, key):
        if not self._own_getitem:
            try:
                self[key]
            except KeyError:
                return False
            return True
        return _tier_hit(self, key) is not _tier_missing or self._fetch(key) is not _tier_missing

    def _local_hit(self, key):
        """Return the value of `key` if the local tier may answer (counted as a local hit), else MISSING."""
        return _tier_hit(self, key)

    def _hit_many(self, keys):
        """Return a list: the local value of each of `keys` the local tier may answer (counted), else MISSING."""
        return [_tier_hit(self, k) for k in keys]

    def _count_local_hit(self):
        """Count a read the local tier answered after the Python path validated it."""
        self._hits += 1

    def _local_fallback(self, key):
        """Return the live local value of `key` (counted as a local hit) or MISSING; drop an expired copy.

        For reads Redis could not answer (fail-open), whatever the live flag says.
        """
        v = _tier_local_value(self, key)
        if v is _tier_missing:
            return v
        if type(v) is Expiring:
            if not _tier_alive((<Expiring>v).deadline):
                self._local.pop(key, None)
                return _tier_missing
            v = (<Expiring>v).value
        self._hits += 1
        return v


@cython.auto_pickle(False)
cdef class AsyncTieredBase(TieredBase):
    """The compiled local-tier read path of kvcache.redis.AsyncTieredCache (not for direct use).

    A Cython coroutine: a local hit returns from its first step without awaiting anything,
    and costs less than a Python coroutine calling the hit (measured: bench/redis_async.py).
    """

    async def get(self, key, default=None):
        "Return the value for `key` (local tier, then Redis), else `default`."
        v = _tier_hit(self, key)
        if v is _tier_missing:
            v = await self._fetch(key)
            if v is _tier_missing:
                return default
        return v


# Module-level rather than cdef methods: no vtable, so the compiler inlines them into the hit.

cdef inline object _tier_local_value(TieredBase t, object key):
    """`local.get(key, MISSING)`: through the engine's counted lookup when local is native."""
    cdef Cache c = t._native
    if c is not None and c._native_getitem:
        return cache_get(c, key, _tier_missing)     # what Cache.get runs, without the call
    if t._local_get is None:
        return _tier_missing            # made by __new__ alone: _fetch reports the problem
    return t._local_get(key, _tier_missing)


cdef inline object _tier_hit(TieredBase t, object key):
    """Return the local value of `key` if the local tier may answer (counted), else MISSING.

    A missing, expired or untrusted (stream down) copy is left in place: the caller's
    _fetch replaces or drops it.
    """
    v = _tier_local_value(t, key)
    if v is not _tier_missing and t._live:
        if type(v) is not Expiring:
            t._hits += 1
            return v
        if _tier_alive((<Expiring>v).deadline):
            t._hits += 1
            return (<Expiring>v).value
    return _tier_missing
