"""Shared harness for the benchmark files: implementations, workload data, timed loops.

Every ``bench_*.py`` file imports this module (``bench/conftest.py`` puts ``bench/`` on
``sys.path``).  The contract with ``bench/run.py`` is ``record()``: each benchmark stores in
``benchmark.extra_info`` the number of operations one round performs (``ops``), the
implementation's display name (``impl``), its policy and its role; run.py divides the round
time by ``ops`` and compares rows of the same pytest-benchmark group.

Roles: ``kvcache`` (the library under test), ``peer`` (another cache library),
``baseline`` (the plain ``dict`` every ratio is taken against), ``reference`` (a stdlib
construct worth seeing, e.g. an ``OrderedDict`` LRU) and ``loop`` (the empty loop whose
cost run.py subtracts for the "loop cost subtracted" ratio).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import importlib
import os
import sys
from dataclasses import dataclass, field
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any, Callable

import numpy as np

MISSING = object()

#: pip distribution name of each importable module, for "not installed" messages.
DISTRIBUTIONS = {
    "kvcache": "kvcache",
    "cachetools": "cachetools",
    "cachetools.func": "cachetools",
    "lru": "lru-dict",
    "cachebox": "cachebox",
    "moka_py": "moka-py",
    "theine": "theine",
}


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prefer_inplace_build() -> bool:
    """Put the source tree first on sys.path if it holds a built kvcache; say whether it did.

    A build made with ``setup.py build_ext --inplace`` is what a developer means to measure;
    without one the installed package is used (the bare source tree cannot import).
    """
    # Only a build for this interpreter counts (a tree may hold builds for other versions).
    built = (os.path.join(REPO, "kvcache", "_core" + s) for s in EXTENSION_SUFFIXES)
    if any(os.path.exists(p) for p in built):
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        return True
    return False


class NotInstalled(Exception):
    """An implementation's module cannot be imported."""


# --------------------------------------------------------------------------- API styles
# Each style gives the fastest idiomatic spelling of an operation for a family of APIs.
# The loops are deliberately identical across styles except for that spelling, so the
# difference in time is the difference in the cache, not in the benchmark code.

def _hit_subscript(c, keys):
    for k in keys:
        c[k]


def _hit_get(c, keys):
    get = c.get
    for k in keys:
        get(k)


def _miss_get(c, keys):
    get = c.get
    for k in keys:
        get(k)


def _set_subscript(c, keys):
    for k in keys:
        c[k] = k


def _set_method(c, keys):
    put = c.set
    for k in keys:
        put(k, k)


def _memo_mapping(c, stream):
    # Memoization as users write it: look up, compute and store on a miss.  Values are
    # never None, so None is the miss signal; the value stored is the key itself, which
    # lets the checks afterwards detect a hit that returned another key's value.
    get = c.get
    misses = 0
    for k in stream:
        if get(k) is None:
            c[k] = k
            misses += 1
    return misses


def _memo_moka(c, stream):
    get = c.get
    put = c.set
    misses = 0
    for k in stream:
        if get(k) is None:
            put(k, k)
            misses += 1
    return misses


def _memo_theine(c, stream):
    get = c.get
    put = c.set
    misses = 0
    for k in stream:
        if not get(k)[1]:
            put(k, k)
            misses += 1
    return misses


def _hit_theine(c, keys):
    get = c.get
    for k in keys:
        get(k)


def _lookup_mapping(c, k):
    return c.get(k, MISSING)


def _lookup_moka(c, k):
    return c.get(k, MISSING)


def _lookup_theine(c, k):
    v, ok = c.get(k)
    return v if ok else MISSING


def _size_len(c):
    return len(c)


def _size_moka(c):
    c.run_pending_tasks()
    return c.count()


def _size_theine(c):
    # Theine applies evictions in batches from a write buffer; drain it before counting
    # (a private method, used by checks only, never inside a timed loop).
    drain = getattr(c, "_force_drain_write", None)
    if drain is not None:
        drain()
    return len(c)


def _fill_subscript(c, keys, values):
    for k, v in zip(keys, values):
        c[k] = v


def _fill_method(c, keys, values):
    put = c.set
    for k, v in zip(keys, values):
        put(k, v)


def _batch_get_loop(c, batches):
    # What a caller without a batch API writes: one get per key, results collected.
    get = c.get
    for batch in batches:
        [get(k) for k in batch]


def _batch_get_many(c, batches):
    get_many = c.get_many
    for batch in batches:
        get_many(batch)


