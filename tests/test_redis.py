"""TieredCache against a real redis-server: semantics, invalidation, TTL, locks, faults."""

import os
import re
import subprocess
import sys
import tempfile
import threading
import warnings
import time

import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

# Children run outside the source tree: there `import kvcache` must find the installed build.
CHILD_CWD = tempfile.gettempdir()

import numpy as np  # noqa: E402
import redis  # noqa: E402

import kvcache  # noqa: E402
from kvcache.redis import CircuitOpenError, TieredCache  # noqa: E402
from tests.redis_fixtures import child_env, own_redis_server, redis_server  # noqa: E402,F401
from kvcache.serialize import Serializer, encode_key  # noqa: E402


def wait_for(pred, timeout=5.0, interval=0.002):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


_ns_counter = iter(range(10**6))


@pytest.fixture
def ns(request):
    return f"t{next(_ns_counter)}-{request.node.name[:40]}"


@pytest.fixture
def make_tier(redis_server, ns):
    tiers = []

    def make(local=None, namespace=None, server=None, **kwargs):
        server = server or redis_server
        tier = TieredCache(
            local if local is not None else kvcache.LRUCache(maxsize=100),
            server.client(),
            namespace or ns,
            **kwargs,
        )
        tiers.append(tier)
        assert tier.wait_live(5.0), "invalidation stream did not come up"
        return tier

    yield make
    for t in tiers:
        t.close()


def write_and_settle(writer, readers, key, value):
    """Write through `writer`, then wait until every reader got the notice of it.

    A reader filling its local copy before the notice of the very write it read
    drops that copy when the notice arrives (it cannot tell the notice is not
    about a newer write); tests that check a local fill wait the notice out.
    """
    before = [r.stats().invalidations for r in readers]
    writer[key] = value
    for r, n in zip(readers, before):
        assert wait_for(lambda: r.stats().invalidations > n), "notice of the write never arrived"


def rname(tier, key):
    return tier.namespace + b":v:" + encode_key(key)


# --- mapping semantics -----------------------------------------------------------


def test_set_get_delete_roundtrip(make_tier):
    t = make_tier()
    with pytest.raises(KeyError):
        t["missing"]
    assert t.get("missing", 7) == 7
    t["a"] = {"x": [1, 2, (3, 4)]}
    t[("tuple", 1)] = b"bytes"
    assert t["a"] == {"x": [1, 2, (3, 4)]}
    assert t[("tuple", 1)] == b"bytes"
    assert "a" in t and "zzz" not in t
    assert sorted(map(repr, t)) == sorted([repr("a"), repr(("tuple", 1))])
    assert len(t) == 2
    del t["a"]
    assert "a" not in t
    with pytest.raises(KeyError):
        del t["a"]
    assert t.pop(("tuple", 1)) == b"bytes"
    assert t.setdefault("s", 5) == 5 and t["s"] == 5
    t.update({"u": 1, "v": 2})
    assert t["u"] == 1
    t.clear()
    assert len(t) == 0 and list(t) == [] and len(t.local) == 0


def test_equal_keys_are_one_key(make_tier):
    t = make_tier()
    t[1] = "one"
    assert t[1.0] == "one" and t[True] == "one"
    other = make_tier()  # empty local: must find it in Redis under the same name
    assert other[1.0] == "one"


def test_value_written_by_one_tier_is_read_by_another(make_tier):
    a, b = make_tier(), make_tier()
    write_and_settle(a, [b], "k", np.arange(12, dtype=np.float32).reshape(3, 4))
    got = b["k"]
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    np.testing.assert_array_equal(got, np.arange(12, dtype=np.float32).reshape(3, 4))
    assert "k" in b.local  # filled locally
    s = b.stats()
    assert s.remote_hits == 1
    b["k"]
    assert b.stats().local_hits >= 1


def test_cross_tier_invalidation_drops_local_copy(make_tier):
    a, b = make_tier(), make_tier()
    write_and_settle(a, [b], "k", 1)
    assert b["k"] == 1 and "k" in b.local
    a["k"] = 2
    assert wait_for(lambda: "k" not in b.local), "invalidation never arrived"
    assert b["k"] == 2
    a.delete("k")
    assert wait_for(lambda: "k" not in b.local)
    assert "k" not in b
    assert b.stats().invalidations >= 2


def test_external_writer_and_flush_invalidate(make_tier, redis_server):
    t = make_tier()
    t["k"] = "old"
    t["other"] = "x"
    # Once our own writes' notices went by, a read fills the local tier for good.
    assert wait_for(lambda: t["k"] == "old" and "k" in t.local)
    raw = redis_server.client()
    raw.set(rname(t, "k"), Serializer().dumps("new"))
    assert wait_for(lambda: "k" not in t.local)
    assert t["k"] == "new"
    assert wait_for(lambda: t["other"] == "x" and "other" in t.local)
    raw.flushdb()
    assert wait_for(lambda: len(t.local) == 0)
    assert "k" not in t


def test_fill_racing_an_invalidation_is_not_stored(make_tier):
    # A reader whose GET was answered before a concurrent write must not keep
    # the old value: simulate the window by marking the name dirty mid-flight.
    t = make_tier()
    t["k"] = "v1"
    t.local.clear()
    name = rname(t, "k")
    epoch = t._begin(name)
    t._invalidate([name])
    t._end(name, epoch, "k", "v1")
    assert "k" not in t.local


