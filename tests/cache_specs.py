"""The public cache classes, each with how to build one and where its mapping behaviour differs.

The `spec` fixture (conftest.py) runs a test once per class; a test that needs a subset imports
SPECS from here and parametrises `spec` itself.
"""
import dataclasses
from typing import Callable

import kvcache

# Far enough ahead that nothing expires while a test runs: the timed classes then behave as
# plain mappings (TTLCache and TLRUCache order their live entries by recency, as LRUCache).
FAR = 1e9


def far_future(key, value, now):
    """TLRUCache's ttu for the mapping tests (module level, so the caches pickle)."""
    return now + FAR


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """A public cache class, how to build one, and where its mapping behaviour differs."""

    cls: type
    # (cls, maxsize, **kwargs) -> cache; cls may be a subclass of `cls`
    build: Callable
    # takes getsizeof= and any non-negative real maxsize (0, 1.5, inf); lru-dict's LRU takes a
    # positive int size and counts items
    weighted: bool = True
    # takes the seed= and capacity= keywords (lru-dict's LRU has a fixed signature)
    tuning: bool = True
    # == compares contents with any mapping and the cache is unhashable; lru-dict's LRU is equal
    # only to itself and hashable
    dict_eq: bool = True
    # keys()/values()/items() are live views; lru-dict's LRU returns lists
    views: bool = True
    # repr is a dict's, oldest first (lru-dict's LRU), not ClassName({...}, maxsize=, currsize=)
    dict_repr: bool = False
    # iteration runs most recently used first (lru-dict's LRU); otherwise it is the eviction
    # order (oldest, least recently or least frequently used first; arbitrary for RRCache)
    mru_first: bool = False
    # adding or removing keys while iterating over the cache raises RuntimeError, as for a dict;
    # TTLCache and TLRUCache let the walk go on, as cachetools' do (entries expire under an
    # iterator anyway); their views still raise: a strict xfail in test_mapping.py
    iter_guard: bool = True
    # pop() and popitem() remove through an overridden __delitem__, as cachetools' do; the
    # lru-dict LRU's own pop and popitem (counted as lookups, as lru-dict's) remove directly,
    # while its evictions still go through __delitem__
    delitem_hook: bool = True
    # the victim depends only on the operations (RRCache draws it at random)
    ordered_eviction: bool = True

    @property
    def name(self):
        return self.cls.__name__

    @property
    def plain_constructor(self):
        """Whether the class is built as cls(maxsize, **keywords), nothing else required."""
        return self.build is _plain

    def make(self, maxsize, cls=None, **kwargs):
        """Build a cache of this class (or of `cls`, a subclass) with room for `maxsize`."""
        return self.build(cls or self.cls, maxsize, **kwargs)

    def __repr__(self):
        return self.name


def _plain(cls, maxsize, **kwargs):
    return cls(maxsize, **kwargs)


def _ttl(cls, maxsize, **kwargs):
    return cls(maxsize, FAR, **kwargs)


def _tlru(cls, maxsize, **kwargs):
    return cls(maxsize, far_future, **kwargs)


def _lru_dict(cls, maxsize, on_evict=None, **kwargs):
    # lru-dict's name for on_evict; any other keyword reaches the class, which refuses it
    return cls(maxsize, callback=on_evict, **kwargs)


SPECS = [
    CacheSpec(kvcache.Cache, _plain),
    CacheSpec(kvcache.FIFOCache, _plain),
    CacheSpec(kvcache.LRUCache, _plain),
    CacheSpec(kvcache.LFUCache, _plain),
    CacheSpec(kvcache.RRCache, _plain, ordered_eviction=False),
    CacheSpec(kvcache.TTLCache, _ttl, iter_guard=False),
    CacheSpec(kvcache.TLRUCache, _tlru, iter_guard=False),
    CacheSpec(kvcache.TinyLFUCache, _plain),
    CacheSpec(kvcache.LRU, _lru_dict, weighted=False, tuning=False, dict_eq=False, views=False,
              dict_repr=True, mru_first=True, delitem_hook=False),
]
