"""consistency="strong" and wait_replicas on the Redis tiers, against real redis-server processes."""

import asyncio
import os
import tempfile
import time

import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

import redis  # noqa: E402

import kvcache  # noqa: E402
from kvcache.redis import AsyncTieredCache, CircuitOpenError, ReplicationError, TieredCache  # noqa: E402
from tests.handshake import start_reader, strong_rounds  # noqa: E402
from tests.redis_fixtures import RedisServer, own_redis_server, redis_server, require_redis_binaries  # noqa: E402,F401

_ns_counter = iter(range(10**6))


@pytest.fixture
def ns(request):
    return f"c{next(_ns_counter)}-{request.node.name[:40]}"


@pytest.fixture
def make_tier(redis_server, ns):
    tiers = []

    def make(server=None, **kwargs):
        tier = TieredCache(kvcache.LRUCache(maxsize=100), (server or redis_server).client(), ns, **kwargs)
        tiers.append(tier)
        assert tier.wait_live(5.0)
        return tier

    yield make
    for t in tiers:
        t.close()


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while not pred() and time.monotonic() < end:
        time.sleep(0.002)
    return pred()


def round_trips(server):
    """Return how many script calls (EVALSHA and EVAL) the server ran so far."""
    stats = server.client().info("commandstats")
    return sum(stats.get(c, {}).get("calls", 0) for c in ("cmdstat_evalsha", "cmdstat_eval"))


def test_arguments_are_checked(redis_server, ns):
    for bad in (dict(consistency="linearizable"), dict(wait_replicas=-1), dict(wait_replicas=True),
                dict(wait_timeout=0), dict(wait_timeout=float("inf"))):
        with pytest.raises(ValueError):
            TieredCache(kvcache.LRUCache(maxsize=10), redis_server.client(), ns, **bad)
    tier = TieredCache(kvcache.LRUCache(maxsize=10), redis_server.client(), ns)
    assert tier.consistency == "eventual" and tier.wait_replicas == 0
    tier.close()


def test_strong_validates_every_local_hit(make_tier, redis_server):
    a, b = make_tier(consistency="strong"), make_tier(consistency="strong")
    a["k"] = 1
    # The write's notice, arriving after b's fill, would drop that copy: let it go by first.
    assert wait_for(lambda: b.stats().invalidations == 1)
    assert b["k"] == 1  # filled from Redis
    assert b.stats().remote_hits == 1
    assert b["k"] == 1  # the validation script's first call loads it (NOSCRIPT, then EVAL)
    before = round_trips(redis_server)
    for _ in range(5):
        assert b["k"] == 1
        assert b.get("k") == 1
        assert "k" in b
    # Every read asked Redis (the compiled hit never answers) but the value stayed local.
    assert round_trips(redis_server) - before == 15
    assert b.stats().local_hits == 16 and b.stats().remote_hits == 1
    for i in range(2, 30):
        a["k"] = i  # no waiting for the invalidation notice: the next read must see it anyway
        assert b["k"] == i
    a.delete("k")
    assert b.get("k") is None
    n = b.stats().invalidations
    a.set_many(["x", "y"], [1, 2])
    assert wait_for(lambda: b.stats().invalidations >= n + 2)
    assert b.get_many(["x", "y", "z"]) == [1, 2, None]
    st = b.stats()
    before = round_trips(redis_server)
    assert b.get_many(["x", "y", "z"]) == [1, 2, None]  # one script call: 2 copies confirmed, z absent
    assert round_trips(redis_server) - before == 1
    assert b.stats().local_hits == st.local_hits + 2 and b.stats().remote_hits == st.remote_hits
    a.set_many(["x", "y"], [3, 4])
    assert b.get_many(["x", "y"]) == [3, 4]
    assert b["x"] == 3


def test_strong_copy_written_by_someone_else(make_tier, redis_server, ns):
    """A raw SET (not through a tier) changes the digest: the copy is not served."""
    b = make_tier(consistency="strong")
    b["k"] = "mine"
    assert b["k"] == "mine"
    raw = redis_server.client()
    name = next(iter(raw.scan_iter(match=b.namespace + b":v:*")))
    raw.set(name, raw.get(name) + b"")  # same bytes: still valid
    assert b["k"] == "mine"
    raw.delete(name)
    assert b.get("k") is None