def test_on_evict_may_call_back_into_the_tier(make_tier):
    seen = []
    holder = {}

    def on_evict(key, value):
        seen.append(key)
        holder["t"].delete(("evicted", key))  # re-enters the tier from inside a local store

    t = make_tier(local=kvcache.LRUCache(maxsize=2, on_evict=on_evict))
    holder["t"] = t
    # Our own write's notice may drop a local copy before the next store (asynchronously), so
    # keep going until local stores have evicted a few times.
    n = 0
    while len(seen) < 3 and n < 500:
        t[n] = n
        t[n]  # fills (or re-fills after our own write's notice) evict older entries
        n += 1
    assert len(seen) >= 3  # evictions happened and did not deadlock
    assert all(t[i] == i for i in range(n))


# --- TTL ----------------------------------------------------------------------------


def test_ttl_reaches_redis_and_bounds_local_copy(make_tier, redis_server):
    a, b = make_tier(ttl=1.5), make_tier()
    raw = redis_server.client()
    write_and_settle(a, [b], "k", "v")
    t1 = time.monotonic()  # after the write: Redis' expiry is at most t1 + 1.5
    pttl = raw.pttl(rname(a, "k"))
    assert 0 < pttl <= 1500
    assert b["k"] == "v"
    entry = b.local["k"]  # the remaining TTL was carried into b's local tier
    assert entry.deadline <= t1 + 1.5 + 0.002  # PTTL is rounded to the millisecond
    time.sleep(max(0.0, t1 + 1.55 - time.monotonic()))
    assert "k" not in b and "k" not in a


def test_per_key_ttl_overrides_default(make_tier, redis_server):
    t = make_tier(ttl=100)
    raw = redis_server.client()
    t.set("short", 1, ttl=0.5)
    t.set("forever", 2, ttl=None)
    assert 0 < raw.pttl(rname(t, "short")) <= 500
    assert raw.pttl(rname(t, "forever")) == -1
    time.sleep(0.55)
    assert "short" not in t and t["forever"] == 2
    with pytest.raises(ValueError):
        t.set("x", 1, ttl=0)


def test_expired_local_entry_is_not_served(make_tier):
    # The local deadline alone expires a copy, without waiting for Redis' notice.
    from kvcache._tiered import Expiring as _Expiring

    t = make_tier()
    t.set("k", "v", ttl=5)
    t.local["k"] = _Expiring("stale", time.monotonic() - 1)
    assert t["k"] == "v"


# --- the compiled local-hit path (kvcache/_tiered.pyx) ---------------------------------------


