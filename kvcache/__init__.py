"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache

# -- memoization (issue 3): key functions, decorators, lru-dict's LRU --------------------------
from kvcache import keys
from kvcache.decorators import (
    LRU,
    cache,
    cached,
    cachedmethod,
    fifo_cache,
    lfu_cache,
    lru_cache,
    memoize,
    rr_cache,
)
# -- end memoization ----------------------------------------------------------------------------

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    # memoization
    "LRU",
    "cache",
    "cached",
    "cachedmethod",
    "fifo_cache",
    "keys",
    "lfu_cache",
    "lru_cache",
    "memoize",
    "rr_cache",
]
