"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache, TinyLFUCache

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    "TinyLFUCache",
]
