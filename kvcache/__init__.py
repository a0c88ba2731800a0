"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache._core import (
    Cache,
    CacheStats,
    FIFOCache,
    LFUCache,
    LRUCache,
    RRCache,
    TLRUCache,
    TTLCache,
    VectorCache,
    digest,
)
from kvcache._ttl_func import ttl_cache
from kvcache.embeddings import CachedEmbedder

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "CachedEmbedder",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    "TLRUCache",
    "TTLCache",
    "VectorCache",
    "digest",
    "ttl_cache",
]
