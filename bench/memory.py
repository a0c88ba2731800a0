"""Measure memory per entry: RSS growth of a fresh process while one cache takes N entries.

tracemalloc sees only Python's allocator, not what the Rust and C peers allocate, so every
implementation is measured the same way: in its own fresh interpreter, the N keys and N
values are created and the module imported *before* the baseline RSS reading, then the cache
is built and filled, and the growth divided by N is the cost of holding an entry (table,
links, counters, allocator overhead), key and value objects excluded.

    python bench/memory.py [--n 1000000] [NAME ...]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def rss_bytes() -> int:
    """Return this process's resident set size in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        pass
    try:
        import psutil
        return psutil.Process().memory_info().rss
    except ImportError:
        import resource
        # Peak, not current, RSS: still right here because the cache only grows.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _child(name: str, n: int) -> dict:
    sys.path.insert(0, HERE)
    from kvbench import BY_NAME, NotInstalled

    impl = BY_NAME[name]
    try:
        impl.load()
    except NotInstalled as exc:
        return {"impl": name, "missing": str(exc)}
    base = 1 << 40  # beyond the small-int cache: every key and value is its own object
    keys = list(range(base, base + n))
    values = list(range(2 * base, 2 * base + n))
    # A throwaway instance pays one-time costs (worker threads, type caches) up front, so
    # that they are not charged to the entries.
    warm = impl.new(1000)
    impl.style.fill(warm, keys[:2000], values[:2000])
    impl.style.size(warm)
    del warm
    gc.collect()
    before = rss_bytes()
    cache = impl.new(n)
    impl.style.fill(cache, keys, values)
    held = impl.style.size(cache)  # also applies pending work (moka, theine)
    gc.collect()
    after = rss_bytes()
    lookup = impl.style.lookup
    if impl.name == "functools.lru_cache":
        fn = cache.fn
        hits0 = fn.cache_info().hits
        verified = all(fn(k) is k for k in keys[:: max(1, n // 1000)])
        verified = verified and fn.cache_info().hits - hits0 == len(keys[:: max(1, n // 1000)])
    else:
        verified = all(lookup(cache, k) is v for k, v in zip(keys, values))
    return {"impl": name, "n": n, "len": held, "bytes": after - before,
            "per_entry": (after - before) / n, "verified": bool(verified and held == n)}


def measure(name: str, n: int, timeout: float = 600) -> dict:
    """Run the measurement of implementation ``name`` with ``n`` entries in a new process.

    The child imports the same ``kvcache`` as this process (when this process has one), so
    the figures belong to the build being benchmarked.
    """
    env = dict(os.environ)
    try:
        import kvcache
        root = os.path.dirname(os.path.dirname(os.path.abspath(kvcache.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    except ImportError:
        pass
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", name, str(n)],
                          capture_output=True, text=True, env=env, timeout=timeout,
                          cwd=HERE)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"impl": name, "error": f"exit {proc.returncode}: {tail[0]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs=2, metavar=("NAME", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=1_000_000, help="entries (default 1M)")
    parser.add_argument("names", nargs="*", help="implementations (default: all)")
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child[0], int(args.child[1]))))
        return 0
    sys.path.insert(0, HERE)
    from kvbench import impls_for, prefer_inplace_build
    prefer_inplace_build()
    names = args.names or [impl.name for impl in impls_for("memory")]
    for name in names:
        r = measure(name, args.n)
        if "per_entry" in r:
            print(f"{name:24s} {r['per_entry']:8.1f} B/entry  (len {r['len']}, "
                  f"verified {r['verified']})")
        else:
            print(f"{name:24s} {r.get('missing') or r.get('error')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