def _unsupported(*args):
    raise NotImplementedError


@dataclass(frozen=True)
class Style:
    hit: Callable  # (cache, keys): look every key up, all present
    miss: Callable  # (cache, keys): look every key up, none present
    set: Callable  # (cache, keys): store every key as its own value
    memo: Callable  # (cache, stream) -> misses: get, and set on a miss
    lookup: Callable  # (cache, key) -> value or MISSING (checks only, never timed)
    size: Callable  # (cache) -> entries held once pending work is applied
    fill: Callable  # (cache, keys, values): store key -> value (memory per entry)
    batch: Callable = _unsupported  # (cache, batches): look up every batch, all present


MAPPING = Style(_hit_subscript, _miss_get, _set_subscript, _memo_mapping, _lookup_mapping,
                _size_len, _fill_subscript, _batch_get_loop)
#: kvcache's batch lookup; the other operations as MAPPING.
BATCH = dataclasses.replace(MAPPING, batch=_batch_get_many)
MAPPING_GET = Style(_hit_get, _miss_get, _set_subscript, _memo_mapping, _lookup_mapping,
                    _size_len, _fill_subscript)
MOKA = Style(_hit_get, _miss_get, _set_method, _memo_moka, _lookup_moka, _size_moka,
             _fill_method)
THEINE = Style(_hit_theine, _hit_theine, _set_method, _memo_theine, _lookup_theine,
               _size_theine, _fill_method)


# --------------------------------------------------------------------------- implementations

class _OrderedDictLRU:
    """The classic pure-Python LRU over ``OrderedDict`` (reference row, not a library)."""

    __slots__ = ("data", "maxsize")

    def __init__(self, maxsize):
        self.data = collections.OrderedDict()
        self.maxsize = maxsize

    def __len__(self):
        return len(self.data)

    def get(self, key, default=None):
        return self.data.get(key, default)

    def __setitem__(self, key, value):
        self.data[key] = value
        if len(self.data) > self.maxsize:
            self.data.popitem(last=False)


def _hit_odlru(c, keys):
    data = c.data
    move = data.move_to_end
    for k in keys:
        data[k]
        move(k)


def _set_odlru(c, keys):
    data = c.data
    popitem = data.popitem
    maxsize = c.maxsize
    for k in keys:
        data[k] = k
        if len(data) > maxsize:
            popitem(False)


def _memo_odlru(c, stream):
    data = c.data
    get = data.get
    move = data.move_to_end
    popitem = data.popitem
    maxsize = c.maxsize
    misses = 0
    for k in stream:
        if get(k) is None:
            data[k] = k
            if len(data) > maxsize:
                popitem(False)
            misses += 1
        else:
            move(k)
    return misses


def _fill_odlru(c, keys, values):
    _fill_subscript(c.data, keys, values)


ODLRU = Style(_hit_odlru, _miss_get, _set_odlru, _memo_odlru, _lookup_mapping, _size_len,
              _fill_odlru)


class _LruCacheFn:
    """A memoizing decorator around the identity (``functools.lru_cache`` unless told)."""

    def __init__(self, maxsize, decorator=functools.lru_cache):
        self.fn = decorator(maxsize=maxsize)(_identity)


def _identity(k):
    return k


def _memo_lru_cache(c, stream):
    fn = c.fn
    before = fn.cache_info().misses
    for k in stream:
        fn(k)
    return fn.cache_info().misses - before


def _size_lru_cache(c):
    return c.fn.cache_info().currsize


def _fill_lru_cache(c, keys, values):
    # lru_cache stores what the function returns, here the key itself: an existing object,
    # like the pre-created values of the other implementations.
    fn = c.fn
    for k in keys:
        fn(k)


def _hit_lru_cache(c, keys):
    fn = c.fn
    for k in keys:
        fn(k)


LRU_CACHE_FN = Style(_hit_lru_cache, _unsupported, _unsupported, _memo_lru_cache, _unsupported,
                     _size_lru_cache, _fill_lru_cache)


def _fill_vector(c, keys, values):
    # VectorCache stores rows, not objects: the values become placeholder rows (a row's
    # content does not change what a lookup costs).
    rows = np.empty((len(keys), c.dim), dtype=c.dtype)
    rows[:] = (np.arange(len(keys)) % 1000)[:, None]
    c.set_many(np.asarray(keys, dtype=np.int64), rows)