def test_eventual_answers_locally_without_a_round_trip(make_tier, redis_server):
    a = make_tier()
    a["k"] = 1
    assert wait_for(lambda: a.stats().invalidations == 1)  # its own notice drops the copy: let it pass
    assert a["k"] == 1
    before = round_trips(redis_server)
    hits = a.stats().local_hits
    for _ in range(10):
        assert a["k"] == 1
    assert round_trips(redis_server) == before and a.stats().local_hits == hits + 10


def test_strong_serves_no_local_copy_while_redis_is_down(own_redis_server, ns):
    s = own_redis_server
    strong = TieredCache(kvcache.LRUCache(maxsize=10), s.client(), ns, consistency="strong")
    strict = TieredCache(kvcache.LRUCache(maxsize=10), s.client(), ns, consistency="strong", strict=True)
    eventual = TieredCache(kvcache.LRUCache(maxsize=10), s.client(), ns)
    try:
        for t in (strong, strict, eventual):
            assert t.wait_live(5.0)
        for t in (strong, strict, eventual):
            n = eventual.stats().invalidations
            t["k"] = 1
            deadline = time.monotonic() + 5  # its notice in: a late one would drop the copy read below
            while eventual.stats().invalidations == n:
                assert time.monotonic() < deadline, "notice of the write never arrived"
                time.sleep(0.002)
        assert strong["k"] == strict["k"] == eventual["k"] == 1
        assert "k" in eventual.local
        s.kill()
        assert eventual.get("k") == 1  # fail-open: its local copy
        assert strong.get("k") is None
        assert strong.get_many(["k"]) == [None]
        assert strong.stats().errors >= 1
        with pytest.raises((redis.exceptions.ConnectionError, CircuitOpenError)):
            strict.get("k")
    finally:
        for t in (strong, strict, eventual):
            t.close()


@pytest.mark.parametrize("reader", ["redis", "redis-async"])
def test_strong_two_processes_zero_stale(redis_server, ns, reader):
    """10,000 handshakes: a write returns, the other process (a TieredCache, or an
    AsyncTieredCache) is told, its reads must see it.

    Each value is read twice: the second read validates the local copy the first one filled.
    """
    writer = TieredCache(kvcache.LRUCache(maxsize=100), redis_server.client(), ns, consistency="strong")
    proc = start_reader(reader, f"redis://127.0.0.1:{redis_server.port}", ns, "strong")
    try:
        stale, local_hits, remote_hits = strong_rounds(writer, proc, 10_000, reads_per_write=2)
    finally:
        writer.close()
    assert stale == 0
    # Both kinds of read were tested (a late notice may drop a copy: its next read is remote).
    assert local_hits + remote_hits == 20_000 and local_hits > 1_000


def test_async_strong(redis_server, ns):
    async def main():
        import redis.asyncio

        url = f"redis://127.0.0.1:{redis_server.port}"
        a = AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=10), ns, consistency="strong", timeout=1.0)
        b = AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=10), ns, consistency="strong", timeout=1.0)
        try:
            # Live first: a stream coming up empties the local tier (a copy could then go remote).
            assert await a.wait_live() and await b.wait_live()
            await a.set("k", 1)
            while b.stats().invalidations < 1:  # the write's notice, which would drop b's fill
                await asyncio.sleep(0.002)
            assert await b.get("k") == 1
            assert await b.get("k") == 1
            assert b.stats().local_hits == 1 and b.stats().remote_hits == 1
            for i in range(2, 20):
                await a.set("k", i)
                assert await b.get("k") == i
            await a.delete("k")
            assert await b.get("k") is None
            await a.set_many(["x", "y"], [1, 2])
            assert await b.get_many(["x", "y", "z"]) == [1, 2, None]
            assert await b.get_many(["x", "y"]) == [1, 2]
            await a.set_many(["x", "y"], [3, 4])
            assert await b.get_many(["x", "y"]) == [3, 4]
            assert await b.get_or_set("g", lambda: "computed") == "computed"
            assert await a.get("g") == "computed"
        finally:
            await a.aclose()
            await b.aclose()

    asyncio.run(main())


# --- WAIT --------------------------------------------------------------------------------------


