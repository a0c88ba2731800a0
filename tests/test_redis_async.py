"""AsyncTieredCache against a real redis-server: semantics, invalidation, single flight, faults."""

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

# Children run outside the source tree: there `import kvcache` must find the installed build.
CHILD_CWD = tempfile.gettempdir()

import redis  # noqa: E402
import redis.asyncio  # noqa: E402

import kvcache  # noqa: E402
import kvcache.redis  # noqa: E402
from kvcache.redis import AsyncTieredCache, CircuitOpenError, StreamRefusedError  # noqa: E402
from kvcache.serialize import Serializer  # noqa: E402
from tests.redis_fixtures import (  # noqa: E402,F401
    child_env,
    own_cluster_with_replicas,
    own_redis_server,
    redis_cluster,
    redis_cluster_with_replicas,
    redis_server,
)

_ns_counter = iter(range(10**6))


@pytest.fixture
def ns(request):
    return f"a{next(_ns_counter)}-{request.node.name[:40]}"


def aclient(server, timeout=1.0):
    """A redis.asyncio client with short timeouts and no hidden retries."""
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis(
        host="127.0.0.1", port=server.port, socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 0.5), retry=Retry(NoBackoff(), 0),
    )


class Tiers:
    """Make tiers (each with its own client) and close them all at the end of the test."""

    def __init__(self, server, ns):
        self.server, self.ns, self.tiers = server, ns, []

    async def __call__(self, local=None, server=None, namespace=None, live=True, timeout=1.0, **kwargs):
        t = AsyncTieredCache(
            local if local is not None else kvcache.LRUCache(maxsize=1000),
            aclient(server or self.server, timeout),
            namespace or self.ns,
            **kwargs,
        )
        self.tiers.append(t)
        if live:
            assert await t.wait_live(5.0), "invalidation stream did not come up"
        return t

    async def aclose(self):
        for t in self.tiers:
            await t.aclose()
            await t.client.aclose()


def arun(server, ns, body):
    """Run ``body(make)`` in a fresh event loop; `make` builds tiers that are closed afterwards."""

    async def main():
        make = Tiers(server, ns)
        try:
            await body(make)
        finally:
            await make.aclose()

    asyncio.run(main())


async def eventually(pred, timeout=5.0):
    """Poll `pred` (a function, or a coroutine function) until it holds or `timeout` passes."""
    end = time.monotonic() + timeout
    while True:
        ok = pred()
        if asyncio.iscoroutine(ok):
            ok = await ok
        if ok or time.monotonic() > end:
            return ok
        await asyncio.sleep(0.002)


async def settled_set(writer, key, value, readers=None, **kwargs):
    """Write through `writer`, then wait until every reader (default: the writer) got its notice.

    A copy a reader filled before the notice of the write it read arrived is dropped by
    that notice (a notice cannot tell that write from a newer one): tests that need a local
    copy to stay wait the notice out first.
    """
    readers = [writer] if readers is None else readers
    before = [r.stats().invalidations for r in readers]
    await writer.set(key, value, **kwargs)
    for r, n in zip(readers, before):
        assert await eventually(lambda: r.stats().invalidations > n), "notice of the write never arrived"


async def fill_locally(t, key, value):
    """Read `key` until its copy sits in the local tier."""

    async def filled():
        return await t.get(key) == value and key in t.local

    assert await eventually(filled), f"{key!r} never filled the local tier"


