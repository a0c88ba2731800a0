"""`ttl_cache`: a memoizing decorator over TTLCache, as `cachetools.func.ttl_cache`.

Kept apart from decorators.py until the two are merged: it depends only on the public
TTLCache.
"""
import collections
import functools
import math
import threading
import time

from kvcache._core import TTLCache

__all__ = ["ttl_cache"]

CacheInfo = collections.namedtuple("CacheInfo", "hits misses maxsize currsize")


class _UnboundTTLCache(TTLCache):
    """TTLCache without a size bound whose `maxsize` reads None (as cachetools.func's)."""

    def __init__(self, ttl, timer):
        TTLCache.__init__(self, math.inf, ttl, timer)

    @property
    def maxsize(self):
        return None


class _KwdMark:
    __slots__ = ()

    def __repr__(self):
        return "<kwd_mark>"


_KWD_MARK = (_KwdMark(),)


class _HashedTuple(tuple):
    """A key tuple that computes its hash once (the cache hashes it on every probe)."""

    __hash = None

    def __hash__(self):
        if self.__hash is None:
            self.__hash = tuple.__hash__(self)
        return self.__hash


def _make_key(args, kwargs, typed):
    key = args
    if kwargs:
        key += _KWD_MARK + tuple(sorted(kwargs.items()))
    if typed:
        key += tuple(type(v) for v in args)
        if kwargs:
            key += tuple(type(v) for _, v in sorted(kwargs.items()))
    return _HashedTuple(key)


def _memoize(cache, maxsize, typed):
    def decorator(func):
        cond = threading.Condition()
        pending = set()
        hits = misses = 0

        def wrapper(*args, **kwargs):
            nonlocal hits, misses
            k = _make_key(args, kwargs, typed)
            with cond:
                # one computation per key at a time: later callers wait for its result
                cond.wait_for(lambda: k not in pending)
                try:
                    result = cache[k]
                except KeyError:
                    pending.add(k)
                    misses += 1
                else:
                    hits += 1
                    return result
            try:
                value = func(*args, **kwargs)
                with cond:
                    try:
                        cache[k] = value
                    except ValueError:
                        pass                    # value too large
                return value
            finally:
                with cond:
                    pending.discard(k)
                    cond.notify_all()

        def cache_info():
            with cond:
                return CacheInfo(hits, misses, cache.maxsize, cache.currsize)

        def cache_clear():
            nonlocal hits, misses
            with cond:
                cache.clear()
                hits = misses = 0

        wrapper.cache = cache
        wrapper.cache_info = cache_info
        wrapper.cache_clear = cache_clear
        wrapper.cache_parameters = lambda: {"maxsize": maxsize, "typed": typed}
        return functools.update_wrapper(wrapper, func)

    return decorator


def ttl_cache(maxsize=128, ttl=600, timer=time.monotonic, typed=False):
    """Decorate a function to memoize up to `maxsize` results, LRU-evicted, each for `ttl` seconds.

    As `cachetools.func.ttl_cache`: `maxsize=None` is unbounded, and `@ttl_cache` without
    arguments uses the defaults.  The wrapper has `cache_info()`, `cache_clear()`,
    `cache_parameters()` and the cache itself as `.cache`.
    """
    if maxsize is None:
        return _memoize(_UnboundTTLCache(ttl, timer), None, typed)
    elif callable(maxsize):
        return _memoize(TTLCache(128, ttl, timer), 128, typed)(maxsize)
    else:
        return _memoize(TTLCache(maxsize, ttl, timer), maxsize, typed)
