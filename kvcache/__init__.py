"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache

# -- expiry (issue 4) --------------------------------------------------------------------------
from kvcache._core import TLRUCache, TTLCache
from kvcache._ttl_func import ttl_cache
# -----------------------------------------------------------------------------------------------

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    # expiry (issue 4)
    "TLRUCache",
    "TTLCache",
    "ttl_cache",
]