class GetSpyLRU(kvcache.LRUCache):
    """An engine cache whose `get` is overridden: the tier must call it, not the engine."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gets = 0

    def get(self, key, default=None):
        self.gets += 1
        return super().get(key, default)


def _local_tiers():
    tiers = {
        "LRUCache": lambda: kvcache.LRUCache(maxsize=100),
        "LFUCache": lambda: kvcache.LFUCache(maxsize=100),
        "TTLCache": lambda: kvcache.TTLCache(maxsize=100, ttl=60),
        "TinyLFUCache": lambda: kvcache.TinyLFUCache(maxsize=100),
        "get-override": lambda: GetSpyLRU(maxsize=100),
        "dict": dict,
    }
    try:
        import cachetools
    except ImportError:
        pass
    else:
        tiers["cachetools.LRUCache"] = lambda: cachetools.LRUCache(maxsize=100)
    return tiers


LOCAL_TIERS = _local_tiers()
ACCESS = {
    "getitem": lambda t, k: t[k],
    "get": lambda t, k: t.get(k, "default"),
    "in": lambda t, k: k in t,
}


def fill_locally(t, key, value, **set_kwargs):
    """Write `key` through `t` and read it back once the notice went by, so it sits in t.local."""
    before = t.stats().invalidations
    t.set(key, value, **set_kwargs)
    assert wait_for(lambda: t.stats().invalidations > before), "notice of the write never arrived"
    assert t[key] == value
    assert key in t.local


@pytest.mark.parametrize("local_name", LOCAL_TIERS)
def test_local_hits_counted_exactly_by_every_access(make_tier, local_name):
    local = LOCAL_TIERS[local_name]()
    t = make_tier(local=local)
    fill_locally(t, "k", "v")
    fill_locally(t, "x", "w", ttl=60)  # carried deadline: wrapped locally
    s0 = t.stats()
    local_hits0 = local.stats().hits if hasattr(local, "stats") else None
    expected = {"getitem": "v", "get": "v", "in": True}
    for name, access in ACCESS.items():
        for _ in range(7):
            assert access(t, "k") == expected[name]
            assert access(t, "x") == {"getitem": "w", "get": "w", "in": True}[name]
    s1 = t.stats()
    assert s1.local_hits - s0.local_hits == 3 * 7 * 2
    assert (s1.remote_hits, s1.misses) == (s0.remote_hits, s0.misses)  # Redis never asked
    if local_hits0 is not None:  # the local tier saw one counted lookup per access
        assert local.stats().hits - local_hits0 == 3 * 7 * 2
    if isinstance(local, GetSpyLRU):
        assert local.gets >= 3 * 7 * 2


def test_local_hits_exact_across_threads(make_tier):
    t = make_tier(local=kvcache.LRUCache(maxsize=100))
    keys = [f"k{i}" for i in range(10)]
    for k in keys:
        fill_locally(t, k, k.upper())
    before = t.stats().local_hits
    n_threads, n_rounds = 4, 500
    bad = []

    def reader():
        for _ in range(n_rounds):
            for k in keys:
                if t[k] != k.upper() or t.get(k) != k.upper() or k not in t:
                    bad.append(k)

    threads = [threading.Thread(target=reader) for _ in range(n_threads)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert bad == []
    assert t.stats().local_hits - before == n_threads * n_rounds * len(keys) * 3
    assert t.stats().remote_hits == len(keys)


@pytest.mark.parametrize("access", ACCESS)
@pytest.mark.parametrize("local_name", ["LRUCache", "TTLCache", "dict", "get-override"])
def test_expiring_local_copy_served_until_its_deadline(make_tier, redis_server, local_name, access):
    from kvcache._tiered import Expiring as _Expiring

    t = make_tier(local=LOCAL_TIERS[local_name]())
    read = ACCESS[access]
    answer = {"getitem": lambda v: v, "get": lambda v: v, "in": lambda v: True}[access]
    fill_locally(t, "k", "v", ttl=60)
    entry = t.local["k"]
    assert type(entry) is _Expiring and entry.value == "v" and entry.deadline > time.monotonic() + 50
    t.local["k"] = _Expiring("local", time.monotonic() + 30)
    hits, remote = t.stats().local_hits, t.stats().remote_hits
    assert read(t, "k") == answer("local")
    assert t.stats().local_hits == hits + 1
    # Just past its deadline (the kernel's coarse clock may still be before it): Redis answers
    # (its copy is alive) and the local copy is refreshed from it.
    t.local["k"] = _Expiring("local", time.monotonic() - 0.0005)
    assert read(t, "k") == answer("v")
    assert t.stats().remote_hits == remote + 1 and t.stats().local_hits == hits + 1
    assert t.local["k"].value == "v"
    # Expired locally and gone from Redis: a miss.
    redis_server.client().delete(rname(t, "k"))
    assert wait_for(lambda: "k" not in t.local)  # the delete's notice
    t.local["k"] = _Expiring("stale", time.monotonic() - 0.0005)
    if access == "getitem":
        with pytest.raises(KeyError):
            t["k"]
    else:
        assert read(t, "k") == {"get": "default", "in": False}[access]
    assert t.stats().local_hits == hits + 1


def test_expired_local_copy_dropped_when_redis_is_down(make_tier, own_redis_server):
    from kvcache._tiered import Expiring as _Expiring

    t = make_tier(server=own_redis_server, failure_threshold=1, backoff=10)
    fill_locally(t, "live", "L", ttl=60)
    t.local["dead"] = _Expiring("D", time.monotonic() - 1)
    own_redis_server.kill()
    assert wait_for(lambda: not t.live)
    hits = t.stats().local_hits
    assert t["live"] == "L"  # fail-open: the local copy answers, counted once
    assert t.get("dead") is None and "dead" not in t.local  # expired: dropped, not served
    assert "live" in t and t.get("live") == "L"
    assert t.stats().local_hits == hits + 3


def test_suspect_local_tier_is_bypassed(make_tier, redis_server):
    t = make_tier()
    fill_locally(t, "k", "redis")
    t.local["k"] = "local only"  # what a lost notice would leave behind
    assert t["k"] == "local only"  # trusted while the stream is up
    t._live = False  # the stream is down (as a listener reports it)
    remote, hits = t.stats().remote_hits, t.stats().local_hits
    assert t["k"] == "redis" and t.get("k") == "redis" and "k" in t
    s = t.stats()
    assert s.remote_hits == remote + 3 and s.local_hits == hits


class RaisingEq:
    def __init__(self, h, exc):
        self.h, self.exc = h, exc

    def __hash__(self):
        return self.h

    def __eq__(self, other):
        raise self.exc


class RaisingHash:
    def __hash__(self):
        raise ValueError("no hash")


@pytest.mark.parametrize("access", ACCESS)
@pytest.mark.parametrize("local_name", ["LRUCache", "dict"])
def test_key_errors_from_hash_and_eq_propagate(make_tier, local_name, access):
    t = make_tier(local=LOCAL_TIERS[local_name]())
    fill_locally(t, "k", "v")
    read = ACCESS[access]
    with pytest.raises(ValueError, match="no hash"):
        read(t, RaisingHash())
    with pytest.raises(ZeroDivisionError):
        read(t, RaisingEq(hash("k"), ZeroDivisionError("eq")))
    # A KeyError raised by __eq__ is the key's error, not "missing": get/in do not swallow it.
    with pytest.raises(KeyError, match="from eq"):
        read(t, RaisingEq(hash("k"), KeyError("from eq")))
    assert t["k"] == "v" and "k" in t.local  # nothing lost


def test_subclass_overriding_getitem_is_used_by_get_and_in(redis_server, ns):
    class Upper(TieredCache):
        def __getitem__(self, key):
            return super().__getitem__(key).upper()

    t = Upper(kvcache.LRUCache(maxsize=10), redis_server.client(), ns)
    try:
        assert t.wait_live(5)
        t["k"] = "v"
        assert t["k"] == "V" and t.get("k") == "V" and "k" in t
        assert t.get("missing", 1) == 1 and "missing" not in t
    finally:
        t.close()


def test_instance_get_override_on_local_is_called(make_tier):
    local = kvcache.LRUCache(maxsize=10)
    calls = []
    engine_get = local.get
    local.get = lambda key, default=None: calls.append(key) or engine_get(key, default)
    t = make_tier(local=local)
    fill_locally(t, "k", "v")
    calls.clear()
    assert t["k"] == "v" and calls == ["k"]


def test_tier_made_without_init_fails_cleanly():
    t = TieredCache.__new__(TieredCache)
    with pytest.raises(AttributeError):
        t["k"]
    with pytest.raises(AttributeError):
        t.get("k")


# --- serialization through the tier ----------------------------------------------------


def test_compression_and_unsupported_values(make_tier, redis_server):
    t = make_tier(compress_over=64)
    big = "x" * 10_000
    t["big"] = big
    raw = redis_server.client().get(rname(t, "big"))
    assert len(raw) < 1000 and raw[1] & 1  # zstd flag set
    t.local.clear()
    assert t["big"] == big
    with pytest.raises(TypeError):
        t["obj"] = object()
    assert "obj" not in t


def test_pickle_opt_in_and_forged_payload_rejected(make_tier, redis_server):
    key = b"k" * 32
    t = make_tier(serializer=Serializer(pickle_key=key))
    t["d"] = threading.Lock  # not msgpack-able: goes through signed pickle
    t.local.clear()
    assert t["d"] is threading.Lock
    # A payload signed with another key (or unsigned) is refused: a miss + an error.
    forged = Serializer(pickle_key=b"z" * 32).dumps(threading.Lock)
    redis_server.client().set(rname(t, "evil"), forged)
    errors = t.stats().errors
    assert t.get("evil", "default") == "default"
    assert t.stats().errors == errors + 1
    strict = make_tier(serializer=Serializer(pickle_key=key), strict=True, namespace=t.namespace.decode())
    from kvcache.serialize import SignatureError

    with pytest.raises(SignatureError):
        strict["evil"]


def test_not_picklable_and_bad_arguments(make_tier, redis_server, ns):
    import pickle

    t = make_tier()
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(t)
    local, client = kvcache.LRUCache(maxsize=2), redis_server.client()
    with pytest.raises(ValueError):
        TieredCache(local, client, ns, ttl=0)
    with pytest.raises(TypeError):
        TieredCache(local, client, "")
    with pytest.raises(ValueError):
        TieredCache(local, client, ns, serializer=Serializer(), compress_over=10)


def test_decode_responses_client_rejected(redis_server, ns):
    with pytest.raises(ValueError, match="decode_responses"):
        TieredCache(kvcache.LRUCache(maxsize=4), redis_server.client(decode_responses=True), ns)


# --- decorators ----------------------------------------------------------------------------


def test_cachetools_cached_decorator(make_tier):
    cachetools = pytest.importorskip("cachetools")
    calls = []
    a, b = make_tier(), make_tier()

    def square(x, *, extra=0):
        calls.append(x)
        return x * x + extra

    fa = cachetools.cached(a)(square)
    fb = cachetools.cached(b)(square)
    assert fa(3) == 9 and fa(3) == 9
    assert fa(3, extra=1) == 10 and fa(3, extra=1) == 10  # kwargs keys hold a class marker
    assert calls == [3, 3]
    assert fb(3) == 9 and fb(3, extra=1) == 10  # the other "process" reuses the values
    assert calls == [3, 3]
    fa.cache_clear()
    assert wait_for(lambda: len(b.local) == 0)  # b's copies go with the notice
    assert fb(3) == 9 and calls == [3, 3, 3]


# --- get_or_set -----------------------------------------------------------------------------


def test_get_or_set_single_flight_across_tiers(make_tier):
    tiers = [make_tier(), make_tier(), make_tier()]
    calls = []
    gate = threading.Event()

    def compute():
        calls.append(1)
        gate.wait(2)
        return "value"

    results = []

    def worker(t):
        results.append(t.get_or_set("k", compute))

    threads = [threading.Thread(target=worker, args=(tiers[i % 3],)) for i in range(9)]
    for th in threads:
        th.start()
    time.sleep(0.2)
    gate.set()
    for th in threads:
        th.join(10)
    assert results == ["value"] * 9
    assert len(calls) == 1


def test_get_or_set_releases_lock_on_error_and_renews_lease(make_tier, redis_server):
    # renewed every lease/3: a lease of 1.5 s survives a loaded machine's scheduling delays
    t = make_tier(lock_lease=1.5)
    raw = redis_server.client()
    lname = t.namespace + b":l:" + encode_key("k")
    seen_ttl = []

    def slow():
        time.sleep(2.0)  # > lease: only renewal keeps the lock
        seen_ttl.append(raw.pttl(lname))
        return 1

    assert t.get_or_set("k", slow) == 1
    assert seen_ttl[0] > 0, "lease was not renewed while computing"
    assert raw.exists(lname) == 0

    def boom():
        raise RuntimeError("compute failed")

    with pytest.raises(RuntimeError):
        t.get_or_set("e", boom)
    assert raw.exists(t.namespace + b":l:" + encode_key("e")) == 0


def test_get_or_set_waits_with_bound_then_computes(make_tier, redis_server):
    t = make_tier(lock_wait=0.2)
    # Someone else holds the lock and never finishes.
    redis_server.client().set(t.namespace + b":l:" + encode_key("k"), b"other", px=60_000)
    assert t.get_or_set("k", lambda: "mine") == "mine"
    assert t["k"] == "mine"


def test_get_or_set_woken_by_holder(make_tier):
    a, b = make_tier(), make_tier(lock_wait=10)
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.3)
        return "a's"

    th = threading.Thread(target=a.get_or_set, args=("k", slow))
    th.start()
    started.wait(5)
    assert b.get_or_set("k", lambda: "b's") == "a's"
    th.join()


# --- faults -------------------------------------------------------------------------------


def test_fail_open_server_killed_mid_workload_then_restarted(make_tier, own_redis_server):
    t = make_tier(server=own_redis_server, failure_threshold=2, backoff=0.05, max_backoff=0.2)
    expected = {}
    wrong = []
    errors = []
    stop = threading.Event()

    def workload():
        i = 0
        try:
            while not stop.is_set():
                k = f"k{i % 20}"
                if i % 3 == 0:
                    t[k] = i
                    expected[k] = i
                else:
                    v = t.get(k)
                    if v is not None and v != expected.get(k):
                        wrong.append((k, v, expected.get(k)))
                i += 1
        except Exception as exc:  # the point of fail-open: nothing may escape
            errors.append(exc)

    th = threading.Thread(target=workload)
    th.start()
    time.sleep(0.2)
    own_redis_server.kill()
    time.sleep(0.5)
    s = t.stats()
    assert s.errors > 0
    assert s.circuit in ("open", "half-open")
    assert not wait_for(lambda: t.live, 0.05)
    own_redis_server.start()  # same port
    assert wait_for(lambda: t.live, 10), "invalidation stream did not come back"
    stop.set()
    th.join(10)
    assert errors == [] and wrong == []
    # Writes resume and the circuit closes.
    assert wait_for(lambda: (t.set("after", 1), own_redis_server.client().get(rname(t, "after")))[1], 5)
    assert t.stats().circuit == "closed"


def test_strict_raises_when_server_down(make_tier, own_redis_server):
    t = make_tier(server=own_redis_server, strict=True, failure_threshold=1, backoff=10)
    t["k"] = 1
    own_redis_server.kill()
    with pytest.raises(redis.exceptions.ConnectionError):
        t.set("k", 2)
    with pytest.raises(CircuitOpenError):  # breaker open: no new connection attempt
        t.get("k")
    assert t.stats().errors >= 1


def test_lost_stream_makes_local_suspect_then_cleared(make_tier, redis_server):
    t = make_tier()
    # Each write's own notice waited out: a late one would drop a copy and fake the clearing below.
    write_and_settle(t, [t], "k", "old")
    write_and_settle(t, [t], "untouched", 1)
    assert wait_for(lambda: t["k"] == "old" and "k" in t.local)
    assert wait_for(lambda: t["untouched"] == 1 and "untouched" in t.local)
    raw = redis_server.client()
    raw.client_kill_filter(_type="pubsub")
    # A write while the stream may be down: its notice can be lost.
    raw.set(rname(t, "k"), Serializer().dumps("new"))
    assert wait_for(lambda: "untouched" not in t.local, 5), "local tier not cleared after reconnect"
    assert wait_for(lambda: t.live, 5)
    assert t["k"] == "new"


CHILD_READER = r"""
import sys, time, kvcache, redis
from kvcache.redis import TieredCache
port, ns = int(sys.argv[1]), sys.argv[2]
t = TieredCache(kvcache.LRUCache(maxsize=10), redis.Redis(port=port), ns)
assert t.wait_live(5)
assert t["k"] == "v1" and "k" in t.local
print("ready", flush=True)
sys.stdin.readline()  # parent writes, then tells us the write time
t0 = time.monotonic()
while "k" in t.local and time.monotonic() - t0 < 5:
    pass
