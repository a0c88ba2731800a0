"""A reader in another process, told over a pipe when a write returned: the consistency tests
of both remote tiers (tests/test_memcached.py, tests/test_redis_consistency.py) share it."""

import subprocess
import sys
import tempfile

from tests.redis_fixtures import child_env

# Children run outside the source tree: there `import kvcache` must find the installed build.
CHILD_CWD = tempfile.gettempdir()

_CHILD = r"""
import sys, time
import kvcache
backend, addr, ns, mode, max_stale = sys.argv[1:6]
if backend == "memcached":
    from kvcache.memcached import TieredCache
    tier = TieredCache(kvcache.LRUCache(maxsize=100), [addr], ns, consistency=mode, max_stale=float(max_stale))
elif backend == "redis":
    from kvcache.redis import TieredCache
    tier = TieredCache.from_url(addr, kvcache.LRUCache(maxsize=100), ns, consistency=mode, timeout=1.0)
    assert tier.wait_live(10.0)
else:  # redis-async: reads awaited on a loop that runs all along, as a server's would
    import asyncio, threading
    from kvcache.redis import AsyncTieredCache
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    tier = AsyncTieredCache.from_url(addr, kvcache.LRUCache(maxsize=100), ns, consistency=mode, timeout=1.0)
    assert asyncio.run_coroutine_threadsafe(tier.wait_live(10.0), loop).result()
get = tier.get if backend != "redis-async" else (
    lambda k, d: asyncio.run_coroutine_threadsafe(tier.get(k, d), loop).result())
out = sys.stdout
out.write("ready\n"); out.flush()
for line in sys.stdin:
    parts = line.split()
    if parts[0] == "q":
        break
    i = int(parts[0])
    if mode == "strong":
        out.write("%d\n" % get("k", -1))
    else:
        t_w = float(parts[1])
        worst = -1.0
        while True:
            t_r = time.monotonic()      # before the read: the bound is about when a read starts
            v = get("k", -1)
            if v == i:
                break
            if v != i - 1:
                out.write("bad %r\n" % (v,)); out.flush(); sys.exit(1)
            worst = max(worst, t_r - t_w)
        out.write("%r %r\n" % (t_r - t_w, worst))
    out.flush()
if mode == "strong":
    s = tier.stats()
    out.write("%d %d\n" % (s.local_hits, s.remote_hits)); out.flush()
if backend == "redis-async":
    asyncio.run_coroutine_threadsafe(tier.aclose(), loop).result(5)
"""


def start_reader(backend, addr, ns, mode, max_stale=0.0):
    """Start the reader of key "k" (`backend`: "memcached", "redis" or "redis-async" (an
    AsyncTieredCache), `addr` its address or URL)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, backend, addr, ns, mode, str(max_stale)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=CHILD_CWD, env=child_env(),
    )
    assert proc.stdout.readline().strip() == "ready"
    return proc


def strong_rounds(writer, proc, rounds, reads_per_write=1):
    """Write `rounds` values of "k" with `writer`; after each write returned, the reader reads it.

    Each write is read `reads_per_write` times (the later reads may be local hits).  Return
    (stale reads, the reader's local hits, its remote hits).
    """
    stale = 0
    try:
        for i in range(rounds):
            writer["k"] = i
            for _ in range(reads_per_write):
                proc.stdin.write(f"{i}\n")
                proc.stdin.flush()
                stale += int(proc.stdout.readline()) != i
        proc.stdin.write("q\n")
        proc.stdin.flush()
        local_hits, remote_hits = map(int, proc.stdout.readline().split())
    finally:
        proc.stdin.close()
        proc.wait(10)
    return stale, local_hits, remote_hits
