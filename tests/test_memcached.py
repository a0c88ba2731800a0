"""kvcache.memcached.TieredCache against real memcached processes: semantics, consistency
across processes, several nodes, failure, encryption."""

import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("pymemcache")
pytest.importorskip("msgpack")

import kvcache  # noqa: E402
from kvcache.memcached import TieredCache  # noqa: E402
from kvcache.serialize import SerializationError  # noqa: E402
from pymemcache.exceptions import MemcacheError  # noqa: E402
from tests.memcached_fixtures import memcached_nodes, memcached_server  # noqa: E402,F401
from tests.handshake import start_reader, strong_rounds  # noqa: E402
from tests.redis_fixtures import child_env  # noqa: E402

CHILD_CWD = tempfile.gettempdir()
KEY = b"0123456789abcdef0123456789abcdef"
_ns_counter = iter(range(10**6))


@pytest.fixture
def ns(request):
    return f"m{next(_ns_counter)}-{request.node.name[:40]}"


@pytest.fixture
def make_tier(memcached_server, ns):
    tiers = []

    def make(local=None, client=None, namespace=None, **kwargs):
        tier = TieredCache(
            local if local is not None else kvcache.LRUCache(maxsize=1000),
            client if client is not None else [memcached_server.address],
            namespace or ns,
            **kwargs,
        )
        tiers.append(tier)
        return tier

    yield make
    for t in tiers:
        t.close()


def wait_for(pred, timeout=10.0, interval=0.005):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(interval)
    return pred()


# --- the mapping --------------------------------------------------------------------------------


def test_write_through_and_local_hits(make_tier):
    a, b = make_tier(max_stale=60), make_tier(max_stale=60)
    a["k"] = {"x": [1, 2]}
    assert a["k"] == {"x": [1, 2]}
    assert a.stats().local_hits == 1 and a.stats().remote_hits == 0
    assert b.get("k") == {"x": [1, 2]}  # remote
    assert b.get("k") == {"x": [1, 2]}  # local
    s = b.stats()
    assert (s.remote_hits, s.local_hits, s.misses) == (1, 1, 0)
    assert b.get("nope", 7) == 7 and "nope" not in b
    with pytest.raises(KeyError):
        b["nope"]
    assert a.delete("k") is True and a.delete("k") is False
    with pytest.raises(KeyError):
        del a["k"]


def test_the_same_serializer_and_keys(make_tier):
    a, b = make_tier(), make_tier(compress_over=64)
    value = {"text": "x" * 5000, "n": (1, 2.5, None), "raw": b"\x00\xff"}
    b[(1, "two")] = value
    assert a[(1, "two")] == value
    assert a[(True, "two")] == a[(1, "two")]  # equal keys are one key, as in a dict
    with pytest.raises(TypeError):
        a["bad"] = object()
    with pytest.raises(TypeError):
        len(a)
    with pytest.raises(TypeError):
        a.clear()


def test_namespaces_are_disjoint(make_tier, ns):
    a, b = make_tier(namespace=ns), make_tier(namespace=ns + ":v")
    a["k"] = 1
    assert b.get("k") is None
    b["k"] = 2
    assert make_tier(namespace=ns)["k"] == 1


def test_ttl_travels_with_the_value(make_tier):
    a, b = make_tier(max_stale=60), make_tier(max_stale=60)
    a.set("t", "v", ttl=1)
    assert b["t"] == "v"
    assert wait_for(lambda: b.get("t") is None and a.get("t") is None, timeout=5)


def test_batches(make_tier):
    a, b = make_tier(max_stale=60), make_tier(max_stale=60)
    keys = [f"k{i}" for i in range(300)]
    a.set_many(keys, list(range(300)))
    assert b.get_many(keys + ["absent"], default=-1) == list(range(300)) + [-1]
    assert b.stats().remote_hits == 300
    assert b.get_many(keys[:10]) == list(range(10))
    assert b.stats().local_hits == 10
    with pytest.raises(ValueError):
        a.set_many(["x"], [1, 2])
    with pytest.raises(TypeError):
        a.get_many("abc")
    a.delete_many(keys[:100])
    c = make_tier()
    assert c.get_many(keys[:100]) == [None] * 100
    assert c.get_many(keys[100:110]) == list(range(100, 110))