class NoNetwork:
    """Stands in for the client: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the client was used ({name}) on a local hit")


# --- the basic operations -------------------------------------------------------------


def test_get_set_delete(redis_server, ns):
    async def body(make):
        t = await make()
        raw = redis_server.client()
        assert await t.get("missing") is None
        assert await t.get("missing", 7) == 7
        await t.set("a", {"x": [1, 2, (3, 4)]})
        await t.set(("tuple", 1), b"bytes", ttl=30)
        assert await t.get("a") == {"x": [1, 2, (3, 4)]}
        assert await t.get(("tuple", 1)) == b"bytes"
        assert 0 < raw.pttl(t._name(("tuple", 1))) <= 30_000
        assert raw.pttl(t._name("a")) == -1
        await t.set(1, "one")
        assert await t.get(1.0) == "one" and await t.get(True) == "one"  # equal keys: one key
        assert await t.delete("a") is True
        assert await t.delete("a") is False
        assert await t.get("a") is None and raw.exists(t._name("a")) == 0
        with pytest.raises(ValueError):
            await t.set("x", 1, ttl=0)
        with pytest.raises(TypeError):
            await t.set("x", object())  # the serializer cannot represent it
        # The sync mapping protocol would block the loop: refused, with a pointer to the API.
        with pytest.raises(TypeError, match="await"):
            t["a"]
        with pytest.raises(TypeError, match="await"):
            "a" in t  # noqa: B015
        s = t.stats()
        assert s.sets == 3 and s.deletes == 2 and s.errors == 0 and s.live and s.circuit == "closed"

    arun(redis_server, ns, body)


def test_local_hit_needs_no_network(redis_server, ns):
    async def body(make):
        t = await make()
        await settled_set(t, "k", "v", ttl=60)
        await fill_locally(t, "k", "v")
        before = t.stats()
        client, t._client = t._client, NoNetwork()
        try:
            for _ in range(100):
                assert await t.get("k") == "v"
            assert await t.get_or_set("k", lambda: pytest.fail("computed on a hit")) == "v"
            assert await t.get_many(["k", "k"]) == ["v", "v"]
        finally:
            t._client = client
        s = t.stats()
        assert s.local_hits == before.local_hits + 103
        assert s.remote_hits == before.remote_hits

    arun(redis_server, ns, body)


def test_expired_local_copy_is_not_served(redis_server, ns):
    from kvcache._tiered import Expiring

    async def body(make):
        t = await make()
        await t.set("k", "v", ttl=5)
        t.local["k"] = Expiring("stale", time.monotonic() - 1)
        assert await t.get("k") == "v"

    arun(redis_server, ns, body)


# --- invalidation -----------------------------------------------------------------------


def test_invalidation_across_tiers(redis_server, ns):
    async def body(make):
        a, b = await make(), await make()
        await settled_set(a, "k", 1, [b])
        await fill_locally(b, "k", 1)
        await a.set("k", 2)
        assert await eventually(lambda: "k" not in b.local), "invalidation never arrived"
        assert await b.get("k") == 2
        await fill_locally(b, "k", 2)
        await a.delete("k")
        assert await eventually(lambda: "k" not in b.local)
        assert await b.get("k") is None
        # Writers that are not tiers are seen too: a raw SET, then FLUSHDB.
        await settled_set(a, "other", "x", [b])
        await fill_locally(b, "other", "x")
        raw = redis_server.client()
        raw.set(b._name("other"), Serializer().dumps("raw"))
        assert await eventually(lambda: "other" not in b.local)
        assert await b.get("other") == "raw"
        await fill_locally(b, "other", "raw")
        raw.flushdb()
        assert await eventually(lambda: len(b.local) == 0)
        assert await b.get("other") is None
        assert b.stats().invalidations >= 3

    arun(redis_server, ns, body)


def test_fill_racing_an_invalidation_is_not_stored(redis_server, ns):
    async def body(make):
        t = await make()
        await t.set("k", "v1")
        await eventually(lambda: "k" not in t.local)
        gate = asyncio.Event()
        real = t._client

        class Slow:
            # Holds the read's reply until a write of the key went through Redis.
            def __getattr__(self, name):
                return getattr(real, name)

            async def evalsha(self, *args):
                reply = await real.evalsha(*args)
                await gate.wait()
                return reply

        t._client = Slow()
        reader = asyncio.ensure_future(t.get("k"))
        await asyncio.sleep(0.05)
        t._client = real
        inv = t.stats().invalidations
        redis_server.client().set(t._name("k"), Serializer().dumps("v2"))
        assert await eventually(lambda: t.stats().invalidations > inv)
        gate.set()
        assert await reader == "v1"  # the read's own answer...
        assert "k" not in t.local  # ...is not kept: the notice of a newer write raced it
        assert await t.get("k") == "v2"

    arun(redis_server, ns, body)


def test_lost_stream_distrusts_then_clears_local(redis_server, ns):
    async def body(make):
        t = await make()
        await settled_set(t, "k", "old")
        await settled_set(t, "untouched", 1)
        await fill_locally(t, "k", "old")
        await fill_locally(t, "untouched", 1)
        raw = redis_server.client()
        raw.client_kill_filter(_type="pubsub")
        # A write while the stream may be down: its notice can be lost.
        raw.set(t._name("k"), Serializer().dumps("new"))
        assert await eventually(lambda: "untouched" not in t.local), "local tier not cleared"
        assert await t.wait_live(5)
        assert await t.get("k") == "new"

    arun(redis_server, ns, body)


CHILD_READER = r"""
import asyncio, sys, time, kvcache
from kvcache.redis import AsyncTieredCache
port, ns = int(sys.argv[1]), sys.argv[2]
async def main():
    async with AsyncTieredCache.from_url(f"redis://127.0.0.1:{port}", kvcache.LRUCache(maxsize=10), ns) as t:
        assert await t.wait_live(5)
        for _ in range(500):
            if await t.get("k") == "v1" and "k" in t.local:
                break
            await asyncio.sleep(0.01)
        print("ready" if "k" in t.local else "not filled", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        t0 = time.monotonic()
        while "k" in t.local and time.monotonic() - t0 < 5:
            await asyncio.sleep(0.001)
        print("seen" if "k" not in t.local else "missed", await t.get("k"), flush=True)
asyncio.run(main())
"""


def test_invalidation_across_processes(redis_server, ns):
    async def body(make):
        t = await make()
        await t.set("k", "v1")
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_READER, str(redis_server.port), ns],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
        )
        try:
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.strip() == "ready"
            await t.set("k", "v2")
            child.stdin.write("go\n")
            child.stdin.flush()
            line = await asyncio.to_thread(child.stdout.readline)
            assert line.split() == ["seen", "v2"]
        finally:
            child.kill()
            child.wait()

    arun(redis_server, ns, body)


# --- get_or_set: single flight --------------------------------------------------------------


def test_get_or_set_single_flight_across_tasks_and_tiers(redis_server, ns):
    async def body(make):
        a, b = await make(), await make()
        calls = []
        gate = asyncio.Event()

        async def compute():
            calls.append(1)
            await gate.wait()
            return "value"

        tasks = [asyncio.ensure_future((a if i % 2 else b).get_or_set("k", compute)) for i in range(40)]
        await asyncio.sleep(0.2)
        gate.set()
        assert await asyncio.gather(*tasks) == ["value"] * 40
        assert calls == [1]
        # A sync compute works too; the lease is released after it.
        assert await a.get_or_set("s", lambda: "sync") == "sync"
        assert redis_server.client().keys(f"{ns}:l:*") == []

    arun(redis_server, ns, body)


def test_get_or_set_errors_and_cancellation(redis_server, ns):
    async def body(make):
        t = await make()
        raw = redis_server.client()

        async def boom():
            await asyncio.sleep(0.05)
            raise RuntimeError("compute failed")

        # Every task of the flight sees the compute's error; nothing stays locked.
        results = await asyncio.gather(*[t.get_or_set("e", boom) for _ in range(5)], return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        assert raw.keys(f"{ns}:l:*") == []
        assert await t.get_or_set("e", lambda: "fine") == "fine"

        # A cancelled leader hands the flight over: a waiting task computes instead.
        started = asyncio.Event()

        async def slow():
            started.set()
            await asyncio.sleep(30)

        leader = asyncio.ensure_future(t.get_or_set("c", slow))
        await started.wait()
        follower = asyncio.ensure_future(t.get_or_set("c", lambda: "follower's"))
        await asyncio.sleep(0.05)
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        assert await follower == "follower's"
        assert raw.keys(f"{ns}:l:*") == []

    arun(redis_server, ns, body)


def test_get_or_set_lease_renewed_and_bounded_wait(redis_server, ns):
    async def body(make):
        t = await make(lock_lease=0.6, lock_wait=0.3)
        raw = redis_server.client()
        lname = t._lock_name(t._name("k"))
        seen = []

        async def slow():
            await asyncio.sleep(1.0)  # > lease: only renewal keeps the lock
            seen.append(raw.pttl(lname))
            return 1

        assert await t.get_or_set("k", slow) == 1
        assert seen[0] > 0, "lease was not renewed while computing"
        assert raw.exists(lname) == 0
        # Someone else holds the lock and never finishes: we compute after lock_wait.
        raw.set(t._lock_name(t._name("w")), b"other", px=60_000)
        assert await t.get_or_set("w", lambda: "mine") == "mine"
        assert await t.get("w") == "mine"

    arun(redis_server, ns, body)


CHILD_HOLDER = r"""
import asyncio, sys, kvcache
from kvcache.redis import AsyncTieredCache
port, ns = int(sys.argv[1]), sys.argv[2]
async def main():
    url = f"redis://127.0.0.1:{port}"
    async with AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=10), ns, lock_lease=1.0) as t:
        async def compute():
            print("computing", flush=True)
            await asyncio.sleep(float(sys.argv[3]))
            return "child's"
        print(await t.get_or_set("k", compute), flush=True)
