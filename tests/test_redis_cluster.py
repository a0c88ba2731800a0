"""TieredCache on a real 3-master Redis Cluster on loopback."""

import os
import signal
import threading
import time
import warnings

import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

import kvcache  # noqa: E402
from kvcache.redis import TieredCache  # noqa: E402
from redis.cluster import LoadBalancingStrategy  # noqa: E402
from kvcache.serialize import Serializer, encode_key  # noqa: E402
from tests.redis_fixtures import (  # noqa: E402,F401
    own_cluster_with_replicas,
    redis_cluster,
    redis_cluster_with_replicas,
)


def wait_for(pred, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.002)
    return pred()


@pytest.fixture
def tiers(redis_cluster, request):
    made = []

    def make(**kwargs):
        t = TieredCache(kvcache.LRUCache(maxsize=1000), redis_cluster.client(), request.node.name, **kwargs)
        made.append(t)
        assert t.wait_live(10), "invalidation streams did not come up on every primary"
        return t

    yield make
    for t in made:
        t.close()


def test_one_listener_per_primary(tiers, redis_cluster):
    t = tiers()
    assert len(t._threads) == 3


def test_values_spread_over_nodes_roundtrip(tiers, redis_cluster):
    a, b = tiers(), tiers()
    keys = [f"key{i}" for i in range(60)]
    for i, k in enumerate(keys):
        a[k] = (i, str(i))
    raw = redis_cluster.client()
    nodes = {raw.get_node_from_key(a.namespace + b":v:" + encode_key(k)).name for k in keys}
    assert len(nodes) == 3  # the namespace really spans the cluster
    assert all(b[k] == (i, str(i)) for i, k in enumerate(keys))
    assert len(a) == 60 and sorted(a) == sorted(keys)
    a.clear()
    assert len(b) == 0


def test_invalidation_from_every_node(tiers):
    a, b = tiers(), tiers()
    keys = [f"key{i}" for i in range(30)]
    for k in keys:
        a[k] = 1
    # Let the notices of a's writes reach b before b fills (see test_redis.write_and_settle).
    assert wait_for(lambda: b.stats().invalidations >= len(keys))
    for k in keys:
        assert b[k] == 1
    assert all(k in b.local for k in keys)
    for k in keys:
        a[k] = 2
    assert wait_for(lambda: not any(k in b.local for k in keys)), "some node's notices never arrived"
    assert all(b[k] == 2 for k in keys)


def test_ttl_and_external_write(tiers, redis_cluster):
    raw = redis_cluster.client()
    t = tiers(ttl=5)
    name = t.namespace + b":v:" + encode_key("k")
    t["k"] = "v"
    assert 0 < raw.pttl(name) <= 5000
    assert wait_for(lambda: t["k"] == "v" and "k" in t.local)
    raw.set(name, Serializer().dumps("external"))
    assert wait_for(lambda: "k" not in t.local)
    assert t["k"] == "external"