VECTOR = Style(_unsupported, _unsupported, _unsupported, _unsupported, _unsupported, _size_len,
               _fill_vector, _batch_get_many)
#: Row width of the VectorCache in the vector-get-many workload (float32, 256 bytes a row).
VECTOR_DIM = 64


def _block_manager(kind, num_blocks):
    # bench_llm holds the block-manager workload (requests, fill, serve) and its pure-Python
    # reference; imported late so the mapping benchmarks do not need it.
    import bench_llm
    mgr = bench_llm._make_manager(kind, num_blocks)
    bench_llm.fill(mgr, num_blocks)
    return mgr


def _int64_array(keys):
    return np.asarray(keys, dtype=np.int64)


@dataclass(frozen=True)
class Impl:
    """One cache implementation as the benchmarks see it."""

    name: str  # display name, also the pytest parameter id
    module: str  # module to import ("builtins" for dict)
    policy: str  # lru, lfu, fifo, rr, tinylfu, none
    role: str  # kvcache, peer, baseline, reference, loop
    make: Callable[[Any, int], Any]  # (module, maxsize) -> empty cache
    style: Style = MAPPING
    #: workloads this implementation takes part in (see WORKLOADS).
    workloads: frozenset = field(default=frozenset({"hit", "miss", "set", "memo", "memory"}))
    #: how a batch of keys (a list of ints) is handed to ``style.batch``, outside the timing.
    batch_form: Callable = list

    @property
    def distribution(self) -> str:
        return DISTRIBUTIONS.get(self.module, self.module)

    def load(self):
        """Import the implementation's module; raise NotInstalled when it is absent."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:
            if self.role == "kvcache":
                raise  # the library under test must be importable: never a silent skip
            raise NotInstalled(f"{self.distribution} not installed ({exc})") from exc

    def new(self, maxsize):
        """Return a new empty cache holding at most ``maxsize`` entries."""
        return self.make(self.load(), maxsize)

    def exact(self, policy) -> bool:
        """Whether this implementation's contents must match the reference ``policy`` model."""
        return self.policy == policy and policy in EXACT_POLICIES and self.name not in INEXACT


#: Policies whose hit count on a given stream is fully determined (no randomness, no
#: admission filter); the smoke tests compare these against a pure-Python model.
EXACT_POLICIES = {"lru", "fifo", "lfu"}
#: Implementations whose LFU is not the "least frequent, then least recently used" rule.
INEXACT = {"cachebox.LFUCache"}

#: The workloads of bench_core.py (an Impl's default).  ab.py adds its own tags: "get-many",
#: "vector-get-many", "lru-cache-hit", "ttl-hit", "tinylfu-hit", "block-manager".
CORE = frozenset({"hit", "miss", "set", "memo", "memory"})