asyncio.run(main())
"""


def test_get_or_set_single_flight_across_processes(redis_server, ns):
    async def body(make):
        t = await make(lock_wait=20)
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_HOLDER, str(redis_server.port), ns, "0.5"],
            stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
        )
        try:
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "computing"
            calls = []
            got = await asyncio.gather(*[t.get_or_set("k", lambda: calls.append(1) or "mine") for _ in range(5)])
            assert got == ["child's"] * 5 and calls == []
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "child's"
        finally:
            child.kill()
            child.wait()

    arun(redis_server, ns, body)


def test_lock_holder_killed_another_computes_after_lease(redis_server, ns):
    async def body(make):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD_HOLDER, str(redis_server.port), ns, "600"],
            stdout=subprocess.PIPE, text=True, env=child_env(), cwd=CHILD_CWD,
        )
        try:
            assert (await asyncio.to_thread(child.stdout.readline)).strip() == "computing"
            t = await make(lock_wait=30)
            raw = redis_server.client()
            await asyncio.sleep(1.2)  # past one lease: only the child's renewals keep it
            assert raw.exists(t._lock_name(t._name("k"))) == 1
            child.kill()
            child.wait()
            calls = []
            assert await t.get_or_set("k", lambda: calls.append(1) or "mine") == "mine"
            assert calls == [1]
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()

    arun(redis_server, ns, body)


# --- batches ------------------------------------------------------------------------------


def test_batches(redis_server, ns, monkeypatch):
    # Small chunks: a batch spans several Lua calls (1,000 keys each by default).
    monkeypatch.setattr(kvcache.redis, "_CHUNK", 7)

    async def body(make):
        a, b = await make(), await make()
        keys = [f"k{i}" for i in range(300)]
        await a.set_many(keys, range(300))
        raw = redis_server.client()
        assert raw.get(a._name("k7")) is not None
        got = await b.get_many(keys + ["absent"], default="d")  # cold local tier: one round trip
        assert got == list(range(300)) + ["d"]
        assert b.stats().remote_hits == 300 and b.stats().misses == 1
        # Once the writes' notices went by, fills stick and the next batch is served locally.

        async def all_local():
            await b.get_many(keys[:10])
            return all(k in b.local for k in keys[:10])

        assert await eventually(all_local)
        before = b.stats()
        assert await b.get_many(keys[:10]) == list(range(10))
        after = b.stats()
        assert after.local_hits == before.local_hits + 10 and after.remote_hits == before.remote_hits
        # Deleting reaches Redis and drops every tier's copies.
        assert await a.delete_many(keys[:150] + ["absent"]) == 150
        assert await eventually(lambda: all(k not in b.local for k in keys[:150]))
        assert await b.get_many(keys[:150]) == [None] * 150
        assert await b.get_many(keys[150:]) == list(range(150, 300))
        assert await b.get_many([]) == []
        with pytest.raises(ValueError):
            await a.set_many(["x", "y"], [1])
        with pytest.raises(TypeError):
            await a.set_many(["x", "y"], [1, object()])  # refused before anything is sent
        assert raw.exists(a._name("x")) == 0
        with pytest.raises(TypeError):
            await a.get_many("abc")  # a str is one key, not a batch

    arun(redis_server, ns, body)


# --- faults -------------------------------------------------------------------------------


def test_fail_open_when_killed_then_recovers(own_redis_server, ns):
    async def body(make):
        t = await make(failure_threshold=2, backoff=0.05, max_backoff=0.2)
        expected, wrong, errors = {}, [], []
        stop = asyncio.Event()

        async def workload():
            i = 0
            try:
                while not stop.is_set():
                    k = f"k{i % 20}"
                    if i % 3 == 0:
                        await t.set(k, i)
                        expected[k] = i
                    elif i % 3 == 1:
                        v = await t.get(k)
                        if v is not None and v != expected.get(k):
                            wrong.append((k, v, expected.get(k)))
                    else:
                        got = await t.get_many([k, f"k{(i + 1) % 20}"])
                        if got[0] is not None and got[0] != expected.get(k):
                            wrong.append((k, got[0], expected.get(k)))
                    i += 1
                    await asyncio.sleep(0)
            except Exception as exc:  # the point of fail-open: nothing may escape
                errors.append(exc)

        task = asyncio.ensure_future(workload())
        await asyncio.sleep(0.2)
        own_redis_server.kill()
        await asyncio.sleep(0.5)
        s = t.stats()
        assert s.errors > 0 and s.circuit in ("open", "half-open") and not s.live
        own_redis_server.start()  # same port
        assert await t.wait_live(10), "invalidation stream did not come back"
        stop.set()
        await task
        assert errors == [] and wrong == []
        raw = own_redis_server.client()

        async def written():
            await t.set("after", 1)
            return raw.get(t._name("after")) is not None

        assert await eventually(written)
        assert t.stats().circuit == "closed"

    arun(own_redis_server, ns, body)


def test_hung_server_fails_open_then_recovers(own_redis_server, ns):
    async def body(make):
        t = await make(timeout=0.25, failure_threshold=3, backoff=0.05, max_backoff=0.2)
        await settled_set(t, "k", "v", ttl=60)
        await fill_locally(t, "k", "v")
        own_redis_server.proc.send_signal(signal.SIGSTOP)
        try:
            ops = 0
            end = time.monotonic() + 1.5
            while time.monotonic() < end:
                await t.set(f"w{ops % 5}", ops)  # fails open; never raises
                assert await t.get("k") == "v"  # local copy (trusted, then the fail-open fallback)
                ops += 1
            s = t.stats()
            assert s.errors >= 1
            # The breaker keeps most calls off the hung server: they fail open without waiting
            # a socket timeout each.
            assert ops > 3 * s.errors
        finally:
            own_redis_server.proc.send_signal(signal.SIGCONT)
        assert await t.wait_live(10)
        raw = own_redis_server.client()

        async def written():
            await t.set("after", 2)
            return raw.get(t._name("after")) is not None

        assert await eventually(written)

    arun(own_redis_server, ns, body)


def test_strict_mode_raises(own_redis_server, ns):
    async def body(make):
        t = await make(strict=True, failure_threshold=1, backoff=10)
        await t.set("k", 1)
        own_redis_server.kill()
        with pytest.raises(redis.exceptions.ConnectionError):
            await t.set("k", 2)
        with pytest.raises(CircuitOpenError):  # breaker open: no new connection attempt
            await t.get("k")
        with pytest.raises(CircuitOpenError):
            await t.get_many(["k", "j"])
        assert t.stats().errors >= 1

    arun(own_redis_server, ns, body)


# --- lifecycle ------------------------------------------------------------------------------


def test_from_url_async_with_and_aclose(redis_server, ns):
    async def main():
        url = f"redis://127.0.0.1:{redis_server.port}/0"
        async with AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=10), ns, ttl=5) as t:
            assert await t.wait_live(5)
            await t.set("k", 1)
            assert await t.get("k") == 1
            assert 0 < redis_server.client().pttl(t._name("k")) <= 5000
            tasks = list(t._tasks)
        assert all(task.done() for task in tasks) and not t.live
        # Still usable after closing, without the local tier's help.
        assert await t.get("k") == 1

    asyncio.run(main())


def test_bad_arguments(redis_server, ns):
    async def main():
        client = aclient(redis_server)
        try:
            with pytest.raises(TypeError):
                AsyncTieredCache(kvcache.LRUCache(maxsize=2), client, "")
            with pytest.raises(ValueError):
                AsyncTieredCache(kvcache.LRUCache(maxsize=2), client, ns, ttl=-1)
            with pytest.raises(ValueError):
                AsyncTieredCache(
                    kvcache.LRUCache(maxsize=2), redis.asyncio.Redis(port=redis_server.port, decode_responses=True), ns
                )
            with pytest.raises(TypeError, match="redis.asyncio"):
                AsyncTieredCache(kvcache.LRUCache(maxsize=2), redis_server.client(), ns)
        finally:
            await client.aclose()

    asyncio.run(main())


# --- rejections and refused streams (what the sync tier's tests check, on the async tier) ----


def test_rejected_writes_leave_no_local_copy_and_keep_the_breaker_closed(own_redis_server, ns):
    async def body(make):
        a, b = await make(), await make()
        await settled_set(a, "k", "old", [a, b])
        await fill_locally(b, "k", "old")
        raw = own_redis_server.client()
        raw.config_set("maxmemory-policy", "noeviction")
        raw.config_set("maxmemory", 1)
        try:
            for i in range(3):
                await a.set("k", f"new{i}")  # OOM: rejected, and nothing reaches the caller
            await a.set_many(["k", "j"], ["many", "many"])  # one script call: one rejection
            s = a.stats()
            assert s.rejections == 4 and s.errors == 0 and s.circuit == "closed"
            # Everyone, the writer too, reads what Redis holds.
            assert await a.get("k") == "old" and await b.get("k") == "old"
            assert await a.get_many(["k", "j"]) == ["old", None]
            strict = await make(strict=True)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                await strict.set("k", "strict")
            assert await strict.get("k") == "old"
        finally:
            raw.config_set("maxmemory", 0)

    arun(own_redis_server, ns, body)


def test_refused_stream_is_loud(redis_server, ns):
    ns = ns.replace("[", "").replace("]", "")  # plain: the ACL's ~ns:* is a glob
    raw = redis_server.client()
    user = f"au{next(_ns_counter)}"
    raw.execute_command(
        "ACL", "SETUSER", user, "reset", "on", ">pw", f"~{ns}:*", "&__redis__:invalidate",
        *"+get +set +del +unlink +scan +evalsha +eval +script|load +pttl +mget +client|id +subscribe +ping".split(),
    )  # no +client|tracking

    async def main():
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        def client():
            return redis.asyncio.Redis(port=redis_server.port, username=user, password="pw",
                                       socket_timeout=1.0, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))

        with pytest.warns(RuntimeWarning, match="client.tracking"):
            t = AsyncTieredCache(kvcache.LRUCache(maxsize=10), client(), ns)
            assert not await t.wait_live(1)
        try:
            assert "+client|tracking" in t.stats().stream_error
            # The tier still works, reading Redis every time.
            await t.set("k", [1, 2])
            assert await t.get("k") == [1, 2] and await t.get_many(["k", "x"]) == [[1, 2], None]
            assert await t.get_or_set("g", lambda: 3) == 3
            assert t.stats().errors == 0 and t.stats().rejections == 0 and t.stats().local_hits == 0
        finally:
            await t.aclose()
            await t.client.aclose()
        strict = AsyncTieredCache(kvcache.LRUCache(maxsize=10), client(), ns, strict=True)
        try:
            with pytest.raises(StreamRefusedError, match=r"client\|tracking"):
                await strict.wait_live(5)
        finally:
            await strict.aclose()
            await strict.client.aclose()

    asyncio.run(main())


def test_cached_decorator(redis_server, ns):
    async def body(make):
        a, b = await make(), await make()
        calls = []

        async def fetch_user(user_id, *, full=False):
            calls.append((user_id, full))
            await asyncio.sleep(0.05)
            return {"id": user_id, "full": full}

        fa, fb = a.cached(ttl=60)(fetch_user), b.cached(ttl=60)(fetch_user)
        assert fa.__name__ == "fetch_user"
        got = await asyncio.gather(*[(fa if i % 2 else fb)(7) for i in range(10)])
        assert got == [{"id": 7, "full": False}] * 10 and calls == [(7, False)]  # one call
        assert await fa(7, full=True) == {"id": 7, "full": True} and len(calls) == 2
        assert await fb(7, full=True) == {"id": 7, "full": True} and len(calls) == 2  # from Redis
        assert 0 < redis_server.client().pttl(a._name((f"{__name__}.{fetch_user.__qualname__}", (7,)))) <= 60_000

        @a.cached(key=lambda request: request["path"])
        async def page(request):
            calls.append(request["path"])
            return request["path"].upper()

        assert await page({"path": "/x", "headers": object()}) == "/X"
        assert await page({"path": "/x", "headers": object()}) == "/X" and calls[-1] == "/x" and len(calls) == 3
        with pytest.raises(TypeError, match="coroutine"):
            a.cached()(lambda: 1)

    arun(redis_server, ns, body)


def test_tier_made_before_the_loop_runs(redis_server, ns):
    # As in a web app: the tier is made at import time, used later in the server's loop.
    t = AsyncTieredCache.from_url(f"redis://127.0.0.1:{redis_server.port}", kvcache.LRUCache(maxsize=10), ns)
    assert t._tasks is None and not t.live  # nothing runs before a loop does

    async def main():
        async with t:
            assert await t.wait_live(5)
            await t.set("k", "v")
            assert await t.get("k") == "v"

    asyncio.run(main())
    assert not t.live


# --- Redis Cluster ------------------------------------------------------------------------


def test_cluster(redis_cluster, ns):
    url = f"redis://127.0.0.1:{redis_cluster.nodes[0].port}"

    async def main():
        local = kvcache.LRUCache
        async with AsyncTieredCache.from_url(url, local(maxsize=1000), ns, cluster=True) as a, \
                AsyncTieredCache.from_url(url, local(maxsize=1000), ns, cluster=True) as b:
            assert await a.wait_live(10) and await b.wait_live(10)
            assert len(a._pools) == 3  # one invalidation stream per primary
            keys = [f"k{i}" for i in range(200)]  # spread over the three masters
            await a.set_many(keys, range(200))
            assert await b.get_many(keys + ["absent"]) == list(range(200)) + [None]
            for k in ("k1", "k2", "k3"):
                await settled_set(a, k, "v", [b])
                await fill_locally(b, k, "v")
                await a.set(k, "w")
                assert await eventually(lambda: k not in b.local), "invalidation never arrived"
                assert await b.get(k) == "w"
            calls = []
            got = await asyncio.gather(*[(a if i % 2 else b).get_or_set("g", lambda: calls.append(1) or 7)
                                         for i in range(10)])
            assert got == [7] * 10 and calls == [1]
            assert await a.delete_many(keys[:100]) == 100
            assert await b.get_many(keys[:100]) == [None] * 100
            s = a.stats()
            assert s.errors == 0 and s.rejections == 0 and s.circuit == "closed"

    asyncio.run(main())


def test_cluster_dead_master_fails_open_only_its_slots(tmp_path, ns):
    from tests.redis_fixtures import RedisClusterProcs, require_redis_binaries

    require_redis_binaries(cluster=True)
    c = RedisClusterProcs(str(tmp_path), extra=["--cluster-require-full-coverage", "no"]).start()

    async def main():
        url = f"redis://127.0.0.1:{c.nodes[0].port}"
        async with AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=1000), ns, cluster=True,
                                             failure_threshold=1, backoff=0.05, max_backoff=0.2) as t:
            assert await t.wait_live(10)
            keys = [f"key{i}" for i in range(60)]
            dead = c.nodes[1]
            node_of = {k: t._health.node_name(t._name(k)) for k in keys}
            on_dead = {k for k in keys if node_of[k] == f"127.0.0.1:{dead.port}"}
            assert 0 < len(on_dead) < len(keys)
            dead.kill()
            served = {"healthy": 0, "dead": 0}
            for rnd in range(2):
                for k in keys:
                    before = t.stats()
                    await t.set(k, rnd)  # never raises
                    if t.stats().sets == before.sets + 1:
                        served["dead" if k in on_dead else "healthy"] += 1
                got = await t.get_many(keys)
                assert [got[i] for i, k in enumerate(keys) if k not in on_dead] == [rnd] * (len(keys) - len(on_dead))
            assert served == {"healthy": 2 * (len(keys) - len(on_dead)), "dead": 0}
            assert t.stats().errors >= 1

    try:
        asyncio.run(main())
    finally:
        c.stop()


def test_fault_run_with_asyncio_workers(own_redis_server):
    """bench/redis_faults.py, short, one sync and one asyncio process: kill -9, restart, SIGSTOP."""
    import json

    del own_redis_server  # only for the binary check: the script starts its own server
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "redis_faults.py")
    out = subprocess.run(
        [sys.executable, script, "--workers", "2", "--asyncio", "1", "--phase", "0.5", "--invalidations", "50",
         "--json"],
        capture_output=True, text=True, env=child_env(), timeout=120,
    )
    assert out.returncode in (0, 1), out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    assert figures["asyncio_workers"] == 1
    assert figures["exceptions"] == 0, figures["exception_samples"]
    assert figures["reads_disagreeing_with_redis"] == 0 and figures["all_live"]
    assert figures["served_while_down"] > 0 and figures["served_while_hung"] > 0
    assert out.returncode == 0


def test_cluster_reads_from_replicas(redis_cluster_with_replicas, ns):
    """A client that balances reads over replicas: the asyncio tier reads from them (one pipeline
    to all nodes for a batch) and listens to them, so every copy ends up the last write."""
    from tests.test_redis_cluster import _script_calls

    cluster = redis_cluster_with_replicas
    roles = {n.port: n.client().info("replication")["role"] for n in cluster.nodes}
    keys = [f"r{i}" for i in range(200)]

    async def main():
        async with cluster_pair(cluster, ns, replica_reads=True) as (w, r):
            assert len(w._pools) == 3 and len(r._pools) == 6
            for round_ in range(3):
                await w.set_many(keys, [(round_, i) for i in range(200)])
                for i, k in enumerate(keys):
                    assert await eventually(lambda: _eq(r.get(k), (round_, i))), (round_, k)
                r.local.clear()
                assert await r.get_many(keys) == [(round_, i) for i in range(200)]
            before = {n.port: _script_calls(n) for n in cluster.nodes}
            r.local.clear()
            assert [await r.get(k) for k in keys] == [(2, i) for i in range(200)]
            r.local.clear()
            assert await r.get_many(keys) == [(2, i) for i in range(200)]
            spread = {n.port: _script_calls(n) - before[n.port] for n in cluster.nodes}
            assert sorted(v for p, v in spread.items() if roles[p] == "master") == [0, 0, 0]
            replica_calls = [v for p, v in spread.items() if roles[p] == "slave"]
            assert len(replica_calls) == 3 and min(replica_calls) > 0.5 * max(replica_calls)
            await asyncio.sleep(0.2)  # every notice in
            assert [await r.get(k) for k in keys] == [(2, i) for i in range(200)]
            assert r.stats().errors == 0

    asyncio.run(main())


async def _eq(awaitable, expected):
    return (await awaitable) == expected


@contextlib.asynccontextmanager
async def cluster_pair(cluster, ns, replica_reads=False):
    """Yield (writer, reader): two tiers on `cluster` (with `replica_reads`, the reader's client
    reads replicas only), once every stream of both is up (replicas' too)."""
    from redis.cluster import LoadBalancingStrategy

    url = f"redis://127.0.0.1:{cluster.nodes[0].port}"
    balanced = {"load_balancing_strategy": LoadBalancingStrategy.ROUND_ROBIN_REPLICAS} if replica_reads else None
    async with AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=1000), ns, cluster=True) as w, \
            AsyncTieredCache.from_url(url, kvcache.LRUCache(maxsize=1000), ns, cluster=True,
                                      timeout=1.0, client_kwargs=balanced) as r:
        assert await w.wait_live(10) and await r.wait_live(10)
        assert await eventually(lambda: all(r._listeners_up), 10)
        yield w, r