def test_get_or_set_single_flight(tiers):
    ts = [tiers(), tiers()]
    calls = []

    def compute():
        calls.append(1)
        time.sleep(0.2)
        return "v"

    out = []
    threads = [threading.Thread(target=lambda t=ts[i % 2]: out.append(t.get_or_set("k", compute))) for i in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert out == ["v"] * 6 and calls == [1]


def test_batches_across_nodes(tiers, redis_cluster):
    a, b = tiers(), tiers()
    keys = [f"key{i}" for i in range(300)]
    a.set_many(keys, list(range(300)), ttl=60)
    raw = redis_cluster.client()
    names = [a.namespace + b":v:" + encode_key(k) for k in keys]
    assert len({raw.get_node_from_key(n).name for n in names}) == 3
    assert 0 < raw.pttl(names[0]) <= 60_000
    assert wait_for(lambda: b.stats().invalidations >= len(keys))
    assert b.get_many(keys + ["nope"], default=-1) == list(range(300)) + [-1]
    assert b.stats().remote_hits == 300 and b.get_many(keys[:5]) == [0, 1, 2, 3, 4]
    assert b.stats().local_hits == 5
    assert a.delete_many(keys[:100] + ["nope"]) == 100
    assert wait_for(lambda: not any(k in b.local for k in keys[:5]))
    assert b.get_many(keys[98:102]) == [None, None, 100, 101]
    assert len(a) == 200


@pytest.fixture
def lonely_cluster(tmp_path):
    """A cluster of its own whose masters keep serving their slots when another one dies."""
    from tests.redis_fixtures import RedisClusterProcs, require_redis_binaries

    require_redis_binaries(cluster=True)
    c = RedisClusterProcs(str(tmp_path), extra=["--cluster-require-full-coverage", "no"]).start()
    try:
        yield c
    finally:
        c.stop()


def test_dead_master_fails_open_only_its_slots(lonely_cluster):
    c = lonely_cluster
    t = TieredCache(kvcache.LRUCache(maxsize=1000), c.client(socket_timeout=0.25, socket_connect_timeout=0.25),
                    "dead", failure_threshold=1, backoff=0.05, max_backoff=0.2)
    try:
        assert t.wait_live(10)
        raw = c.client()
        keys = [f"key{i}" for i in range(120)]
        dead = c.nodes[1]
        dead_name = f"127.0.0.1:{dead.port}"
        on_dead = {k for k in keys if raw.get_node_from_key(t.namespace + b":v:" + encode_key(k)).name == dead_name}
        assert 0 < len(on_dead) < len(keys)
        dead.kill()
        served = {"healthy": 0, "dead": 0}
        failed_open = {"healthy": 0, "dead": 0}
        for rnd in range(3):
            for k in keys:
                side = "dead" if k in on_dead else "healthy"
                before = t.stats()
                t[k] = rnd  # never raises
                after_set = t.stats()
                v = t.get(k)
                after = t.stats()
                ok = after_set.sets == before.sets + 1 and after.remote_hits == after_set.remote_hits + 1
                (served if ok else failed_open)[side] += 1
                assert v == (rnd if ok else None)
        assert failed_open["healthy"] == 0 and served["healthy"] == 3 * (len(keys) - len(on_dead))
        assert served["dead"] == 0
        s = t.stats()
        assert s.circuit in ("open", "half-open") and not s.live  # the dead node's stream is down
        # Batches: the healthy nodes' keys still go to Redis, the dead node's fail open.
        t.local.clear()
        got = t.get_many(keys)
        assert [k for k, v in zip(keys, got) if v is None] == [k for k in keys if k in on_dead]
    finally:
        t.close()


def test_from_url_cluster(redis_cluster, request):
    import warnings

    from kvcache.redis import SlowClientWarning

    url = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}/0"
    with warnings.catch_warnings():
        warnings.simplefilter("error", SlowClientWarning)
        t = TieredCache.from_url(url, kvcache.LRUCache(maxsize=100), request.node.name, cluster=True, timeout=0.3)
    with t:
        assert t.wait_live(10) and len(t._threads) == 3
        assert t.client.retry.get_retries() == 0
        t.set_many(["a", "b", "c"], [1, 2, 3])
        assert t.get_many(["a", "b", "c", "d"]) == [1, 2, 3, None]


def test_strong_consistency_on_every_node(tiers, redis_cluster):
    a, b = tiers(consistency="strong"), tiers(consistency="strong")
    keys = [f"s{i}" for i in range(30)]
    a.set_many(keys, list(range(30)))
    assert b.get_many(keys) == list(range(30))
    for round_ in range(3):
        for i, k in enumerate(keys):
            a[k] = (round_, i)  # no waiting for notices: strong reads see the write at once
            assert b[k] == (round_, i)
            assert b[k] == (round_, i)  # validated on the key's node
    assert b.stats().local_hits > 0


def test_wait_replicas_needs_a_plain_client(redis_cluster):
    with pytest.raises(ValueError, match="wait_replicas"):
        TieredCache(kvcache.LRUCache(maxsize=10), redis_cluster.client(), "w", wait_replicas=1)


def _script_calls(node):
    """Return how many script calls (EVALSHA, EVAL and their _RO twins) `node` has served."""
    stats = node.client().info("commandstats")
    return sum(stats.get(f"cmdstat_{c}", {}).get("calls", 0) for c in ("evalsha_ro", "eval_ro", "evalsha", "eval"))


def _replica_client(cluster, how):
    """A cluster client that reads from replicas: redis-py's deprecated flag (round-robin over each
    slot's primary and replicas) or the replicas-only round-robin strategy."""
    if how == "read_from_replicas":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return cluster.client(read_from_replicas=True)
    return cluster.client(load_balancing_strategy=LoadBalancingStrategy.ROUND_ROBIN_REPLICAS)


