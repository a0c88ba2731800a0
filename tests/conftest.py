"""Shared fixtures: every mapping test runs against every cache class."""
import os
import shutil

import sys

import pytest

import kvcache

# Shared test helpers (reference models, service fixtures) live beside the tests; with
# --import-mode=importlib the folder is not on sys.path by itself.
sys.path.insert(0, os.path.dirname(__file__))

CLASSES = [kvcache.Cache, kvcache.FIFOCache, kvcache.LRUCache, kvcache.LFUCache, kvcache.RRCache,
           kvcache.TinyLFUCache]


@pytest.fixture(params=CLASSES, ids=lambda c: c.__name__)
def cache_cls(request):
    """Each native cache class in turn."""
    return request.param


def require_binary(name):
    """Return the path of `name`, or skip (fail when KVCACHE_REQUIRE_SERVICES is set, as in CI)."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} not found; install it (e.g. `apt-get install -y redis-server`)"
        if os.environ.get("KVCACHE_REQUIRE_SERVICES"):
            pytest.fail(msg + " -- KVCACHE_REQUIRE_SERVICES is set, so this is a failure")
        pytest.skip(msg)
    return path
