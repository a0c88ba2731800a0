"""kvcache: compiled drop-in caches (cachetools / functools / lru-dict compatible)."""

# From a clone's root the source folder comes first on sys.path and shadows the installed
# package; without its compiled parts the first import would fail deep inside with "No module
# named 'kvcache._core'". Every .pyx here is a compiled part (an installed package ships none),
# so a missing one means an unbuilt checkout: say so in one line, and what to do.
def _require_compiled_parts():
    import importlib.util
    import os

    here = os.path.dirname(os.path.abspath(__file__))
    missing = sorted(
        name[:-4]
        for name in os.listdir(here)
        if name.endswith(".pyx") and importlib.util.find_spec("kvcache." + name[:-4]) is None
    )
    if missing:
        raise ImportError(
            f"kvcache is imported from its source folder {here}, which lacks its compiled parts"
            f" ({', '.join(missing)}): build them in place with `pip install -e .` (or"
            " `python setup.py build_ext --inplace`), or run from another directory to use the"
            " installed kvcache",
            name="kvcache",
            path=here,
        )


_require_compiled_parts()
del _require_compiled_parts

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