@pytest.fixture
def primary_and_replica():
    """A primary and a replica of it (``--replicaof``), the link up."""
    require_redis_binaries()
    with tempfile.TemporaryDirectory(prefix="kvcache-repl-") as d:
        # Full sync at once, not after the default 5 s wait for more replicas.
        primary = RedisServer(os.path.join(d, "primary"), extra=["--repl-diskless-sync-delay", "0"])
        primary.start()
        replica = RedisServer(os.path.join(d, "replica"), extra=["--replicaof", "127.0.0.1", str(primary.port)])
        try:
            replica.start()
            deadline = time.monotonic() + 20
            # The primary counts the replica (WAIT's acks) once it is online there, not only synced.
            while (_info_replication(replica).get("master_link_status") != "up"
                   or _info_replication(primary).get("slave0", {}).get("state") != "online"):
                assert time.monotonic() < deadline, "the replica never synced"
                time.sleep(0.05)
            with primary.client() as warm:  # the first WAIT after a sync may still miss its ack
                while warm.set("warm-up", 1) and warm.wait(1, 100) < 1:
                    assert time.monotonic() < deadline, "the replica never acknowledged a write"
                warm.delete("warm-up")
            yield primary, replica
        finally:
            replica.stop()
            primary.stop()


def _info_replication(server):
    return server.client().info("replication")


class Recording(dict):
    """A local tier that remembers what was stored in it (the tier's own notices empty it)."""

    def __init__(self):
        super().__init__()
        self.stored = []

    def __setitem__(self, key, value):
        self.stored.append(key)
        super().__setitem__(key, value)


def test_wait_replicas_confirms_then_rejects_when_the_replica_is_gone(primary_and_replica, ns):
    primary, replica = primary_and_replica
    local = Recording()
    tier = TieredCache(local, primary.client(), ns, wait_replicas=1, wait_timeout=0.5)
    strict = TieredCache(kvcache.LRUCache(maxsize=10), primary.client(), ns, wait_replicas=1, wait_timeout=0.5,
                         strict=True)
    on_replica = TieredCache(kvcache.LRUCache(maxsize=10), replica.client(), ns)
    try:
        assert tier.wait_live(5.0)
        for i in range(50):
            tier[f"k{i}"] = i
            # WAIT returned: the replica holds it already, no sleep needed.
            assert on_replica.get(f"k{i}") == i
        tier.set_many(["m1", "m2"], ["a", "b"])
        assert on_replica.get_many(["m1", "m2"]) == ["a", "b"]
        assert tier.get_or_set("g", lambda: "g1") == "g1" and on_replica.get("g") == "g1"
        assert tier.stats().rejections == 0 and tier.stats().sets == 53
        assert tier["k0"] == 0
        # (The write's own notice usually arrives while WAIT waits, dropping the writer's copy.)
        stored, stored_m1 = local.stored.count("k0"), local.stored.count("m1")

        replica.kill()
        deadline = time.monotonic() + 10  # the primary notices the replica is gone
        while _info_replication(primary)["connected_slaves"] != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        tier["k0"] = "unconfirmed"
        st = tier.stats()
        assert st.rejections == 1 and st.errors == 0 and st.circuit == "closed"
        assert local.stored.count("k0") == stored  # the writer keeps no local copy of an unconfirmed write
        # WAIT cannot undo the write: the primary holds it, and reads see it.
        assert tier["k0"] == "unconfirmed"
        tier.set_many(["m1"], ["unconfirmed"])
        assert tier.stats().rejections == 2 and local.stored.count("m1") == stored_m1
        with pytest.raises(ReplicationError):
            strict["k1"] = "strict"
    finally:
        for t in (tier, strict, on_replica):
            t.close()


def test_wait_replicas_async(primary_and_replica, ns):
    primary, replica = primary_and_replica

    async def main():
        url = f"redis://127.0.0.1:{primary.port}"
        tier = AsyncTieredCache.from_url(url, Recording(), ns, wait_replicas=1,
                                         wait_timeout=0.5, timeout=1.0)
        try:
            await tier.set("k", 1)
            await tier.set_many(["a", "b"], [1, 2])
            assert tier.stats().rejections == 0
            raw = replica.client()
            assert len(list(raw.scan_iter(match=tier.namespace + b":v:*"))) == 3
            await tier.set("too-many", 1)
            stored = tier.local.stored.count("too-many")
            tier.wait_replicas = 2  # there is one replica: WAIT times out with 1
            await tier.set("too-many", 2)
            assert tier.stats().rejections == 1 and tier.local.stored.count("too-many") == stored
            assert await tier.get("too-many") == 2  # the primary holds it
        finally:
            await tier.aclose()

    asyncio.run(main())
