"""Core workloads of issue 2: get-hit, get-miss, set-with-eviction, Zipf memoization, memory.

Each test times one workload on one implementation, then checks that the implementation did
the work correctly (exact-policy caches against a pure-Python model), so under
``--benchmark-disable`` this file is a fast correctness test of every implementation.
"""
import os
import time

import pytest

from kvbench import (MISSING, NotInstalled, impls_for, make_evict_data, make_get_data,
                     make_zipf_data, model_misses, record)
import memory


def _ids(impls):
    return [impl.name for impl in impls]


def _new(impl, maxsize):
    try:
        return impl.new(maxsize)
    except NotInstalled as exc:
        pytest.skip(str(exc))


# --------------------------------------------------------------------------- data

@pytest.fixture(scope="session")
def get_data(sizes):
    return make_get_data(sizes.get_n)


@pytest.fixture(scope="session")
def evict_data(sizes):
    return make_evict_data(sizes.evict_capacity, sizes.evict_inserts)


@pytest.fixture(scope="session")
def zipf_data(sizes):
    return make_zipf_data(sizes.zipf_keys, sizes.zipf_length)


_models = {}


def _expected_misses(policy, stream, maxsize):
    key = (policy, len(stream), maxsize, id(stream))
    if key not in _models:
        _models[key] = model_misses(policy, stream, maxsize)
    return _models[key]


# CPU time where it is precise: the pilot must not mistake other load for a slow cache.
_clock = time.perf_counter if os.name == "nt" else time.process_time


def _rounds(sizes, setup, fn, ops, pilot_args):
    """Choose how many fresh-cache rounds fit in the time budget, from a short pilot run.

    Like pytest-benchmark's own calibration, a fast implementation gets more rounds than a
    slow one (within min_rounds..max_rounds), which keeps the default run to minutes.
    """
    if sizes.min_rounds == sizes.max_rounds:
        return sizes.min_rounds
    (cache, _), _ = setup()
    t0 = _clock()
    fn(cache, pilot_args)
    per_op = (_clock() - t0) / max(1, len(pilot_args))
    fit = int(sizes.round_budget / max(per_op * ops, 1e-9))
    return max(sizes.min_rounds, min(sizes.max_rounds, fit))


# --------------------------------------------------------------------------- get-hit / get-miss

def _get_hit(benchmark, impl, stored, lookups):
    cache = _new(impl, len(stored))
    impl.style.fill(cache, stored, stored)
    assert impl.style.size(cache) == len(stored), "cache did not keep every entry"
    record(benchmark, impl, ops=len(lookups))
    if impl.role == "loop":
        benchmark(_empty_loop, lookups)
        return
    benchmark(impl.style.hit, cache, lookups)
    lookup = impl.style.lookup
    wrong = [k for k in lookups if lookup(cache, k) != k]
    assert not wrong, f"{len(wrong)} lookups missed or returned a wrong value, e.g. {wrong[:3]}"


def _empty_loop(keys):
    for k in keys:
        pass


@pytest.mark.parametrize("impl", impls_for("hit"), ids=_ids(impls_for("hit")))
def test_get_hit_int(benchmark, impl, get_data):
    benchmark.group = "get-hit-int"
    _get_hit(benchmark, impl, *get_data["int"])


@pytest.mark.parametrize("impl", impls_for("hit"), ids=_ids(impls_for("hit")))
def test_get_hit_str(benchmark, impl, get_data):
    benchmark.group = "get-hit-str"
    _get_hit(benchmark, impl, *get_data["str"])


@pytest.mark.parametrize("impl", impls_for("hit"), ids=_ids(impls_for("hit")))
def test_get_hit_int_shuffled(benchmark, impl, get_data):
    benchmark.group = "get-hit-int-shuffled"
    _get_hit(benchmark, impl, *get_data["int-shuffled"])


@pytest.mark.parametrize("impl", impls_for("miss"), ids=_ids(impls_for("miss")))
def test_get_miss(benchmark, impl, get_data):
    benchmark.group = "get-miss"
    stored, absent = get_data["miss"]
    cache = _new(impl, len(stored))
    impl.style.fill(cache, stored, stored)
    record(benchmark, impl, ops=len(absent))
    if impl.role == "loop":
        benchmark(_empty_loop, absent)
        return
    benchmark(impl.style.miss, cache, absent)
    lookup = impl.style.lookup
    assert all(lookup(cache, k) is MISSING for k in absent), "an absent key was found"
    assert impl.style.size(cache) == len(stored), "a miss changed the cache's contents"


