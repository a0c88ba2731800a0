"""Shared fixtures: every mapping test runs against every cache class."""
import pytest

import kvcache

CLASSES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache, kvcache.RRCache,
           kvcache.TinyLFUCache]


@pytest.fixture(params=CLASSES, ids=lambda c: c.__name__)
def cache_cls(request):
    """Each native cache class in turn."""
    return request.param

