"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache import keys, snapshot
from kvcache._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache
from kvcache._expiry import TLRUCache, TTLCache
from kvcache._tinylfu import TinyLFUCache
from kvcache._vector import VectorCache, digest
from kvcache.decorators import (
    LRU,
    CacheInfo,
    cache,
    cached,
    cachedmethod,
    fifo_cache,
    lfu_cache,
    lru_cache,
    memoize,
    rr_cache,
    ttl_cache,
)
from kvcache.embeddings import CachedEmbedder

__version__ = "0.1.0"

__all__ = [
    "LRU",
    "Cache",
    "CacheInfo",
    "CacheStats",
    "CachedEmbedder",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    "TLRUCache",
    "TTLCache",
    "TinyLFUCache",
    "VectorCache",
    "cache",
    "cached",
    "cachedmethod",
    "digest",
    "fifo_cache",
    "keys",
    "lfu_cache",
    "lru_cache",
    "memoize",
    "rr_cache",
    "ttl_cache",
]