def _all_listening(tier):
    return wait_for(lambda: all(tier._listeners_up), 10)  # replicas' streams too, not only wait_live's


@pytest.mark.parametrize("how", ["read_from_replicas", "replicas_only"])
def test_reads_from_replicas_spread_and_stay_fresh(redis_cluster_with_replicas, request, how):
    """Reads go round-robin over each slot's nodes, as the client balances them, and a copy read
    from a lagging replica is dropped by that replica's notice (it is listened to)."""
    cluster = redis_cluster_with_replicas
    ns = request.node.name
    writer = TieredCache(kvcache.LRUCache(maxsize=1000), cluster.client(), ns)
    reader = TieredCache(kvcache.LRUCache(maxsize=1000), _replica_client(cluster, how), ns)
    try:
        assert len(reader._threads) == 6 and len(writer._threads) == 3  # a stream per node read from
        assert writer.wait_live(10) and _all_listening(reader)
        keys = [f"r{i}" for i in range(300)]
        roles = {n.port: n.client().info("replication")["role"] for n in cluster.nodes}
        for round_ in range(3):
            writer.set_many(keys, [(round_, i) for i in range(300)])
            for i, k in enumerate(keys):  # once the notices are in, every read sees the write
                assert wait_for(lambda: reader.get(k) == (round_, i)), (round_, k)
            reader.local.clear()
            assert reader.get_many(keys) == [(round_, i) for i in range(300)]
        before = {n.port: _script_calls(n) for n in cluster.nodes}  # from here on, only reads
        for _ in range(2):
            reader.local.clear()
            assert [reader.get(k) for k in keys] == [(2, i) for i in range(300)]
            reader.local.clear()
            assert reader.get_many(keys) == [(2, i) for i in range(300)]
        spread = {n.port: _script_calls(n) - before[n.port] for n in cluster.nodes}
        print(how, "script calls per node (port, role, calls):",
              sorted((port, roles[port], v) for port, v in spread.items()))
        replicas = [v for port, v in spread.items() if roles[port] == "slave"]
        primaries = [v for port, v in spread.items() if roles[port] == "master"]
        assert len(replicas) == 3 and min(replicas) > 0
        if how == "replicas_only":
            assert primaries == [0, 0, 0]
        else:
            assert min(primaries) > 0.5 * max(replicas)  # round-robin: a primary takes its share
        assert min(replicas) > 0.5 * max(replicas)
        time.sleep(0.2)  # every notice in: the local copies are the last writes, wherever they came from
        assert [reader.get(k) for k in keys] == [(2, i) for i in range(300)]
        assert reader.stats().errors == 0
    finally:
        writer.close()
        reader.close()


def test_get_or_set_single_flight_with_lagging_replicas(redis_cluster_with_replicas, request):
    """The lease holder's write is on the primary: the next holder's check reads it there, so a
    replica that has not got the write yet (here: every replica read misses) costs no second compute."""
    cluster = redis_cluster_with_replicas
    ns = request.node.name
    tiers = [TieredCache(kvcache.LRUCache(maxsize=10), _replica_client(cluster, "replicas_only"), ns)
             for _ in range(3)]
    try:
        for t in tiers:
            assert _all_listening(t)
            t._eval_on = lambda *args: None  # a lagging replica: not there yet
        calls = []

        def compute():
            calls.append(1)
            time.sleep(0.2)
            return "v"

        results = []
        threads = [threading.Thread(target=lambda t=t: results.append(t.get_or_set("k", compute))) for t in tiers]
        for th in threads:
            th.start()
        for th in threads:
            th.join(10)
        assert results == ["v"] * 3 and calls == [1]
    finally:
        for t in tiers:
            t.close()


