"""Fault run of the Redis tier: worker processes through kill -9, SIGSTOP and restart.

    PYTHONPATH=$PWD python bench/redis_faults.py [--workers 3] [--asyncio 0] [--phase 2.0] [--json]

Starts a throwaway redis-server and `--workers` processes, each with a TieredCache (made by
``TieredCache.from_url(..., timeout=0.25)``) running a read-mostly workload (90% get, 10% set)
over 100 shared keys and counting every exception that reaches it.  The server then goes
through, `--phase` seconds each: up, killed (SIGKILL), restarted empty, up, stopped (SIGSTOP),
continued, up.  At the end the workers stop writing and each reads every key; every answer is
compared with what Redis holds.  Printed: exceptions, operations served while the server was
down or hung (fail-open), the slowest of them and how many took over 100 ms, time from restart / SIGCONT until a write
reaches Redis again, invalidation latency (p50/p99: a write in one tier until another tier's
local copy is gone) before the faults and after the restart, and the number of reads that
disagree with Redis.  Exits 1 if any exception escaped or any read disagreed.  ``--asyncio N``
makes N of the workers run an AsyncTieredCache (``AsyncTieredCache.from_url``) instead, one
task doing the same workload.
"""

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = [f"key{i}" for i in range(100)]
NS = "faults"


def _tier(port, **kwargs):
    import kvcache
    from kvcache.redis import TieredCache

    return TieredCache.from_url(f"redis://127.0.0.1:{port}/0", kvcache.LRUCache(maxsize=1000), NS,
                                timeout=0.25, backoff=0.05, max_backoff=1.0, **kwargs)


# --- a worker process -------------------------------------------------------------------


def worker(port):
    """Run the workload until told to stop; then answer one read of every key; print JSON lines."""
    import random

    t = _tier(port)
    t.wait_live(5)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    rng = random.Random(os.getpid())
    ops = []  # (monotonic start, seconds)
    exceptions = []
    n = 0
    while not stop.is_set():
        k = rng.choice(KEYS)
        t0 = time.monotonic()
        try:
            if rng.random() < 0.1:
                t[k] = f"{os.getpid()}:{n}"
            else:
                t.get(k)
        except Exception as exc:  # the promise under test: nothing reaches the caller
            exceptions.append(repr(exc))
        ops.append((t0, time.monotonic() - t0))
        n += 1
    print(json.dumps({"ops": ops, "exceptions": exceptions}), flush=True)
    sys.stdin.readline()  # "check": every worker has stopped writing
    live = t.wait_live(10)
    deadline = time.monotonic() + 5
    reads = t.get_many(KEYS)
    # Notices of the last writes may still be on their way: read until two reads agree.
    while time.monotonic() < deadline:
        time.sleep(0.2)
        again = t.get_many(KEYS)
        if again == reads:
            break
        reads = again
    singles = [t.get(k) for k in KEYS]
    print(json.dumps({"live": live, "reads": reads, "singles": singles, "stats": t.stats()._asdict()}),
          flush=True)
    t.close()


