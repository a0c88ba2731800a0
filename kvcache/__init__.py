"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

from kvcache._core import Cache, CacheStats, FIFOCache, LFUCache, LRUCache, RRCache

# Batch numpy API and embedding cache (issue 6).
from kvcache._core import VectorCache, digest
from kvcache.embeddings import CachedEmbedder

__version__ = "0.1.0"

__all__ = [
    "Cache",
    "CacheStats",
    "FIFOCache",
    "LFUCache",
    "LRUCache",
    "RRCache",
    # issue 6
    "VectorCache",
    "digest",
    "CachedEmbedder",
]