seen = "k" not in t.local
print("seen" if seen else "missed", t["k"], flush=True)
"""


def test_two_processes_invalidation(make_tier, redis_server, ns, record_property):
    t = make_tier()
    t["k"] = "v1"
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_READER, str(redis_server.port), ns],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
    )
    try:
        assert child.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        t["k"] = "v2"
        child.stdin.write("go\n")
        child.stdin.flush()
        line = child.stdout.readline().split()
        record_property("invalidation_seen_after_ms", round((time.monotonic() - t0) * 1000, 2))
        assert line == ["seen", "v2"]
    finally:
        child.kill()
        child.wait()


CHILD_HOLDER = r"""
import sys, time, kvcache, redis
from kvcache.redis import TieredCache
port, ns = int(sys.argv[1]), sys.argv[2]
t = TieredCache(kvcache.LRUCache(maxsize=10), redis.Redis(port=port), ns, lock_lease=1.0)
def compute():
    print("computing", flush=True)
    time.sleep(600)
t.get_or_set("k", compute)
"""


def test_lock_holder_killed_another_computes_after_lease(make_tier, redis_server, ns):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD_HOLDER, str(redis_server.port), ns],
        stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
    )
    try:
        assert child.stdout.readline().strip() == "computing"
        t = make_tier(lock_wait=30)
        lname = t.namespace + b":l:" + encode_key("k")
        raw = redis_server.client()
        time.sleep(1.2)  # past one lease: only the child's renewals keep it
        assert raw.exists(lname) == 1
        child.kill()
        child.wait()
        calls = []
        assert t.get_or_set("k", lambda: calls.append(1) or "mine") == "mine"
        assert calls == [1]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


# --- namespaces, rejections, breaker (issue 16) ------------------------------------------

from hypothesis import given, strategies as st  # noqa: E402

from kvcache.redis import (  # noqa: E402
    OUTAGE,
    REJECTION,
    NodeHealth,
    _Breaker,
    classify_error,
    namespace_prefix,
    rejection_kind,
)


_ns_bytes = st.lists(st.sampled_from([b"a", b":", b"\\", b"v", b"*"]), min_size=1, max_size=8).map(b"".join)


@given(_ns_bytes, _ns_bytes)
def test_namespace_prefixes_are_prefix_free(a, b):
    pa, pb = namespace_prefix(a), namespace_prefix(b)
    if a != b:
        assert not pa.startswith(pb) and not pb.startswith(pa)
    else:
        assert pa == pb


def test_plain_namespace_keeps_its_key_names():
    assert namespace_prefix(b"app") == b"app:"
    assert namespace_prefix(b"app:v") == b"app\\:v:"
    assert namespace_prefix(b"a\\") == b"a\\\\:"


def test_len_and_clear_stay_in_their_namespace(make_tier, ns):
    outer = make_tier(namespace=ns)
    inner = make_tier(namespace=ns + ":v")
    glob = make_tier(namespace=ns + "*[")
    slash = make_tier(namespace=ns + "\\")
    slash_v = make_tier(namespace=ns + "\\:v")
    outer["a"] = 1
    inner["b"] = 2
    inner["c"] = 3
    glob["d"] = 4
    slash["e"] = 5
    slash_v["f"] = 6
    assert len(outer) == 1 and sorted(inner) == ["b", "c"] and len(glob) == 1
    assert list(slash) == ["e"] and list(slash_v) == ["f"]
    outer.clear()
    slash.clear()
    assert len(outer) == 0 and len(inner) == 2 and glob["d"] == 4 and slash_v["f"] == 6
    assert inner["b"] == 2


def test_errors_are_classified():
    e = redis.exceptions
    for exc in (e.ConnectionError("x"), e.TimeoutError("x"), e.BusyLoadingError("x"),
                e.ClusterDownError("x"), e.MasterDownError("x")):
        assert classify_error(exc) is OUTAGE, exc
    for exc in (e.OutOfMemoryError("x", status_code="OOM"), e.NoPermissionError("x", status_code="NOPERM"),
                e.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value")):
        assert classify_error(exc) is REJECTION, exc
    assert rejection_kind(e.ResponseError("WRONGTYPE Operation against a key")) == "WRONGTYPE"
    assert rejection_kind(e.OutOfMemoryError("x", status_code="OOM")) == "OOM"


def test_breaker_lets_one_probe_through_when_half_open():
    b = _Breaker(threshold=2, base=0.01, cap=5.0)  # cap: an unreported probe expires after 2 * cap
    b.failure(redis.exceptions.ConnectionError())
    assert b.state == "closed" and b.allow()
    b.failure(redis.exceptions.ConnectionError())
    assert b.state == "open" and not b.allow()
    assert wait_for(lambda: b.state == "half-open", 1)
    results = []
    barrier = threading.Barrier(8)

    def call():
        barrier.wait()
        results.append(b.allow())

    threads = [threading.Thread(target=call) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(results) == [False] * 7 + [True]
    b.success()
    assert b.state == "closed" and b.allow()


def test_breaker_opens_on_first_timeout():
    b = _Breaker(threshold=3, base=1.0, cap=1.0)
    b.failure(redis.exceptions.TimeoutError())
    assert b.state == "open" and not b.allow()


def test_rejections_do_not_open_the_breaker(make_tier, own_redis_server, caplog):
    a = make_tier(server=own_redis_server)
    b = make_tier(server=own_redis_server)
    a["k"] = "old"
    a["fresh"] = "there"
    assert b["k"] == "old"
    raw = own_redis_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)
    try:
        with caplog.at_level("WARNING", logger="kvcache.redis"):
            for i in range(5):
                a["k"] = f"new{i}"  # OOM: rejected, and nothing reaches the caller
        s = a.stats()
        assert s.rejections == 5 and s.errors == 0 and s.circuit == "closed"
        assert [r for r in caplog.records if "OOM" in r.getMessage()].__len__() == 1
        # Everyone, the writer too, reads what Redis holds.
        assert a["k"] == "old" and b["k"] == "old"
        a.local.clear()
        assert a.get("fresh") == "there" and a.stats().remote_hits >= 1
        strict = make_tier(server=own_redis_server, strict=True)
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            strict["k"] = "strict"
        assert strict.stats().rejections == 1 and strict["k"] == "old"
    finally:
        raw.config_set("maxmemory", 0)


# --- a refused invalidation stream is loud; the minimal ACL works ---------------------------

from kvcache.redis import SlowClientWarning, StreamRefusedError, ValueTooLargeError  # noqa: E402

MINIMAL_ACL = (
    "&__redis__:invalidate +get +mget +set +del +unlink +scan +evalsha +eval +pttl +pexpire "
    "+client|id +client|tracking +subscribe +ping"
)


def _acl_user(server, name, ns, rules):
    raw = server.client()
    raw.execute_command("ACL", "SETUSER", name, "reset", "on", ">pw", f"~{ns}:*", *rules.split())
    return server.client(username=name, password="pw")


@pytest.mark.parametrize("missing", ["&__redis__:invalidate", "+client|tracking", None])
def test_acl_user_stream_refused_is_loud(redis_server, missing, caplog):
    ns = f"acl{next(_ns_counter)}"  # plain: the ACL's ~ns:* is a glob
    rules = " ".join(r for r in MINIMAL_ACL.split() if r != missing)
    user = f"u{abs(hash((ns, missing)))}"
    client = _acl_user(redis_server, user, ns, rules)
    with caplog.at_level("WARNING", logger="kvcache.redis"), warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        t = TieredCache(kvcache.LRUCache(maxsize=10), client, ns)
        try:
            assert t.max_value_size == 512 * 1024 * 1024  # CONFIG GET refused: Redis' default
            if missing is None:
                assert t.wait_live(5) and t.stats().stream_error is None
            else:
                assert wait_for(lambda: t.stats().stream_error is not None, 5)
                assert missing in t.stats().stream_error and not t.live
            # The tier works either way: through the local tier, or Redis on every read.
            t["k"] = [1, 2]
            assert t["k"] == [1, 2] and len(t) == 1 and t.get_or_set("g", lambda: 3) == 3
            t.set_many(["m1", "m2"], [1, 2], ttl=60)
            assert t.get_many(["m1", "m2", "m3"]) == [1, 2, None] and t.delete_many(["m1", "m2"]) == 2
            t.clear()
            assert len(t) == 0
            t["k"] = [1, 2]
            del t["k"]
            assert t.get("k") is None and t.stats().errors == 0 and t.stats().rejections == 0
        finally:
            t.close()
    refused = [w for w in warned if "refused the invalidation stream" in str(w.message)]
    assert len(refused) == (0 if missing is None else 1)
    if missing is not None:
        assert any(missing in r.getMessage() for r in caplog.records)
        with pytest.raises(StreamRefusedError, match=re.escape(missing)):
            TieredCache(kvcache.LRUCache(maxsize=10), client, ns, strict=True)


# --- client settings ---------------------------------------------------------------------


def test_slow_client_warns_and_from_url_does_not(redis_server, ns):
    slow = redis.Redis(host="127.0.0.1", port=redis_server.port)  # redis-py defaults
    with pytest.warns(SlowClientWarning, match="retries"):
        TieredCache(kvcache.LRUCache(maxsize=10), slow, ns).close()
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowClientWarning)
        t = TieredCache.from_url(f"redis://127.0.0.1:{redis_server.port}/0", kvcache.LRUCache(maxsize=10), ns,
                                 timeout=0.2, ttl=60)
    with t:
        kw = t.client.connection_pool.connection_kwargs
        assert kw["socket_timeout"] == 0.2 and kw["retry"].get_retries() == 0 and t.ttl == 60
        assert t.wait_live(5)
        t["k"] = 1
        assert t["k"] == 1


# --- batches -----------------------------------------------------------------------------


def test_batches_roundtrip(make_tier, redis_server):
    a, b = make_tier(local=kvcache.LRUCache(maxsize=5000)), make_tier(local=kvcache.LRUCache(maxsize=5000))
    keys = [f"k{i}" for i in range(2500)] + [("t", 1), 7]  # more than one script call's chunk
    a.set_many(keys, [[i] for i in range(len(keys))])
    assert wait_for(lambda: b.stats().invalidations == len(keys))  # fills after the notices stay
    assert b.get_many(keys + ["nope", "k1"], default=-1) == [[i] for i in range(len(keys))] + [-1, [1]]
    s = b.stats()
    assert (s.remote_hits, s.misses, s.local_hits) == (len(keys) + 1, 1, 0)
    assert b.get_many(["k0", "k1"]) == [[0], [1]] and b.stats().local_hits == 2  # filled locally
    a.set_many(["k0", "k1"], ["x", "y"], ttl=30)
    assert wait_for(lambda: "k0" not in b.local and "k1" not in b.local)
    assert b.get_many(["k1", "k0"]) == ["y", "x"]
    raw = redis_server.client()
    assert 0 < raw.pttl(rname(a, "k0")) <= 30_000 and raw.pttl(rname(a, "k2")) == -1
    assert all(type(e).__name__ == "Expiring" and e.value in ("x", "y") for e in
               (b.local.get("k0"), b.local.get("k1")) if e is not None)
    assert b.delete_many(["k0", "k1", "nope", "k1"]) == 2
    assert a.get_many(["k0", "k1", "k2"]) == [None, None, [2]]
    assert a.get_many([]) == [] and a.delete_many([]) == 0
    a.set_many([], [])
    with pytest.raises(ValueError):
        a.set_many(["a"], [1, 2])
    with pytest.raises(TypeError):
        a.set_many(["w1", "w2"], [1, object()])
    assert a.get_many(["w1", "w2"]) == [None, None]  # nothing written


def test_batch_fill_racing_an_invalidation_is_not_stored(make_tier):
    a, b = make_tier(), make_tier()
    a.set_many(["k", "other"], ["v1", "o"])
    assert wait_for(lambda: a.stats().invalidations == 2)
    real = a._run  # the remote calls of the batches

    def mget_then_concurrent_write(script, chunks, args):
        reply = real(script, chunks, args)
        before = a.stats().invalidations
        b["k"] = "v2"  # lands after our read: our v1 is already stale
        assert wait_for(lambda: a.stats().invalidations > before)
        return reply

    a.local.clear()
    a._run = mget_then_concurrent_write
    assert a.get_many(["k", "other"]) == ["v1", "o"]
    del a._run
    assert "k" not in a.local and a.local.get("other") == "o"
    assert a["k"] == "v2"


def test_batches_fail_open_and_strict(make_tier, own_redis_server):
    t = make_tier(server=own_redis_server, failure_threshold=1, backoff=10)
    t.set_many(["a", "b"], [1, 2])
    assert wait_for(lambda: t.stats().invalidations == 2)  # the notices of our writes went by
    assert t.get_many(["a", "b"]) == [1, 2] and "a" in t.local and "b" in t.local
    own_redis_server.kill()
    assert t.get_many(["a", "b", "c"], default=0) == [1, 2, 0]  # fail-open: the local tier
    t.set_many(["a", "c"], [10, 30])  # not taken by Redis: no local copy kept
    assert t.get_many(["a", "b", "c"]) == [None, 2, None]
    assert t.delete_many(["b"]) == 1 and t.get("b") is None
    assert t.stats().errors >= 1 and t.stats().circuit == "open"
    s = TieredCache(kvcache.LRUCache(maxsize=10), own_redis_server.client(), "strict", strict=True)
    try:
        with pytest.raises(redis.exceptions.ConnectionError):
            s.get_many(["a"])
        with pytest.raises(redis.exceptions.ConnectionError):
            s.set_many(["a"], [1])
        with pytest.raises(redis.exceptions.ConnectionError):
            s.delete_many(["a"])
    finally:
        s.close()


def test_batch_rejections_counted_not_tripping(make_tier, own_redis_server):
    t = make_tier(server=own_redis_server, max_value_size=100)
    t.set_many(["small", "big"], ["x", "y" * 200])
    assert t.get_many(["small", "big"]) == ["x", None]
    assert t.stats().rejections == 1 and t.stats().circuit == "closed"
    raw = own_redis_server.client()
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)
    try:
        t.set_many(["small", "k2"], ["new", "new"])
        assert t.stats().rejections == 2 and t.stats().errors == 0
        assert t.get_many(["small", "k2"]) == ["x", None]  # what Redis holds
    finally:
        raw.config_set("maxmemory", 0)


def test_oversized_value_says_so(make_tier, own_redis_server):
    raw = own_redis_server.client()
    raw.config_set("proto-max-bulk-len", 1024 * 1024)  # Redis' minimum
    t = make_tier(server=own_redis_server)
    strict = make_tier(server=own_redis_server, strict=True)
    assert t.max_value_size == strict.max_value_size == 1024 * 1024  # read from the server
    big = os.urandom(2 * 1024 * 1024)  # incompressible
    t["k"] = "small"
    with pytest.raises(ValueTooLargeError, match="too large"):
        strict["k"] = big
    t["k"] = big  # fail-open: counted, not sent, no local copy
    s = t.stats()
    assert s.rejections == 1 and s.errors == 0 and s.circuit == "closed"
    assert t["k"] == "small" and strict["k"] == "small"
    # An explicit bound wins (a user whose ACL forbids CONFIG gets Redis' default: see the ACL test).
    assert make_tier(server=own_redis_server, max_value_size=10).max_value_size == 10
    with pytest.raises(ValueError):
        make_tier(server=own_redis_server, max_value_size=0)


# --- faults: restart window, hung server --------------------------------------------------

CHILD_SERVE = r"""
import json, sys, kvcache
from kvcache.redis import TieredCache
port, ns = int(sys.argv[1]), sys.argv[2]
t = TieredCache.from_url(f"redis://127.0.0.1:{port}/0", kvcache.LRUCache(maxsize=1000), ns, timeout=0.25,
                         backoff=0.05, max_backoff=0.5)