# --------------------------------------------------------------------------- set with eviction

@pytest.mark.parametrize("impl", impls_for("set"), ids=_ids(impls_for("set")))
def test_set_evict(benchmark, impl, evict_data, sizes):
    benchmark.group = "set-evict"
    prefill, inserts = evict_data
    cap = sizes.evict_capacity
    caches = []

    def setup():
        # Each round starts from a full cache so that every timed insert evicts.
        cache = _new(impl, cap)
        impl.style.fill(cache, prefill, prefill)
        caches.append(cache)
        if len(caches) > 1:
            del caches[0]
        return (cache, inserts), {}

    record(benchmark, impl, ops=len(inserts), capacity=cap)
    rounds = _rounds(sizes, setup, impl.style.set, len(inserts), inserts[: len(inserts) // 20])
    benchmark.pedantic(impl.style.set, setup=setup, rounds=rounds, iterations=1)
    cache = caches[-1]
    lookup, size = impl.style.lookup, impl.style.size
    if impl.role == "baseline":
        assert size(cache) == cap + len(inserts)
        return
    assert size(cache) == cap, f"holds {size(cache)} entries, maxsize is {cap}"
    recent, older = inserts[-cap:], prefill + inserts[-2 * cap:-cap]
    if impl.exact(impl.policy):
        # Every key was inserted once: LRU, FIFO and LFU-with-LRU-ties keep the newest.
        assert all(lookup(cache, k) == k for k in recent), "a most recent insert is missing"
        assert all(lookup(cache, k) is MISSING for k in older), "an old entry survived"
    else:
        for k in recent + older:
            v = lookup(cache, k)
            assert v is MISSING or v == k, f"{k} maps to {v}"


# --------------------------------------------------------------------------- Zipf memoization

@pytest.mark.parametrize("impl", impls_for("memo"), ids=_ids(impls_for("memo")))
def test_zipf_memo(benchmark, impl, zipf_data, sizes):
    benchmark.group = "zipf-memo"
    stream, distinct = zipf_data
    cap = sizes.evict_capacity
    caches = []

    def setup():
        cache = _new(impl, cap)
        caches.append(cache)
        if len(caches) > 1:
            del caches[0]
        return (cache, stream), {}

    record(benchmark, impl, ops=len(stream), capacity=cap)
    rounds = _rounds(sizes, setup, impl.style.memo, len(stream), stream[: len(stream) // 20])
    misses = benchmark.pedantic(impl.style.memo, setup=setup, rounds=rounds, iterations=1)
    benchmark.extra_info["hit_ratio"] = 1 - misses / len(stream)
    cache = caches[-1]
    held = impl.style.size(cache)
    if impl.role == "baseline":
        assert misses == distinct and held == distinct
        return
    assert distinct <= misses <= len(stream)
    assert held == min(cap, distinct), f"holds {held} entries, maxsize is {cap}"
    if impl.exact(impl.policy):
        assert misses == _expected_misses(impl.policy, stream, cap), \
            f"{impl.policy} miss count differs from the reference model"
    if impl.name != "functools.lru_cache":  # its only lookup is a call, which would store
        lookup = impl.style.lookup
        wrong = [k for k in stream[:5000] if lookup(cache, k) not in (MISSING, k)]
        assert not wrong, f"lookups returned another key's value, e.g. {wrong[:3]}"


# --------------------------------------------------------------------------- memory per entry

@pytest.mark.memsmoke
@pytest.mark.parametrize("impl", impls_for("memory"), ids=_ids(impls_for("memory")))
def test_memory_machinery(impl):
    """The memory probe stores every entry and reads back each value (figures: run.py)."""
    result = memory.measure(impl.name, 20_000)
    assert "error" not in result, result["error"]
    if "missing" in result:
        if impl.role == "kvcache":
            pytest.fail(result["missing"])
        pytest.skip(result["missing"])
    assert result["len"] == 20_000
    assert result["verified"], "the memory probe's cache lost or changed values"
    assert isinstance(result["bytes"], int), "no RSS reading"
