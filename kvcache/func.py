"""cachetools.func's decorators: functools-like wrappers keyed the way cachetools keys.

`kvcache.lru_cache` follows `functools.lru_cache` (it keys the bare arguments, so `f(1)` and
`f(1.0)` are one entry only because they hash and compare equal in a tuple).  This module gives
cachetools users `cachetools.func`'s exact semantics under its own names: every wrapper here is
`kvcache.cached` over a kvcache cache, keyed with `kvcache.keys.hashkey` (`typedkey` when
`typed=True`), locked by a condition (concurrent misses on one key wait for the first call's
result), with `cache_info()`, `cache_clear()` and `cache_parameters()`.  `maxsize=None` caches
without bound in a plain dict (a TTL cache without bound for `ttl_cache`); a decorator used bare
(`@lru_cache`) takes the defaults.
"""

from kvcache._core import LRUCache
from kvcache.decorators import _func_cache, fifo_cache, lfu_cache, rr_cache, ttl_cache

__all__ = ("fifo_cache", "lfu_cache", "lru_cache", "rr_cache", "ttl_cache")


def lru_cache(maxsize=128, typed=False):
    """Decorate a function with an LRU memoizing wrapper, as cachetools.func.lru_cache does.

    Unlike `kvcache.lru_cache` (functools' semantics) the wrapper is `cached` keyed with
    `hashkey`, and concurrent misses on one key call the function once.
    """
    if maxsize is None:
        return _func_cache({}, None, typed)
    if callable(maxsize):
        return _func_cache(LRUCache(128), 128, typed)(maxsize)
    return _func_cache(LRUCache(maxsize), maxsize, typed)