def test_strong_tier_reads_only_primaries(redis_cluster_with_replicas, request):
    """consistency="strong" ignores the client's replica reads: a replica may not have the write yet."""
    cluster = redis_cluster_with_replicas
    ns = request.node.name
    a = TieredCache(kvcache.LRUCache(maxsize=100), cluster.client(), ns, consistency="strong")
    b = TieredCache(kvcache.LRUCache(maxsize=100), _replica_client(cluster, "replicas_only"), ns,
                    consistency="strong")
    try:
        assert len(b._threads) == 3
        replicas = [n for n in cluster.nodes if n.client().info("replication")["role"] == "slave"]
        before = [_script_calls(n) for n in replicas]
        keys = [f"s{i}" for i in range(30)]
        for round_ in range(3):
            a.set_many(keys, [round_] * 30)
            assert [b[k] for k in keys] == [round_] * 30  # no wait for notices or replication
            assert b.get_many(keys) == [round_] * 30
        assert [_script_calls(n) for n in replicas] == before
    finally:
        a.close()
        b.close()


def test_replica_gone_reads_go_to_its_primary(own_cluster_with_replicas, request):
    """A dead replica costs nothing but its share of reads: its primary answers them, no read fails,
    the local tier keeps answering; once it is back it serves reads again."""
    cluster = own_cluster_with_replicas
    ns = request.node.name
    writer = TieredCache(kvcache.LRUCache(maxsize=1000), cluster.client(), ns)
    reader = TieredCache(kvcache.LRUCache(maxsize=1000), _replica_client(cluster, "replicas_only"), ns)
    with writer, reader:
        assert writer.wait_live(10) and _all_listening(reader)
        keys = [f"g{i}" for i in range(300)]
        writer.set_many(keys, range(300))
        dead = next(n for n in cluster.nodes if n.client().info("replication")["role"] == "slave")
        assert reader.get_many(keys) == list(range(300)) and len(reader.local) == 300
        dead.kill()
        # A copy read from it would miss its notice now: the local tier is emptied, once.
        assert wait_for(lambda: len(reader.local) == 0)
        for round_ in range(3):
            writer.set_many(keys, [(round_, i) for i in range(300)])
            time.sleep(0.05)
            for i, k in enumerate(keys):
                assert wait_for(lambda: reader.get(k) == (round_, i)), (round_, k)
            reader.local.clear()
            assert reader.get_many(keys) == [(round_, i) for i in range(300)]
        s = reader.stats()
        assert s.live and s.errors == 0  # the primaries' streams are what the local tier needs
        hits = s.local_hits
        assert [reader.get(k) for k in keys] == [(2, i) for i in range(300)]
        assert reader.stats().local_hits == hits + 300
        dead.start()
        assert _all_listening(reader)
        before = _script_calls(dead)
        reader.local.clear()
        assert reader.get_many(keys) == [(2, i) for i in range(300)]
        assert wait_for(lambda: [reader.get(k) for k in keys] == [(2, i) for i in range(300)])
        assert _script_calls(dead) > before  # back in the rotation
        # Hung rather than dead: a read sent to it times out, once, and its primary answers:
        # single reads first, then a batch (whose replicas are all charged: it cannot tell).
        for round_, batch in ((3, False), (4, True)):
            # Remote reads (the local tier cleared) until one probes the replica and closes its breaker.
            assert wait_for(lambda: _all_listening(reader) and reader.local.clear() is None
                            and reader.get_many(keys) is not None
                            and reader._health.node(f"127.0.0.1:{dead.port}").state == "closed")
            os.kill(dead.proc.pid, signal.SIGSTOP)
            try:
                writer.set_many(keys, [(round_, i) for i in range(300)])
                reader.local.clear()
                t0 = time.monotonic()
                got = reader.get_many(keys) if batch else [reader.get(k) for k in keys]
                print("hung replica:", "batch" if batch else "singles", time.monotonic() - t0)
                assert got == [(round_, i) for i in range(300)]
                assert reader._health.node(f"127.0.0.1:{dead.port}").state != "closed"
                assert reader.stats().errors == 0
            finally:
                os.kill(dead.proc.pid, signal.SIGCONT)


def test_a_listener_stays_with_a_primary_that_still_serves_slots(tiers, redis_cluster):
    """Only a node gone from the primaries moves its listener: after resharding took its home slot,
    a reconnecting listener must stay, or that node's notices would be lost."""
    t = tiers()
    first = t._pool_nodes[0]
    t._home_slots[0] = t._home_slots[1]  # as if resharding moved node 0's home slot to node 1
    t._listener_target(0)
    assert t._pool_nodes[0] == first
    assert len(set(t._pool_nodes)) == 3