IMPLS: list[Impl] = [
    Impl("loop (empty)", "builtins", "none", "loop", lambda m, n: {}, workloads=frozenset({"hit", "miss"})),
    Impl("dict", "builtins", "none", "baseline", lambda m, n: {}, workloads=CORE | {"get-many"}),
    Impl("OrderedDict LRU", "collections", "lru", "reference", lambda m, n: _OrderedDictLRU(n),
         style=ODLRU),
    Impl("functools.lru_cache", "functools", "lru", "reference", lambda m, n: _LruCacheFn(n),
         style=LRU_CACHE_FN, workloads=frozenset({"memo", "memory", "lru-cache-hit"})),
    Impl("kvcache.LRUCache", "kvcache", "lru", "kvcache", lambda m, n: m.LRUCache(n)),
    Impl("kvcache.LFUCache", "kvcache", "lfu", "kvcache", lambda m, n: m.LFUCache(n)),
    Impl("kvcache.FIFOCache", "kvcache", "fifo", "kvcache", lambda m, n: m.FIFOCache(n)),
    Impl("kvcache.RRCache", "kvcache", "rr", "kvcache", lambda m, n: m.RRCache(n)),
    Impl("kvcache.TinyLFUCache", "kvcache", "tinylfu", "kvcache", lambda m, n: m.TinyLFUCache(n),
         workloads=CORE | {"tinylfu-hit"}),
    Impl("kvcache.TTLCache", "kvcache", "ttl", "kvcache", lambda m, n: m.TTLCache(n, ttl=3600),
         workloads=frozenset({"ttl-hit"})),
    Impl("kvcache.lru_cache", "kvcache", "lru", "kvcache", lambda m, n: _LruCacheFn(n, m.lru_cache),
         style=LRU_CACHE_FN, workloads=frozenset({"lru-cache-hit"})),
    Impl("kvcache.LRUCache.get_many", "kvcache", "lru", "kvcache", lambda m, n: m.LRUCache(n),
         style=BATCH, workloads=frozenset({"get-many"}), batch_form=_int64_array),
    Impl("kvcache.LRUCache.get_many(list)", "kvcache", "lru", "kvcache",
         lambda m, n: m.LRUCache(n), style=BATCH, workloads=frozenset({"get-many"})),
    Impl("kvcache.VectorCache", "kvcache", "lru", "kvcache",
         lambda m, n: m.VectorCache(n, VECTOR_DIM, np.float32, "lru", seed=1), style=VECTOR,
         workloads=frozenset({"vector-get-many"}), batch_form=_int64_array),
    Impl("kvcache.llm.PrefixCache", "kvcache.llm", "lru", "kvcache",
         lambda m, n: _block_manager("kvcache", n), workloads=frozenset({"block-manager"})),
    Impl("PyPrefixCache", "bench_llm", "lru", "reference", lambda m, n: _block_manager("python", n),
         workloads=frozenset({"block-manager"})),
    Impl("cachetools.LRUCache", "cachetools", "lru", "peer", lambda m, n: m.LRUCache(n)),
    Impl("cachetools.LFUCache", "cachetools", "lfu", "peer", lambda m, n: m.LFUCache(n)),
    Impl("cachetools.FIFOCache", "cachetools", "fifo", "peer", lambda m, n: m.FIFOCache(n)),
    Impl("cachetools.RRCache", "cachetools", "rr", "peer", lambda m, n: m.RRCache(n)),
    Impl("cachetools.TTLCache", "cachetools", "ttl", "peer", lambda m, n: m.TTLCache(n, ttl=3600),
         workloads=frozenset({"ttl-hit"})),
    Impl("cachetools.func.lru_cache", "cachetools.func", "lru", "peer",
         lambda m, n: _LruCacheFn(n, m.lru_cache), style=LRU_CACHE_FN,
         workloads=frozenset({"lru-cache-hit"})),
    Impl("lru-dict.LRU", "lru", "lru", "peer", lambda m, n: m.LRU(n)),
    # cachebox's .get() measures faster than its [] (the latter goes through more layers).
    Impl("cachebox.LRUCache", "cachebox", "lru", "peer", lambda m, n: m.LRUCache(n),
         style=MAPPING_GET),
    Impl("cachebox.LFUCache", "cachebox", "lfu", "peer", lambda m, n: m.LFUCache(n),
         style=MAPPING_GET),
    Impl("cachebox.FIFOCache", "cachebox", "fifo", "peer", lambda m, n: m.FIFOCache(n),
         style=MAPPING_GET),
    Impl("cachebox.RRCache", "cachebox", "rr", "peer", lambda m, n: m.RRCache(n),
         style=MAPPING_GET),
    Impl("cachebox.TTLCache", "cachebox", "ttl", "peer", lambda m, n: m.TTLCache(n, 3600),
         style=MAPPING_GET, workloads=frozenset({"ttl-hit"})),
    Impl("moka-py.Moka", "moka_py", "tinylfu", "peer", lambda m, n: m.Moka(n), style=MOKA,
         workloads=CORE | {"tinylfu-hit"}),
    Impl("moka-py.Moka(lru)", "moka_py", "lru-approx", "peer",
         lambda m, n: m.Moka(n, policy="lru"), style=MOKA),
    # nolock=True is theine's documented fast path for single-threaded use.
    Impl("theine.Cache", "theine", "tinylfu", "peer", lambda m, n: m.Cache(n, nolock=True),
         style=THEINE, workloads=CORE | {"tinylfu-hit"}),
]

BY_NAME = {impl.name: impl for impl in IMPLS}


def impls_for(workload: str) -> list[Impl]:
    """Return the implementations that take part in ``workload``."""
    return [impl for impl in IMPLS if workload in impl.workloads]


def missing_peers() -> dict[str, str]:
    """Return {distribution: reason} for every peer library that cannot be imported."""
    out = {}
    for impl in IMPLS:
        if impl.role == "kvcache" or impl.distribution in out:
            continue
        try:
            impl.load()
        except NotInstalled as exc:
            out[impl.distribution] = str(exc)
    return out


# --------------------------------------------------------------------------- data