def test_get_or_set_single_flight_across_tiers(make_tier):
    import threading

    tiers = [make_tier() for _ in range(4)]
    calls = []
    barrier = threading.Barrier(4)
    out = []

    def compute():
        calls.append(1)
        time.sleep(0.3)
        return "computed"

    def run(t):
        barrier.wait()
        out.append(t.get_or_set("g", compute))

    threads = [threading.Thread(target=run, args=(t,)) for t in tiers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == ["computed"] * 4
    assert len(calls) == 1


# --- invalidation without push ------------------------------------------------------------------


def test_eventual_write_is_seen_after_max_stale(make_tier):
    a, b = make_tier(max_stale=1.0), make_tier(max_stale=1.0)
    a["k"] = "old"
    assert b["k"] == "old"
    a["k"] = "new"
    assert b["k"] == "old"  # inside b's trust window: no round trip, stale by design
    assert wait_for(lambda: b["k"] == "new", timeout=5)
    s = b.stats()
    a.delete("k")
    assert wait_for(lambda: b.get("k") is None, timeout=5)
    assert b.stats().misses > s.misses


def test_unchanged_copy_revalidates_without_the_value(make_tier, memcached_server):
    a = make_tier(max_stale=0.3)
    a["k"] = "v" * 1000
    assert a["k"] == "v" * 1000  # the writer's copy, served locally; its CAS is unknown: refetched once
    time.sleep(0.35)
    before = a.stats()
    a["k"]
    after = a.stats()
    assert after.remote_hits - before.remote_hits == 1
    time.sleep(0.35)
    a["k"]  # now a CAS check: counted as a local hit, the value did not travel
    final = a.stats()
    assert final.local_hits - after.local_hits == 1 and final.remote_hits == after.remote_hits


def test_strong_never_serves_a_changed_value(make_tier):
    a, b = make_tier(consistency="strong"), make_tier(consistency="strong")
    a["k"] = 1
    assert b["k"] == 1
    for i in range(2, 50):
        a["k"] = i
        assert b["k"] == i
    assert b.stats().local_hits == 0
    assert b["k"] == 49
    assert b.stats().local_hits == 1  # validated by CAS in one round trip, value served locally
    a.delete("k")
    assert b.get("k") is None


def test_strong_two_processes_zero_stale(memcached_server, ns):
    """10,000 handshakes: a write returns, the other process is told, its read must see it."""
    writer = TieredCache(kvcache.LRUCache(maxsize=100), [memcached_server.address], ns, consistency="strong")
    proc = start_reader("memcached", memcached_server.address, ns, "strong")
    try:
        stale, _, _ = strong_rounds(writer, proc, 10_000)
    finally:
        writer.close()
    assert stale == 0


def test_eventual_two_processes_bounded(memcached_server, ns):
    """Write, tell the other process when the write returned; it reads until it sees the write.

    No read that started more than max_stale after the write returned may serve the old value:
    the copy it serves was validated before the write, and is trusted for max_stale from then.
    The margin (1 ms) covers clock reads only; scheduling cannot add to it, since a read's
    time is taken before it starts.
    """
    import random

    max_stale = 0.02
    rounds = 300
    writer = TieredCache(kvcache.LRUCache(maxsize=100), [memcached_server.address], ns, max_stale=max_stale)
    writer["k"] = -1
    proc = start_reader("memcached", memcached_server.address, ns, "eventual", max_stale)
    visible, worst = [], []
    try:
        for i in range(rounds):
            time.sleep(random.uniform(0, max_stale))  # writes land anywhere in the reader's window
            writer["k"] = i
            t_w = time.monotonic()
            proc.stdin.write(f"{i} {t_w!r}\n")
            proc.stdin.flush()
            line = proc.stdout.readline()
            assert not line.startswith("bad"), line
            vis, w = map(float, line.split())
            visible.append(vis)
            worst.append(w)
    finally:
        proc.stdin.write("q\n")
        proc.stdin.close()
        proc.wait(10)
        writer.close()
    assert max(worst) < max_stale + 0.001
    assert sum(w >= 0 for w in worst) > rounds // 4  # stale reads did happen: the bound was tested


# --- several nodes ------------------------------------------------------------------------------


def test_rendezvous_moves_a_quarter_to_a_fourth_node(memcached_nodes, ns):
    servers = memcached_nodes(4)
    three = TieredCache(kvcache.LRUCache(maxsize=10), [s.address for s in servers[:3]], ns)
    four = TieredCache(kvcache.LRUCache(maxsize=10), [s.address for s in servers], ns)
    keys = [f"key{i}" for i in range(20_000)]
    before = [three.node_of(k) for k in keys]
    after = [four.node_of(k) for k in keys]
    moved = [(b, a) for b, a in zip(before, after) if b != a]
    assert all(a == servers[3].address for _, a in moved)  # only to the new node
    assert 0.22 < len(moved) / len(keys) < 0.28
    for node in servers[:3]:  # the three old nodes hold about a third each
        assert 0.3 < before.count(node.address) / len(keys) < 0.37
    three.close()
    four.close()


def test_dead_node_costs_only_its_keys_and_comes_back(memcached_nodes, ns):
    servers = memcached_nodes(3)
    addrs = [s.address for s in servers]
    a = TieredCache(kvcache.LRUCache(maxsize=1000), addrs, ns, max_stale=0.05, backoff=0.05, max_backoff=0.2)
    b = TieredCache(kvcache.LRUCache(maxsize=1000), addrs, ns, max_stale=0.05, backoff=0.05, max_backoff=0.2)
    keys = [f"k{i}" for i in range(90)]
    a.set_many(keys, keys)
    dead = servers[1]
    dead_keys = [k for k in keys if a.node_of(k) == dead.address]
    live_keys = [k for k in keys if a.node_of(k) != dead.address]
    assert dead_keys and live_keys
    assert a.get_many(keys) == keys  # a holds every key locally
    dead.kill()
    time.sleep(0.06)  # every copy is past its trust window: reads go to the nodes
    for k in keys:
        a[k] = k + "!"  # writes: the dead node's fail, leaving no local copy; no exception
    assert [a.get(k) for k in live_keys] == [k + "!" for k in live_keys]
    assert [b.get(k) for k in live_keys] == [k + "!" for k in live_keys]  # remotely, from another tier
    assert [a.get(k) for k in dead_keys] == [None] * len(dead_keys)
    assert a.stats().errors > 0 and a.stats().circuit == "open"
    dead.start()  # back, empty, on the same port; its breaker's probe finds it
    assert wait_for(lambda: a.set(dead_keys[0], "back") or b.get(dead_keys[0]) == "back", timeout=10)
    assert a.stats().circuit == "closed"
    a.close()
    b.close()


def test_hash_client_and_single_client(memcached_nodes, ns):
    from pymemcache.client.hash import HashClient

    servers = memcached_nodes(2)
    hc = HashClient([("127.0.0.1", s.port) for s in servers], connect_timeout=0.5, timeout=0.5)
    a = TieredCache(kvcache.LRUCache(maxsize=10), hc, ns)
    b = TieredCache(kvcache.LRUCache(maxsize=10), [s.address for s in reversed(servers)], ns)
    assert sorted(a.nodes) == sorted(b.nodes)
    a.set_many([f"k{i}" for i in range(20)], list(range(20)))
    assert b.get_many([f"k{i}" for i in range(20)]) == list(range(20))  # same placement
    c = TieredCache(kvcache.LRUCache(maxsize=10), servers[0].client(), ns)
    assert c.nodes == [servers[0].address]
    with pytest.raises(TypeError):
        TieredCache(kvcache.LRUCache(maxsize=10), "127.0.0.1:1", ns)
    with pytest.raises(ValueError):
        TieredCache(kvcache.LRUCache(maxsize=10), [servers[0].address] * 2, ns)
    with pytest.raises(ValueError):
        TieredCache(kvcache.LRUCache(maxsize=10), [servers[0].address], ns, consistency="linear")


def test_single_node_down_fails_open(memcached_nodes, ns):
    (server,) = memcached_nodes(1)
    ev = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, max_stale=0.05, ttl=60)
    st = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, consistency="strong")
    ev["k"] = "v"
    assert st["k"] == "v"
    server.kill()
    time.sleep(0.06)
    assert ev["k"] == "v"  # eventual: the local copy while its TTL lasts
    assert st.get("k") is None  # strong: nothing it cannot validate
    strict = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, consistency="strong", strict=True)
    with pytest.raises(OSError):
        strict.get("k")
    ev["k2"] = "w"  # not taken: no local copy either
    assert ev.get("k2") is None
    server.start()
    assert wait_for(lambda: (ev.set("k3", 1), st.get("k3"))[1] == 1, timeout=10)


