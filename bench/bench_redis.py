"""Redis tier benchmarks against a real local redis-server started here.

Groups (compare within a group, same run):
  redis-hit          one lookup: plain LRUCache hit, TieredCache local-tier hit, redis-py GET
  redis-hit-get      the same through .get(key)
  redis-hit-in       the same through `key in mapping`
  redis-zipf         a Zipf(1.2) read-mostly workload over 20k keys (99% reads, cache-aside
                     fills, 1% writes): TieredCache with a local tier of 10% / 100% of the
                     keys vs redis-py alone
  redis-invalidation a write in one tier until the other tier's local copy is gone
  redis-batch        1,000 keys with a cold local tier: TieredCache.get_many vs one raw
                     redis-py MGET of the same names vs a loop of TieredCache.get

Run: PYTHONPATH=$PWD python -m pytest bench/bench_redis.py --benchmark-only
Goals (issue 7): local hit <= 2x an LRUCache hit and >= 50x faster than GET;
Zipf throughput of TieredCache >= 10x redis-py alone.  Issue 16: get_many of 1,000 keys
with a cold local tier <= 2x one raw MGET and >= 10x faster than a loop of get.

The local-hit ratio is a few nanoseconds on a shared machine: for a steadier figure run
this file as a script (PYTHONPATH=$PWD python bench/bench_redis.py [--rounds N]), which
times the hit loops interleaved, each round in a new random order, on process CPU time,
and prints the TieredCache / LRUCache ratio of every round and their median.
`python bench/bench_redis.py --batch` does the same for the redis-batch group (wall time:
the server's share is the point), printing get_many / MGET and loop / get_many.
"""

import argparse
import contextlib
import os
import random
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import numpy as np
import pytest

pytest.importorskip("redis")
pytest.importorskip("msgpack")

import kvcache  # noqa: E402
from kvcache.redis import TieredCache  # noqa: E402
from kvcache.serialize import Serializer, encode_key, encode_keys  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
MISSING_REDIS = "redis-server not found; install Redis (apt-get install redis-server, brew install redis)"


def require_redis_binaries():
    """Skip the benchmark when redis-server is not installed."""
    if REDIS_SERVER is None:
        pytest.skip(MISSING_REDIS)