def worker_async(port):
    """`worker` with an AsyncTieredCache: the same workload and answers, from one task."""
    import asyncio
    import random

    import kvcache
    from kvcache.redis import AsyncTieredCache

    async def main():
        t = AsyncTieredCache.from_url(f"redis://127.0.0.1:{port}/0", kvcache.LRUCache(maxsize=1000), NS,
                                      timeout=0.25, backoff=0.05, max_backoff=1.0)
        await t.wait_live(5)
        loop = asyncio.get_running_loop()
        stop = loop.run_in_executor(None, sys.stdin.readline)
        print("ready", flush=True)
        rng = random.Random(os.getpid())
        ops, exceptions, n = [], [], 0
        while not stop.done():
            k = rng.choice(KEYS)
            t0 = time.monotonic()
            try:
                if rng.random() < 0.1:
                    await t.set(k, f"{os.getpid()}:{n}")
                else:
                    await t.get(k)
            except Exception as exc:
                exceptions.append(repr(exc))
            ops.append((t0, time.monotonic() - t0))
            n += 1
            await asyncio.sleep(0)  # a local hit never suspends: let the invalidation task run
        print(json.dumps({"ops": ops, "exceptions": exceptions}), flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # "check"
        live = await t.wait_live(10)
        deadline = time.monotonic() + 5
        reads = await t.get_many(KEYS)
        while time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            again = await t.get_many(KEYS)
            if again == reads:
                break
            reads = again
        singles = [await t.get(k) for k in KEYS]
        print(json.dumps({"live": live, "reads": reads, "singles": singles, "stats": t.stats()._asdict()}),
              flush=True)
        await t.aclose()

    asyncio.run(main())


# --- the parent ---------------------------------------------------------------------------


def invalidation_latency(port, n):
    """Return p50, p99 (ms) of a write in one tier until another tier's local copy is gone."""
    a, b = _tier(port), _tier(port)
    try:
        a.wait_live(5)
        b.wait_live(5)
        lat = []
        for i in range(n):
            a["probe"] = i
            deadline = time.monotonic() + 2
            while b.stats().invalidations < 2 * i + 1 and time.monotonic() < deadline:
                time.sleep(0)  # the notice of a's write reaches b (sleep(0): let its thread run)...
            b.get("probe")  # ...now b's fill stays
            if "probe" not in b.local:
                continue
            t0 = time.monotonic()
            a["probe"] = -i
            while "probe" in b.local and time.monotonic() - t0 < 2:
                time.sleep(0)
            lat.append((time.monotonic() - t0) * 1000)
        lat.sort()
        return round(statistics.median(lat), 3), round(lat[int(0.99 * (len(lat) - 1))], 3)
    finally:
        a.close()
        b.close()


def time_to_recover(t, raw, since):
    """Return the seconds from `since` until a write through tier `t` reaches Redis and `t` is live."""
    from kvcache.serialize import encode_key

    name = t._vprefix + encode_key("recovered")
    i = 0
    while time.monotonic() - since < 30:
        i += 1
        t["recovered"] = i
        try:
            if raw.get(name) == t._ser.dumps(i) and t.live:
                return round(time.monotonic() - since, 3)
        except Exception:
            pass
        time.sleep(0.005)
    return None


def run(workers=3, phase=2.0, invalidations=500, asyncio_workers=0):
    sys.path.insert(0, HERE)
    from bench_redis import RedisServer

    from kvcache.serialize import Serializer, encode_key

    with tempfile.TemporaryDirectory(prefix="kvcache-faults-") as d:
        server = RedisServer(d).start()
        procs = []
        try:
            port = server.port
            raw = server.client()
            before = invalidation_latency(port, invalidations)
            probe = _tier(port)  # lives through the faults, as the workers' tiers do
            probe.wait_live(5)
            env = dict(os.environ)
            for i in range(workers):
                kind = "--async-worker" if i < asyncio_workers else "--worker"
                p = subprocess.Popen([sys.executable, os.path.abspath(__file__), kind, str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
                procs.append(p)
            for p in procs:
                assert p.stdout.readline().strip() == "ready"
            events = {}
            time.sleep(phase)
            events["kill"] = time.monotonic()
            server.proc.send_signal(signal.SIGKILL)
            server.proc.wait()
            time.sleep(phase)
            server.start()  # same port, empty: no persistence
            events["restarted"] = time.monotonic()
            recover_restart = time_to_recover(probe, raw, events["restarted"])
            time.sleep(phase)
            events["stop"] = time.monotonic()
            server.proc.send_signal(signal.SIGSTOP)
            time.sleep(phase)
            server.proc.send_signal(signal.SIGCONT)
            events["cont"] = time.monotonic()
            recover_cont = time_to_recover(probe, raw, events["cont"])
            time.sleep(phase)
            runs = []
            for p in procs:
                p.stdin.write("stop\n")
                p.stdin.flush()
            for p in procs:
                runs.append(json.loads(p.stdout.readline()))
            for p in procs:
                p.stdin.write("check\n")
                p.stdin.flush()
            checks = [json.loads(p.stdout.readline()) for p in procs]
            ser = Serializer()
            held = [None if b is None else ser.loads(b) for b in raw.mget([
                b"faults:v:" + encode_key(k) for k in KEYS])]
            probe.close()
            after = invalidation_latency(port, invalidations)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait()
            if server.proc is not None and server.proc.poll() is None:
                server.proc.send_signal(signal.SIGCONT)
            server.stop()

    def window(a, b):
        return [dur for r in runs for (t0, dur) in r["ops"] if a <= t0 < b]

    down = window(events["kill"], events["restarted"])
    hung = window(events["stop"], events["cont"])
    mismatches = sum(
        (c["reads"][i] != held[i]) + (c["singles"][i] != held[i]) for c in checks for i in range(len(KEYS))
    )
    return {
        "workers": workers,
        "asyncio_workers": asyncio_workers,
        "phase_s": phase,
        "ops": sum(len(r["ops"]) for r in runs),
        "exceptions": sum(len(r["exceptions"]) for r in runs),
        "exception_samples": [e for r in runs for e in r["exceptions"]][:5],
        "served_while_down": len(down),
        "slowest_while_down_ms": round(max(down, default=0) * 1000, 1),
        "over_100ms_while_down": sum(d > 0.1 for d in down),
        "served_while_hung": len(hung),
        "slowest_while_hung_ms": round(max(hung, default=0) * 1000, 1),
        "over_100ms_while_hung": sum(d > 0.1 for d in hung),
        "recover_after_restart_s": recover_restart,
        "recover_after_sigcont_s": recover_cont,
        "invalidation_before_ms_p50_p99": before,
        "invalidation_after_ms_p50_p99": after,
        "all_live": all(c["live"] for c in checks),
        "reads_checked": 2 * len(KEYS) * len(checks),
        "reads_disagreeing_with_redis": mismatches,
        "keys_held_by_redis": sum(v is not None for v in held),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--phase", type=float, default=2.0, help="seconds of each phase")
    ap.add_argument("--invalidations", type=int, default=500, help="writes timed before and after")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    ap.add_argument("--asyncio", type=int, default=0, help="how many workers run an AsyncTieredCache")
    ap.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # internal: run one worker on this port
    ap.add_argument("--async-worker", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker)
        return 0
    if args.async_worker:
        worker_async(args.async_worker)
        return 0
    out = run(args.workers, args.phase, args.invalidations, args.asyncio)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:32} {v}")
    return 0 if out["exceptions"] == 0 and out["reads_disagreeing_with_redis"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