def test_cluster_replica_gone_and_hung(own_cluster_with_replicas, ns):
    """The asyncio tier's batch to a dead or hung replica: its primary answers, no read fails."""
    c = own_cluster_with_replicas
    keys = [f"g{i}" for i in range(200)]

    async def main():
        async with cluster_pair(c, ns, replica_reads=True) as (w, r):
            await w.set_many(keys, range(200))
            assert await r.get_many(keys) == list(range(200))
            replica = next(n for n in c.nodes if n.client().info("replication")["role"] == "slave")
            name = f"127.0.0.1:{replica.port}"
            os.kill(replica.proc.pid, signal.SIGSTOP)  # hung: the first read sent to it times out
            try:
                await w.set_many(keys, [(1, i) for i in range(200)])
                r.local.clear()
                assert await r.get_many(keys) == [(1, i) for i in range(200)]
                assert r._health.node(name).state != "closed"
                r.local.clear()
                assert [await r.get(k) for k in keys] == [(1, i) for i in range(200)]
            finally:
                os.kill(replica.proc.pid, signal.SIGCONT)
            # Its stream back (it may have gone down while hung), copies in the local tier; then killed.
            assert await eventually(lambda: all(r._listeners_up), 10)
            assert await r.get_many(keys) == [(1, i) for i in range(200)] and len(r.local) == 200
            replica.kill()
            assert await eventually(lambda: len(r.local) == 0)  # its copies could miss its notices
            await w.set_many(keys, [(2, i) for i in range(200)])
            assert await eventually(lambda: _eq(r.get_many(keys), [(2, i) for i in range(200)]))
            assert [await r.get(k) for k in keys] == [(2, i) for i in range(200)]
            assert r.stats().errors == 0 and r.stats().live

    asyncio.run(main())


