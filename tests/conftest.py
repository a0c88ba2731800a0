"""Shared fixtures: every mapping test runs against every public cache class."""
import pytest

from tests.cache_specs import SPECS


@pytest.fixture(params=SPECS, ids=repr)
def spec(request):
    """Each public cache class in turn, with its CacheSpec."""
    return request.param


# The classes built as cls(maxsize, ...) with every keyword: the fixture of the tests of the
# engine's internals (hostile keys, leaks, threads, per-entry TTLs).
CLASSES = [s.cls for s in SPECS if s.plain_constructor]


@pytest.fixture(params=CLASSES, ids=lambda c: c.__name__)
def cache_cls(request):
    """Each cache class built as cls(maxsize, ...) in turn."""
    return request.param