# --- encryption ---------------------------------------------------------------------------------


SECRET = "plaintext-marker-3f9c"


def _raw_dump(server):
    """Every key and value memcached holds, as raw bytes (lru_crawler metadump + get)."""
    dump = server.command(b"lru_crawler metadump all", end=b"END\r\n")
    out = [dump]
    for line in dump.splitlines():
        if line.startswith(b"key="):
            from urllib.parse import unquote_to_bytes

            key = unquote_to_bytes(line.split()[0][4:])
            out.append(server.command(b"get " + key))
    return b"".join(out)


def test_encrypted_values_hold_no_plaintext(memcached_nodes, ns):
    (server,) = memcached_nodes(1)
    enc = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, encryption_key=KEY)
    enc.set_many([f"{SECRET}-key{i}" for i in range(20)], [{"v": f"{SECRET}-{i}"} for i in range(20)])
    enc[SECRET] = SECRET * 10
    raw = _raw_dump(server)
    assert raw.count(b"VALUE ") == 21
    assert SECRET.encode() not in raw
    reader = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, encryption_key=[b"n" * 16, KEY])
    assert reader[SECRET] == SECRET * 10  # the old key still opens values after rotation
    # The scan sees plaintext when there is some: without a key the marker shows.
    plain = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns + "p")
    plain["x"] = SECRET
    assert SECRET.encode() in _raw_dump(server)