def test_cluster_failover_listeners_follow_the_promoted_replica(own_cluster_with_replicas, ns):
    """As tests/test_redis_cluster.py's failover test, for the asyncio tier."""
    c = own_cluster_with_replicas
    keys = [f"f{i}" for i in range(200)]

    async def main():
        async with cluster_pair(c, ns) as (w, r):
            await w.set_many(keys, range(200))
            victim = next(n for n in c.nodes[1:] if n.client().info("replication")["role"] == "master")
            gone = f"127.0.0.1:{victim.port}"
            on_victim = [k for k in keys if r._health.node_name(r._name(k)) == gone]
            assert on_victim
            victim.kill()

            async def recovered():
                await w.set_many(keys, range(200))
                await r.get_many(keys)
                return (w.stats().live and r.stats().live
                        and all(t._health.node_name(t._name(on_victim[0])) not in ("?", gone) for t in (w, r)))

            assert await eventually(recovered, 40), "the tier did not follow the failover"
            for round_ in range(3):
                before = w.stats().sets
                await w.set_many(keys, [(round_, i) for i in range(200)])
                assert w.stats().sets == before + 200
                for i, k in enumerate(keys):
                    assert await eventually(lambda: _eq(r.get(k), (round_, i))), (round_, k)
            await asyncio.sleep(0.2)
            hits = r.stats().local_hits
            assert [await r.get(k) for k in keys] == [(2, i) for i in range(200)]
            assert r.stats().local_hits == hits + 200

    asyncio.run(main())