def distinct_ints(rng: np.random.Generator, n: int) -> np.ndarray:
    """Return ``n`` distinct random non-negative int64 values (as uniform as a dict sees them)."""
    while True:
        a = rng.integers(0, 2**62, size=n, dtype=np.int64)
        if len(np.unique(a)) == n:
            return a


def str_keys(ints: np.ndarray) -> list[str]:
    """Return one string key per int, shaped like a typical cache key."""
    return [f"user:{x:x}" for x in ints.tolist()]


def zipf_stream(rng: np.random.Generator, n_keys: int, length: int, s: float = 1.0) -> np.ndarray:
    """Return ``length`` accesses over ``n_keys`` keys drawn from a bounded Zipf(s).

    numpy's own ``zipf`` needs s > 1 and an unbounded support; this samples the finite
    distribution p(rank) ~ 1/rank**s by inverse CDF, then maps ranks to random int keys so
    that popular keys are not small consecutive ints.
    """
    weights = 1.0 / np.arange(1, n_keys + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random(length), side="right")
    np.minimum(ranks, n_keys - 1, out=ranks)
    return distinct_ints(rng, n_keys)[ranks]


def make_get_data(n: int) -> dict:
    """Keys to store with the keys to look up, per get workload ({name: (stored, lookups)}).

    Lookups use new objects equal to the stored keys (``.tolist()`` builds fresh ints each
    call), so every hit is confirmed by ``==`` as when a program computes its keys.  The
    main get-hit workloads look keys up in the order they were stored, which measures the
    cost of the operation itself; ``int-shuffled`` looks them up in random order, where the
    machine's memory latency dominates every implementation.
    """
    rng = np.random.default_rng(20261127)
    ints = distinct_ints(rng, 2 * n)
    stored, absent = ints[:n], ints[n:]
    shuffled = stored[rng.permutation(n)]
    return {
        "int": (stored.tolist(), stored.tolist()),
        "str": (str_keys(stored), str_keys(stored)),
        "int-shuffled": (stored.tolist(), shuffled.tolist()),
        "miss": (stored.tolist(), absent.tolist()),
    }


def make_evict_data(capacity: int, inserts: int) -> tuple[list, list]:
    """Return (keys that fill the cache first, distinct keys inserted afterwards)."""
    ints = distinct_ints(np.random.default_rng(1), capacity + inserts)
    return ints[:capacity].tolist(), ints[capacity:].tolist()


def make_zipf_data(n_keys: int, length: int) -> tuple[list, int]:
    """Return (the Zipf(1.0) access stream as Python ints, its number of distinct keys)."""
    stream = zipf_stream(np.random.default_rng(2), n_keys, length, s=1.0)
    return stream.tolist(), len(np.unique(stream))


# --------------------------------------------------------------------------- reference models

def model_misses(policy: str, stream, maxsize: int) -> int:
    """Return the miss count of the memoization loop under an exact ``policy`` model.

    LFU ties go to the least recently used among the least frequent; an insertion counts as
    the first use, and the victim is chosen before the new key is inserted.
    """
    misses = 0
    if policy in ("lru", "fifo"):
        data = collections.OrderedDict()
        touch = policy == "lru"
        for k in stream:
            if k in data:
                if touch:
                    data.move_to_end(k)
            else:
                misses += 1
                if len(data) >= maxsize:
                    data.popitem(last=False)
                data[k] = None
        return misses
    if policy == "lfu":
        count = {}
        buckets = collections.defaultdict(collections.OrderedDict)
        low = 0
        for k in stream:
            c = count.get(k)
            if c is not None:
                del buckets[c][k]
                if not buckets[c]:
                    del buckets[c]
                    if low == c:
                        low = c + 1
                count[k] = c + 1
                buckets[c + 1][k] = None
                continue
            misses += 1
            if len(count) >= maxsize:
                victim, _ = buckets[low].popitem(last=False)
                if not buckets[low]:
                    del buckets[low]
                del count[victim]
            count[k] = 1
            buckets[1][k] = None
            low = 1
        return misses
    raise ValueError(f"no exact model for policy {policy!r}")


# --------------------------------------------------------------------------- recording

def record(benchmark, impl: Impl, ops: int, **extra) -> None:
    """Attach to a benchmark what run.py needs to turn its time into ns/op and ratios."""
    benchmark.extra_info.update(impl=impl.name, policy=impl.policy, role=impl.role, ops=ops,
                                **extra)