def test_tampered_foreign_or_plain_values_are_misses(make_tier, memcached_server, ns):
    enc = make_tier(encryption_key=KEY)
    enc["a"] = "A"
    enc["b"] = "B"
    mc = memcached_server.client()  # its writes wait for the reply: the tiers read on other connections
    name_a, name_b = enc._names("a")[1], enc._names("b")[1]
    mc.set(name_b, mc.get(name_a), noreply=False)  # a's value copied under b's name: does not authenticate
    reader = make_tier(encryption_key=KEY)
    assert reader.get("b") is None
    stored = bytearray(mc.get(name_a))
    stored[-1] ^= 1
    mc.set(name_a, bytes(stored), noreply=False)
    assert reader.get("a") is None
    assert reader.stats().errors == 2
    other = make_tier(encryption_key=b"x" * 32)  # a foreign key
    enc["c"] = "C"
    assert other.get("c") is None
    strict = make_tier(encryption_key=KEY, strict=True)
    with pytest.raises(SerializationError):
        strict.get("a")
    make_tier()["p"] = "plain"  # written without encryption: refused too
    assert reader.get("p") is None
    with pytest.raises(ValueError):
        make_tier(encryption_key=b"short")


def test_imports_without_the_redis_package():
    code = (
        "import sys; sys.modules['redis'] = None\n"  # `import redis` now raises ImportError
        "import kvcache.memcached\n"
        "assert 'kvcache.redis' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CHILD_CWD, env=child_env(), timeout=60)


_FLIGHT_CHILD = r"""
import sys, time
import kvcache
from kvcache.memcached import TieredCache
addr, ns, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
tier = TieredCache(kvcache.LRUCache(maxsize=10), [addr], ns)
def compute():
    print("computed", flush=True)
    time.sleep(0.5)
    return "value"
time.sleep(max(0.0, start - time.monotonic()))
print("result", tier.get_or_set("g", compute), flush=True)
"""


def test_get_or_set_single_flight_across_processes(memcached_server, ns):
    start = time.monotonic() + 1.5  # every child imported and connected by then
    procs = [
        subprocess.Popen([sys.executable, "-c", _FLIGHT_CHILD, memcached_server.address, ns, repr(start)],
                         stdout=subprocess.PIPE, text=True, cwd=CHILD_CWD, env=child_env())
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(o.count("computed") for o in outs) == 1
    assert all("result value" in o for o in outs)


def test_oversized_value_is_a_rejection(make_tier):
    from kvcache.memcached import ValueTooLargeError

    a = make_tier()
    a["big"] = "small"
    a["big"] = "x" * (2 << 20)  # over max_value_size: refused before it is sent
    s = a.stats()
    assert s.rejections == 1 and s.errors == 0 and s.circuit == "closed"
    assert a.get("big") == "small"  # no local copy of the refused write; memcached's value stands
    with pytest.raises(ValueTooLargeError, match="too large"):
        make_tier(strict=True)["big"] = "x" * (2 << 20)


def test_tier_over_tls(ns):
    """A pymemcache client with a TLS context works as the tier's client (memcached -Z)."""
    import ssl

    from pymemcache.client.base import Client

    from tests.certs import self_signed
    from tests.memcached_fixtures import MemcachedServer, require_memcached

    pytest.importorskip("cryptography")
    require_memcached()
    with tempfile.TemporaryDirectory(prefix="kvcache-mc-tls-") as d:
        cert, key = self_signed(d)
        ctx = ssl.create_default_context(cafile=cert)
        server = MemcachedServer(extra=["-Z", "-o", f"ssl_chain_cert={cert},ssl_key={key}"], ssl_context=ctx)
        try:
            server.start()
            tiers = [
                TieredCache(kvcache.LRUCache(maxsize=10), Client(("127.0.0.1", server.port), tls_context=ctx,
                                                                 connect_timeout=1, timeout=1), ns, encryption_key=KEY)
                for _ in range(2)
            ]
            tiers[0]["k"] = SECRET
            assert tiers[1]["k"] == SECRET and tiers[1].stats().errors == 0
            plain = TieredCache(kvcache.LRUCache(maxsize=10), [server.address], ns, strict=True)
            with pytest.raises((OSError, MemcacheError)):  # TLS only: a plain client gets nowhere
                plain.get("k")
        finally:
            server.stop()


@pytest.mark.parametrize("encrypted", [False, True])
def test_get_many_agrees_with_get(make_tier, memcached_server, encrypted):
    """get_many decodes a batch in one pass: it must answer and count what get does, key by key,
    for good, expired, corrupt, truncated and absent values (strict: raise as get does)."""
    import struct

    kw = {"encryption_key": KEY} if encrypted else {}
    a = make_tier(**kw)
    good = [f"g{i}" for i in range(20)]
    a.set_many(good, [{"i": i} for i in range(20)])
    a.set("ttl", "short", ttl=30)
    raw = memcached_server.client()
    head = struct.Struct("<d")
    if not encrypted:
        dumps = a._ser.dumps
        raw.set(a._names("expired")[1], head.pack(time.time() - 5) + dumps("old"), noreply=False)
        raw.set(a._names("corrupt")[1], head.pack(0.0) + b"\xff\xfenot a frame", noreply=False)
    raw.set(a._names("short")[1], b"abc", noreply=False)
    keys = good + ["ttl", "expired", "corrupt", "short", "absent"]
    batch, single = make_tier(**kw), make_tier(**kw)
    got = batch.get_many(keys, default="D")
    assert got == [single.get(k, "D") for k in keys]
    assert got[:21] == [{"i": i} for i in range(20)] + ["short"]
    s, b = single.stats(), batch.stats()
    assert (b.remote_hits, b.misses, b.errors) == (s.remote_hits, s.misses, s.errors)
    assert [k in batch.local for k in keys] == [k in single.local for k in keys]
    # Without the bad frames the batch decodes in one pass: the same answers and counts again.
    clean = good + ["ttl", "expired", "absent"]
    batch, single = make_tier(**kw), make_tier(**kw)
    assert batch.get_many(clean, default="D") == [single.get(k, "D") for k in clean]
    s, b = single.stats(), batch.stats()
    assert (b.remote_hits, b.misses, b.errors) == (s.remote_hits, s.misses, s.errors) == (21, 2, 0)
    assert [k in batch.local for k in clean] == [k in single.local for k in clean]
    assert make_tier(**kw).get_many(good[:3] * 2) == [{"i": i} for i in range(3)] * 2
    strict = make_tier(strict=True, **kw)
    with pytest.raises(SerializationError):
        strict.get_many(keys)
    assert strict.get_many(good) == [{"i": i} for i in range(20)]