def test_cluster_primary_added_later_is_listened_to(tmp_path, ns):
    """As tests/test_redis_cluster.py's resharding test, for the asyncio tier: a primary added to
    the cluster gets a stream, and the copies of its keys stay fresh."""
    from tests.redis_fixtures import RedisClusterProcs, require_redis_binaries

    require_redis_binaries(cluster=True)
    c = RedisClusterProcs(str(tmp_path / "c")).start()
    keys = [f"n{i}" for i in range(200)]

    async def main():
        async with cluster_pair(c, ns) as (w, r):
            await w.set_many(keys, range(200))
            assert await r.get_many(keys) == list(range(200))
            new = await asyncio.to_thread(c.add_primary, str(tmp_path / "new"), 2000)
            moved = f"127.0.0.1:{new.port}"

            async def learned():
                for t in (w, r):
                    t.local.clear()
                    await t.get_many(keys)
                return r.stats().live and moved in r._watched and len(r._pool_nodes) == 4

            assert await eventually(learned, 20)
            on_new = [k for k in keys if r._health.node_name(r._name(k)) == moved]
            assert on_new
            for round_ in range(3):
                await w.set_many(keys, [(round_, i) for i in range(200)])
                for i, k in enumerate(keys):
                    assert await eventually(lambda: _eq(r.get(k), (round_, i))), (round_, k)
                for k in on_new:
                    await w.set(k, ("single", round_))
                    assert await eventually(lambda: _eq(r.get(k), ("single", round_)))
            assert all(k in r.local for k in keys)

    try:
        asyncio.run(main())
    finally:
        c.stop()
