"""TieredCache on a real 3-master Redis Cluster on loopback."""

import threading
import time

import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

import kvcache  # noqa: E402
from kvcache.redis import TieredCache  # noqa: E402
from kvcache.serialize import Serializer, encode_key  # noqa: E402
from tests.redis_fixtures import redis_cluster  # noqa: E402,F401


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