assert t.wait_live(5)
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "get":
        print(json.dumps(t.get_many(args) if args[0] != "one" else [t.get(k) for k in args[1:]]), flush=True)
    elif cmd == "live":
        print(json.dumps(t.wait_live(10)), flush=True)
"""


class Child:
    """A TieredCache in another process, read over a pipe."""

    def __init__(self, port, ns):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD_SERVE, str(port), ns],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def ask(self, *words):
        import json

        self.proc.stdin.write(" ".join(words) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.kill()
        self.proc.wait()


def redis_holds(server, tier, keys):
    raw = server.client()
    ser = Serializer()
    return [None if b is None else ser.loads(b) for b in raw.mget([rname(tier, k) for k in keys])]


def test_restart_window_every_process_reads_what_redis_holds(own_redis_server, ns):
    port = own_redis_server.port
    # A long backoff: once open, the breaker would stay open well past the restart on its own.
    a = TieredCache.from_url(f"redis://127.0.0.1:{port}/0", kvcache.LRUCache(maxsize=100), ns, timeout=0.25,
                             failure_threshold=1, backoff=3.0, max_backoff=3.0)
    child = Child(port, ns)
    keys = [f"k{i}" for i in range(10)]
    try:
        assert a.wait_live(5)
        a.set_many(keys, ["v1"] * 10)
        assert a.get_many(keys) == child.ask("get", *keys) == ["v1"] * 10
        own_redis_server.kill()
        a["k0"] = "while down"  # fails: not kept
        assert a.stats().circuit == "open"
        own_redis_server.start()
        assert a.wait_live(10) and child.ask("live") is True
        for i in range(40):  # the window: stream live again, breaker had been open
            a[keys[i % 10]] = f"w{i}"
        assert wait_for(lambda: a.get_many(keys) == child.ask("get", *keys) == redis_holds(own_redis_server, a, keys))
        assert child.ask("get", "one", *keys) == a.get_many(keys) == redis_holds(own_redis_server, a, keys)
        assert redis_holds(own_redis_server, a, keys) != [None] * 10  # the writes reached Redis
    finally:
        child.close()
        a.close()


def test_hung_server_costs_one_timeout_per_probe(own_redis_server, ns):
    import signal

    port = own_redis_server.port
    timeout = 0.2
    t = TieredCache.from_url(f"redis://127.0.0.1:{port}/0", kvcache.LRUCache(maxsize=100), ns, timeout=timeout,
                             backoff=0.05, max_backoff=0.4)
    child = Child(port, ns)
    keys = [f"k{i}" for i in range(20)]
    try:
        assert t.wait_live(5)
        t.set_many(keys, ["before"] * 20)
        own_redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            assert t.get("absent") is None  # one call pays the timeout...
            assert t.stats().errors == 1 and t.stats().circuit == "open"  # ...and opens the breaker
            calls, exceptions = [0], []
            start = time.monotonic()

            def hammer(n):
                try:
                    end = time.monotonic() + 1.0
                    while time.monotonic() < end:
                        k = keys[calls[0] % 20]
                        if calls[0] % 4:
                            t.get(k)
                        else:
                            t[k] = f"hung{n}"
                        calls[0] += 1
                except Exception as exc:
                    exceptions.append(exc)

            threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            elapsed = time.monotonic() - start
            paid = t.stats().errors - 1
        finally:
            own_redis_server.proc.send_signal(signal.SIGCONT)
        assert exceptions == []
        # Probes run one at a time and each costs at most one timeout; the other calls fail open at once.
        assert paid <= elapsed / timeout + 1
        assert calls[0] >= 20 * max(paid, 1)
        # Writes that timed out may still land once the server runs again: everyone converges on Redis.
        assert t.wait_live(10) and child.ask("live") is True
        assert wait_for(lambda: t.get_many(keys) == child.ask("get", *keys) == redis_holds(own_redis_server, t, keys))
    finally:
        child.close()
        t.close()


def test_fault_run_script_short(own_redis_server):
    """bench/redis_faults.py, short: 2 processes through kill -9, restart, SIGSTOP; nothing escapes."""
    import json

    del own_redis_server  # only for the binary check: the script starts its own server
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "redis_faults.py")
    out = subprocess.run(
        [sys.executable, script, "--workers", "2", "--phase", "0.5", "--invalidations", "50", "--json"],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["exceptions"] == 0, figures["exception_samples"]
    assert figures["reads_disagreeing_with_redis"] == 0 and figures["all_live"]
    assert figures["served_while_down"] > 0 and figures["served_while_hung"] > 0
    assert figures["recover_after_restart_s"] is not None and figures["recover_after_sigcont_s"] is not None
    assert out.returncode == 0
