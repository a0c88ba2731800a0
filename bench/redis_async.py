"""AsyncTieredCache against a real local redis-server: the local hit, and 1,000-key batches.

Run: PYTHONPATH=$PWD python bench/redis_async.py [--rounds N]

1. Local hit, ns per lookup (interleaved rounds in a new random order each, process CPU
   time): ``LRUCache.get(k)``, ``TieredCache.get(k)`` and ``await AsyncTieredCache.get(k)``
   (a coroutine loop), all over the same 1,000 keys held locally; the ratios are per round.
2. 1,000 keys with a cold local tier, ms per batch (wall time, min and median over the
   rounds): one raw ``MGET`` of the same names on a ``redis.asyncio`` client (values left
   undecoded), ``await tier.get_many(keys)``, and a loop of ``await tier.get(k)``.
"""

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kvcache  # noqa: E402
from bench_redis import MISSING_REDIS, REDIS_SERVER, RedisServer  # noqa: E402
from kvcache.redis import AsyncTieredCache, TieredCache  # noqa: E402

N = 1000


def _aclient(port):
    import redis.asyncio
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return redis.asyncio.Redis(host="127.0.0.1", port=port, socket_timeout=1.0,
                               socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))


async def _settle_and_fill(tier, keys, get):
    """Let the notices of our own writes pass, then fill the local tier with every key."""
    deadline = time.monotonic() + 5
    while tier.stats().invalidations < len(keys) and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    for k in keys:
        v = get(k)
        if asyncio.iscoroutine(v):
            await v
    assert all(k in tier.local for k in keys), "local tier not filled"


async def main(args):
    keys = [f"key:{i}" for i in range(N)]
    clock = time.process_time
    with tempfile.TemporaryDirectory(prefix="kvcache-bench-redis-async-") as d:
        server = RedisServer(d).start()
        try:
            lru = kvcache.LRUCache(maxsize=2 * N)
            sync = TieredCache(kvcache.LRUCache(maxsize=2 * N), server.client(), "bench-async-sync")
            atier = AsyncTieredCache(kvcache.LRUCache(maxsize=2 * N), _aclient(server.port), "bench-async")
            assert sync.wait_live(5) and await atier.wait_live(5)
            for k in keys:
                lru[k] = k
                sync[k] = k
            await atier.set_many(keys, keys)
            deadline = time.monotonic() + 5
            while sync.stats().invalidations < N and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            for k in keys:
                sync[k]
            await _settle_and_fill(atier, keys, atier.get)

            def loop_sync(m):
                get = m.get
                for _ in range(args.reps):
                    for k in keys:
                        get(k)

            async def loop_async():
                get = atier.get
                for _ in range(args.reps):
                    for k in keys:
                        await get(k)

            before = atier.stats()
            plans = ["LRUCache.get", "TieredCache.get", "await AsyncTieredCache.get"]
            times = {p: [] for p in plans}
            for _ in range(args.rounds):
                random.shuffle(plans)
                for p in plans:
                    t0 = clock()
                    if p == "LRUCache.get":
                        loop_sync(lru)
                    elif p == "TieredCache.get":
                        loop_sync(sync)
                    else:
                        await loop_async()
                    times[p].append(clock() - t0)
            after = atier.stats()
            lookups = args.reps * N
            if after.remote_hits != before.remote_hits or after.local_hits - before.local_hits != args.rounds * lookups:
                raise SystemExit(f"not every async lookup was a counted local hit: {before} -> {after}")
            print(f"local hit: {args.rounds} interleaved rounds x {lookups} lookups, ns per lookup (min / median)")
            for p in ("LRUCache.get", "TieredCache.get", "await AsyncTieredCache.get"):
                t = times[p]
                print(f"  {p:28} {min(t) / lookups * 1e9:6.1f} / {statistics.median(t) / lookups * 1e9:6.1f}")
            for a, b in (("await AsyncTieredCache.get", "TieredCache.get"), ("await AsyncTieredCache.get", "LRUCache.get")):
                r = sorted(x / y for x, y in zip(times[a], times[b]))
                print(f"  {a} / {b}: per-round median {statistics.median(r):.2f}x [{r[0]:.2f}-{r[-1]:.2f}]")
            sync.close()

            # --- batches, cold local tier --------------------------------------------------
            raw = _aclient(server.port)
            names = [atier._name(k) for k in keys]
            assert len([v for v in await raw.mget(names) if v is not None]) == N

            async def raw_mget():
                return await raw.mget(names)

            async def get_many():
                atier.local.clear()
                return await atier.get_many(keys)

            async def get_loop():
                atier.local.clear()
                return [await atier.get(k) for k in keys]

            runs = {"raw MGET": raw_mget, "get_many": get_many, "loop of get": get_loop}
            assert await get_many() == keys and await get_loop() == keys
            wall = {p: [] for p in runs}
            order = list(runs)
            for _ in range(args.rounds):
                random.shuffle(order)
                for p in order:
                    t0 = time.perf_counter()
                    await runs[p]()
                    wall[p].append(time.perf_counter() - t0)
            print(f"\n{N} keys, cold local tier: {args.rounds} interleaved rounds, ms per batch (min / median)")
            for p in runs:
                print(f"  {p:12} {min(wall[p]) * 1e3:7.2f} / {statistics.median(wall[p]) * 1e3:7.2f}")
            m = statistics.median
            print(f"  get_many / raw MGET: {m(wall['get_many']) / m(wall['raw MGET']):.2f}x (medians);"
                  f" loop of get / get_many: {m(wall['loop of get']) / m(wall['get_many']):.1f}x")
            await raw.aclose()
            await atier.aclose()
            await atier.client.aclose()
        finally:
            server.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--reps", type=int, default=50, help="passes over the keys per local-hit timing")
    args = ap.parse_args()
    if REDIS_SERVER is None:
        raise SystemExit(MISSING_REDIS)
    asyncio.run(main(args))