class RedisServer:
    """One throwaway redis-server on a free loopback port, no persistence.

    The benchmarks keep their own launcher: bench/ imports nothing from tests/.
    """

    def __init__(self, directory, extra=()):
        self.directory = directory
        self.extra = list(extra)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = None

    def start(self):
        log = os.path.join(self.directory, "redis.log")
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.directory, "--logfile", log, *self.extra],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                with open(log) as f:
                    raise RuntimeError(f"redis-server exited: {f.read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def client(self):
        import redis

        # no hidden retries, as in the tests: a failure shows instead of a slow run
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1.0,
                           socket_connect_timeout=0.5,
                           retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


N_HIT_KEYS = 1000
UNIVERSE = 20_000
OPS = 20_000
LOCAL_SIZE = 2_000


@pytest.fixture(scope="module")
def server():
    require_redis_binaries()
    with tempfile.TemporaryDirectory(prefix="kvcache-bench-redis-") as d:
        s = RedisServer(d).start()
        try:
            yield s
        finally:
            s.stop()


@contextlib.contextmanager
def _hit_state(server):
    """Yield (keys, Redis names, a filled LRUCache, a TieredCache whose local tier holds every key, a client)."""
    keys = [f"key:{i}" for i in range(N_HIT_KEYS)]
    lru = kvcache.LRUCache(maxsize=2 * N_HIT_KEYS)
    tier = TieredCache(kvcache.LRUCache(maxsize=2 * N_HIT_KEYS), server.client(), "bench-hit")
    assert tier.wait_live(5)
    client = server.client()
    names = [tier.namespace + b":v:" + encode_key(k) for k in keys]
    for k in keys:
        lru[k] = k
        tier[k] = k
    # Let the notices of our own writes pass, then fill the local tier.
    deadline = time.monotonic() + 5
    while tier.stats().invalidations < N_HIT_KEYS and time.monotonic() < deadline:
        time.sleep(0.01)
    for k in keys:
        tier[k]
    assert all(k in tier.local for k in keys)
    try:
        yield keys, names, lru, tier, client
    finally:
        tier.close()


@pytest.fixture(scope="module")
def hit_setup(server):
    with _hit_state(server) as state:
        yield state


def _loop_getitem(mapping, keys):
    n = 0
    for k in keys:
        n += mapping[k] is not None
    return n


def _loop_get(mapping, keys):
    n = 0
    for k in keys:
        n += mapping.get(k) is not None
    return n


def _loop_in(mapping, keys):
    n = 0
    for k in keys:
        n += k in mapping
    return n


@pytest.mark.benchmark(group="redis-hit")
def test_hit_lrucache(benchmark, hit_setup):
    keys, _, lru, _, _ = hit_setup
    assert benchmark(_loop_getitem, lru, keys) == len(keys)


@pytest.mark.benchmark(group="redis-hit")
def test_hit_tiered_local(benchmark, hit_setup):
    keys, _, _, tier, _ = hit_setup
    before = tier.stats().remote_hits
    assert benchmark(_loop_getitem, tier, keys) == len(keys)
    assert tier.stats().remote_hits == before  # every lookup stayed local


@pytest.mark.benchmark(group="redis-hit-get")
def test_hit_get_lrucache(benchmark, hit_setup):
    keys, _, lru, _, _ = hit_setup
    assert benchmark(_loop_get, lru, keys) == len(keys)


@pytest.mark.benchmark(group="redis-hit-get")
def test_hit_get_tiered_local(benchmark, hit_setup):
    keys, _, _, tier, _ = hit_setup
    before = tier.stats().remote_hits
    assert benchmark(_loop_get, tier, keys) == len(keys)
    assert tier.stats().remote_hits == before


@pytest.mark.benchmark(group="redis-hit-in")
def test_hit_in_lrucache(benchmark, hit_setup):
    keys, _, lru, _, _ = hit_setup
    assert benchmark(_loop_in, lru, keys) == len(keys)


@pytest.mark.benchmark(group="redis-hit-in")
def test_hit_in_tiered_local(benchmark, hit_setup):
    keys, _, _, tier, _ = hit_setup
    before = tier.stats().remote_hits
    assert benchmark(_loop_in, tier, keys) == len(keys)
    assert tier.stats().remote_hits == before


@pytest.mark.benchmark(group="redis-hit")
def test_hit_redis_get(benchmark, hit_setup):
    _, names, _, _, client = hit_setup
    names = names[:100]  # a GET is ~1000x slower: fewer per round
    ser = Serializer()

    def run():
        n = 0
        for name in names:
            n += ser.loads(client.get(name)) is not None
        return n

    assert benchmark(run) == len(names)


def _zipf_ops(seed=1):
    rng = np.random.default_rng(seed)
    keys = (rng.zipf(1.2, OPS) - 1) % UNIVERSE
    writes = rng.random(OPS) < 0.01
    return [int(k) for k in keys], writes.tolist()


@pytest.fixture(scope="module")
def zipf():
    return _zipf_ops()


@pytest.mark.benchmark(group="redis-zipf")
@pytest.mark.parametrize("local_size", [LOCAL_SIZE, UNIVERSE], ids=["local10pct", "local100pct"])
def test_zipf_tiered(benchmark, server, zipf, local_size):
    keys, writes = zipf
    tier = TieredCache(kvcache.LRUCache(maxsize=local_size), server.client(), f"bench-zipf-tier{local_size}")
    assert tier.wait_live(5)

    def run():
        found = 0
        for k, w in zip(keys, writes):
            if w:
                tier[k] = k * 2
                continue
            v = tier.get(k)
            if v is None:
                tier[k] = k * 2
            else:
                found += 1
                assert v == k * 2
        return found

    try:
        benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
        s = tier.stats()
        benchmark.extra_info.update(local_hits=s.local_hits, remote_hits=s.remote_hits, misses=s.misses)
    finally:
        tier.close()


@pytest.mark.benchmark(group="redis-zipf")
def test_zipf_redis_py(benchmark, server, zipf):
    keys, writes = zipf
    client = server.client()
    ser = Serializer()
    prefix = b"bench-zipf-plain:"

    def run():
        found = 0
        for k, w in zip(keys, writes):
            name = prefix + str(k).encode()
            if w:
                client.set(name, ser.dumps(k * 2))
                continue
            raw = client.get(name)
            if raw is None:
                client.set(name, ser.dumps(k * 2))
            else:
                found += 1
                assert ser.loads(raw) == k * 2
        return found

    benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.benchmark(group="redis-invalidation")
def test_invalidation_latency(benchmark, server):
    a = TieredCache(kvcache.LRUCache(maxsize=10), server.client(), "bench-inval")
    b = TieredCache(kvcache.LRUCache(maxsize=10), server.client(), "bench-inval")
    assert a.wait_live(5) and b.wait_live(5)
    counter = iter(range(10**9))

    def setup():
        n = b.stats().invalidations
        a["k"] = next(counter)
        end = time.monotonic() + 2
        while b.stats().invalidations == n and time.monotonic() < end:
            pass
        b["k"]
        assert "k" in b.local
        return (), {}

    def write_until_seen():
        a["k"] = -1
        end = time.monotonic() + 2
        while "k" in b.local:
            if time.monotonic() > end:
                raise AssertionError("invalidation not seen within 2 s")

    try:
        benchmark.pedantic(write_until_seen, setup=setup, rounds=50, iterations=1)
    finally:
        a.close()
        b.close()


N_BATCH = 1000


@contextlib.contextmanager
def _batch_state(server):
    """Yield (keys, their Redis names, a TieredCache holding them in Redis, a client)."""
    keys = [f"key:{i}" for i in range(N_BATCH)]
    tier = TieredCache(kvcache.LRUCache(maxsize=2 * N_BATCH), server.client(), "bench-batch")
    assert tier.wait_live(5)
    tier.set_many(keys, [{"id": i, "name": f"item {i}"} for i in range(N_BATCH)])
    try:
        yield keys, encode_keys(keys, tier._vprefix), tier, server.client()
    finally:
        tier.close()


@pytest.fixture(scope="module")
def batch_setup(server):
    with _batch_state(server) as state:
        yield state


def _batch_plans(keys, names, tier, client):
    """The three timed functions of redis-batch; call `cold` (untimed) before each."""
    def raw_mget():
        return sum(v is not None for v in client.mget(names))

    def get_many():
        return sum(v is not None for v in tier.get_many(keys))

    def loop_get():
        return sum(tier.get(k) is not None for k in keys)

    return {"raw MGET": raw_mget, "get_many": get_many, "loop of get": loop_get}


def _cold(tier):
    def setup():
        tier.local.clear()
        return (), {}

    return setup


@pytest.mark.benchmark(group="redis-batch")
def test_batch_raw_mget(benchmark, batch_setup):
    fn = _batch_plans(*batch_setup)["raw MGET"]
    assert benchmark.pedantic(fn, setup=_cold(batch_setup[2]), rounds=50) == N_BATCH


@pytest.mark.benchmark(group="redis-batch")
def test_batch_tiered_get_many(benchmark, batch_setup):
    fn = _batch_plans(*batch_setup)["get_many"]
    assert benchmark.pedantic(fn, setup=_cold(batch_setup[2]), rounds=50) == N_BATCH


@pytest.mark.benchmark(group="redis-batch")
def test_batch_tiered_loop_get(benchmark, batch_setup):
    fn = _batch_plans(*batch_setup)["loop of get"]
    assert benchmark.pedantic(fn, setup=_cold(batch_setup[2]), rounds=5) == N_BATCH


def _batch_main(rounds):
    with tempfile.TemporaryDirectory(prefix="kvcache-bench-redis-") as d:
        server = RedisServer(d).start()
        try:
            with _batch_state(server) as state:
                plans = _batch_plans(*state)
                times = {name: [] for name in plans}
                order = list(plans)
                for _ in range(rounds):
                    random.shuffle(order)
                    for name in order:
                        state[2].local.clear()  # a cold local tier, outside the timing
                        t0 = time.perf_counter()
                        assert plans[name]() == N_BATCH
                        times[name].append(time.perf_counter() - t0)
        finally:
            server.stop()
    print(f"{rounds} interleaved rounds, {N_BATCH} keys, cold local tier, ms (min / median):")
    for name, ts in times.items():
        print(f"  {name:12} {min(ts) * 1e3:7.2f} / {statistics.median(ts) * 1e3:7.2f}")
    ratio = sorted(g / m for g, m in zip(times["get_many"], times["raw MGET"]))
    speedup = sorted(lp / g for lp, g in zip(times["loop of get"], times["get_many"]))
    print(f"  get_many / raw MGET: ratio of mins {min(times['get_many']) / min(times['raw MGET']):.2f}x, "
          f"per-round median {statistics.median(ratio):.2f}x [{ratio[0]:.2f}-{ratio[-1]:.2f}]")
    print(f"  loop of get / get_many: ratio of mins {min(times['loop of get']) / min(times['get_many']):.1f}x, "
          f"per-round median {statistics.median(speedup):.1f}x [{speedup[0]:.1f}-{speedup[-1]:.1f}]")


# --- interleaved A/B of the local hit (run as a script) ------------------------------------


def _ab_main(argv=None):
    ap = argparse.ArgumentParser(description="Interleaved timing: TieredCache local hit vs LRUCache hit.")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=50, help="passes over the keys per timing")
    ap.add_argument("--batch", action="store_true", help="time the redis-batch group instead")
    args = ap.parse_args(argv)
    if REDIS_SERVER is None:
        raise SystemExit(MISSING_REDIS)
    if args.batch:
        return _batch_main(args.rounds)
    loops = {"m[k]": _loop_getitem, "m.get(k)": _loop_get, "k in m": _loop_in}
    clock = time.process_time  # CPU time of this process: other load on the machine stays out
    with tempfile.TemporaryDirectory(prefix="kvcache-bench-redis-") as d:
        server = RedisServer(d).start()
        try:
            with _hit_state(server) as (keys, _, lru, tier, _):
                before = tier.stats()
                plans = [(style, impl) for style in loops for impl in ("LRUCache", "TieredCache")]
                times = {p: [] for p in plans}
                for _ in range(args.rounds):
                    random.shuffle(plans)
                    for style, impl in plans:
                        fn, m = loops[style], (lru if impl == "LRUCache" else tier)
                        t0 = clock()
                        for _ in range(args.reps):
                            fn(m, keys)
                        times[style, impl].append(clock() - t0)
                after = tier.stats()
        finally:
            server.stop()
    lookups = args.reps * len(keys)
    hits = args.rounds * lookups * len(loops)
    if after.remote_hits != before.remote_hits or after.local_hits - before.local_hits != hits:
        raise SystemExit(f"not every lookup was a counted local hit: {before} -> {after}")
    print(f"{args.rounds} interleaved rounds x {lookups} lookups, ns per lookup (min / median):")
    for style in loops:
        lru_t, tier_t = times[style, "LRUCache"], times[style, "TieredCache"]
        per_round = sorted(t / l for t, l in zip(tier_t, lru_t))
        print(
            f"  {style:9} LRUCache {min(lru_t) / lookups * 1e9:6.1f} / {statistics.median(lru_t) / lookups * 1e9:6.1f}"
            f"   TieredCache {min(tier_t) / lookups * 1e9:6.1f} / {statistics.median(tier_t) / lookups * 1e9:6.1f}"
            f"   ratio of mins {min(tier_t) / min(lru_t):.2f}x, per-round median {statistics.median(per_round):.2f}x"
            f" [{per_round[0]:.2f}-{per_round[-1]:.2f}]"
        )


if __name__ == "__main__":
    _ab_main()