def test_failover_listeners_follow_the_promoted_replica(own_cluster_with_replicas, request):
    """A primary dies and its replica takes over: the tier then listens to the new primary, so the
    local tier answers again and writes there still drop the copies (else the reads below never
    see the new values)."""
    cluster = own_cluster_with_replicas
    ns = request.node.name
    writer = TieredCache(kvcache.LRUCache(maxsize=1000), cluster.client(), ns)
    reader = TieredCache(kvcache.LRUCache(maxsize=1000), cluster.client(), ns)
    with writer, reader:
        assert writer.wait_live(10) and reader.wait_live(10)
        keys = [f"f{i}" for i in range(300)]
        writer.set_many(keys, range(300))
        victim = next(n for n in cluster.nodes[1:] if n.client().info("replication")["role"] == "master")
        gone = f"127.0.0.1:{victim.port}"
        on_victim = [k for k in keys if reader._health.node_name(reader._name(k)) == gone]
        assert on_victim
        victim.kill()

        def recovered():  # traffic lets the clients learn the new slot map
            writer.set_many(keys, range(300))
            reader.get_many(keys)
            return (writer.stats().live and reader.stats().live
                    and all(t._health.node_name(t._name(on_victim[0])) not in ("?", gone) for t in (writer, reader)))

        assert wait_for(recovered, 40), "the tiers did not follow the failover"
        for round_ in range(3):
            before = writer.stats()
            writer.set_many(keys, [(round_, i) for i in range(300)])
            after = writer.stats()
            assert after.sets == before.sets + 300, (before, after)  # Redis took every write
            for i, k in enumerate(keys):
                assert wait_for(lambda: reader.get(k) == (round_, i)), (round_, k)
        time.sleep(0.2)
        hits = reader.stats().local_hits
        assert [reader.get(k) for k in keys] == [(2, i) for i in range(300)]
        assert reader.stats().local_hits == hits + 300  # the local tier answers again


def test_a_primary_added_later_is_listened_to(tmp_path, request):
    """Slots resharded to a primary the tier did not know: it starts a stream from it, and until
    that is up keeps no copy of its keys (nothing would drop one). `blind` cannot start streams,
    so it shows the second half: it keeps no copy of those keys and never serves a stale value."""
    from tests.redis_fixtures import RedisClusterProcs, require_redis_binaries

    require_redis_binaries(cluster=True)
    cluster = RedisClusterProcs(str(tmp_path / "c")).start()
    ns = request.node.name
    try:
        writer, reader, blind = (TieredCache(kvcache.LRUCache(maxsize=1000), cluster.client(), ns) for _ in range(3))
        blind._watch_new_primaries = lambda: None
        with writer, reader, blind:
            assert all(t.wait_live(10) for t in (writer, reader, blind))
            keys = [f"n{i}" for i in range(300)]
            writer.set_many(keys, range(300))
            assert reader.get_many(keys) == blind.get_many(keys) == list(range(300))
            new = cluster.add_primary(str(tmp_path / "new"), 2000)
            moved = f"127.0.0.1:{new.port}"

            def learned():  # traffic lets the clients learn the new slot map and the tier the new node
                for t in (writer, reader, blind):
                    t.local.clear()
                    t.get_many(keys)
                return (all(t._health.node_name(t._name(k)) == moved for t in (writer, reader, blind) for k in there())
                        and there() and reader.stats().live and moved in reader._watched)

            def there():
                return [k for k in keys if reader._health.node_name(reader._name(k)) == moved]

            assert wait_for(learned, 20)
            assert moved not in blind._watched and len(reader._threads) == 4 and len(blind._threads) == 3
            on_new = there()
            for round_ in range(3):
                writer.set_many(keys, [(round_, i) for i in range(300)])
                for i, k in enumerate(keys):  # copies kept, and dropped by the new node's notices too
                    assert wait_for(lambda: reader.get(k) == (round_, i)), (round_, k)
                    assert wait_for(lambda: blind.get(k) == (round_, i)), (round_, k)
                for k in on_new:
                    writer[k] = ("single", round_)
                    assert blind[k] == ("single", round_)  # no copy kept, so never stale
                    assert wait_for(lambda: reader.get(k) == ("single", round_))
            assert all(k in reader.local for k in keys)
            assert not any(k in blind.local for k in on_new)
            assert sum(k in blind.local for k in keys) == len(keys) - len(on_new)  # the rest cached
    finally:
        cluster.stop()
