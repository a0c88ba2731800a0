"""Interleaved comparison: steadier ratios than run.py on a machine shared with other load.

pytest-benchmark times one implementation after another, so load that comes and goes
lands on some rows and not others.  This tool runs the same workloads and loops as
bench_core.py (and the batch, decorator, expiry and block-manager workloads below), but
round-robin: every round times each implementation once, in a new random order, on process
CPU time; each row keeps its best round.  A workload runs at least ``--rounds`` rounds and
at least ``--min-time`` seconds of timed CPU time.

    python bench/ab.py                                  # kvcache vs dict and the fast peers
    python bench/ab.py --rounds 9 -w zipf-memo -i dict,kvcache.LRUCache,cachebox.LRUCache
    python bench/ab.py --kvcache-path /tmp/kvbase -i kvcache   # a saved build, kvcache rows only

``--kvcache-path DIR`` imports kvcache from DIR (a folder holding a built ``kvcache/``
package) instead of this tree's in-place build; bench/abab.py uses it to alternate two builds.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

# Timings are process CPU time: an idle BLAS worker thread (numpy starts one per core) would add
# its spinning to it.  The benchmarks do no linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvbench import (BY_NAME, IMPLS, NotInstalled, make_evict_data,  # noqa: E402
                     make_get_data, make_zipf_data, prefer_inplace_build)

DEFAULT = ("loop (empty),dict,kvcache.LRUCache,kvcache.LFUCache,kvcache.FIFOCache,"
           "kvcache.RRCache,cachebox.LRUCache,cachebox.LFUCache,cachebox.FIFOCache,"
           "cachebox.RRCache,lru-dict.LRU,"
           # rows of the workloads after zipf-memo (each takes part in its own workload only,
           # except the TinyLFU caches, which also run the core workloads)
           "kvcache.lru_cache,functools.lru_cache,cachetools.func.lru_cache,"
           "kvcache.TTLCache,cachetools.TTLCache,cachebox.TTLCache,"
           "kvcache.TinyLFUCache,moka-py.Moka,theine.Cache,"
           "kvcache.LRUCache.get_many,kvcache.LRUCache.get_many(list),"
           "kvcache.VectorCache,kvcache.llm.PrefixCache,PyPrefixCache")
WORKLOADS = ("get-hit-int", "get-hit-str", "get-miss", "set-evict", "zipf-memo",
             "lru-cache-hit", "ttl-hit", "tinylfu-hit", "get-many", "vector-get-many",
             "block-manager")
#: Workloads whose rows are hits on the get-hit-int data, with the Impl tag that selects them.
HIT_TAGS = {"get-hit-int": "hit", "get-hit-str": "hit", "lru-cache-hit": "lru-cache-hit",
            "ttl-hit": "ttl-hit", "tinylfu-hit": "tinylfu-hit"}
_clock = time.perf_counter if os.name == "nt" else time.process_time


def _empty_loop(c, keys):
    for k in keys:
        pass


def _filled(impl, stored):
    """Return a new cache of ``len(stored)`` entries holding every stored key (checked)."""
    cache = impl.new(len(stored))
    impl.style.fill(cache, stored, stored)
    # A cache that dropped or refused entries (an admission filter, a too-small bound) would
    # time misses under a hit workload's name.
    held = impl.style.size(cache)
    if held != len(stored):
        raise SystemExit(f"{impl.name} holds {held} of {len(stored)} entries after filling")
    return cache


def _plans(workload, impls, args):
    """Return {impl name: (make_round_state, timed_fn, ops, data)} for one workload."""
    plans = {}
    if workload in HIT_TAGS or workload == "get-miss":
        data = make_get_data(args.get_n)
        stored, lookups = data["str" if workload == "get-hit-str" else
                               "miss" if workload == "get-miss" else "int"]
        tag = HIT_TAGS.get(workload, "miss")
        for impl in impls:
            if impl.role == "loop" and tag in ("hit", "miss"):
                plans[impl.name] = (lambda: None, _empty_loop, len(lookups), lookups)
                continue
            if tag not in impl.workloads:
                continue
            cache = _filled(impl, stored)
            fn = impl.style.miss if workload == "get-miss" else impl.style.hit
            plans[impl.name] = (lambda c=cache: c, fn, len(lookups), lookups)
    elif workload in ("get-many", "vector-get-many"):
        stored, _ = make_get_data(args.get_n)["int"]
        chunks = [stored[i:i + args.batch] for i in range(0, len(stored), args.batch)]
        for impl in impls:
            if workload not in impl.workloads:
                continue
            cache = _filled(impl, stored)
            batches = [impl.batch_form(chunk) for chunk in chunks]
            plans[impl.name] = (lambda c=cache: c, impl.style.batch, len(stored), batches)
    elif workload == "block-manager":
        import bench_llm
        for impl in impls:
            if workload not in impl.workloads:
                continue
            mgr = impl.new(args.blocks)
            # The pool stays full of cached blocks from round to round; each round serves new
            # requests (new unique blocks, shared prefixes), as bench_llm's measurement does.
            seeds = iter(range(10, 10**9))
            plans[impl.name] = (
                lambda mgr=mgr, seeds=seeds: bench_llm.block_manager_requests(
                    args.requests, seed=next(seeds)),
                lambda reqs, _, mgr=mgr: bench_llm.serve(mgr, reqs), 4 * args.requests, None)
    elif workload == "set-evict":
        prefill, inserts = make_evict_data(args.capacity, args.inserts)
        for impl in impls:
            if impl.role == "loop" or "set" not in impl.workloads:
                continue

            def fresh(impl=impl):
                c = impl.new(args.capacity)
                impl.style.fill(c, prefill, prefill)
                return c
            plans[impl.name] = (fresh, impl.style.set, len(inserts), inserts)
    elif workload == "zipf-memo":
        stream, _ = make_zipf_data(args.zipf_keys, args.inserts)
        for impl in impls:
            if impl.role == "loop" or "memo" not in impl.workloads:
                continue
            plans[impl.name] = (lambda impl=impl: impl.new(args.capacity), impl.style.memo,
                                len(stream), stream)
    else:
        raise SystemExit(f"unknown workload {workload!r}; known: {', '.join(WORKLOADS)}")
    return plans


def _import_kvcache(path):
    """Import kvcache from ``path`` (or the in-place build / installed package); return its folder."""
    if path:
        path = os.path.abspath(path)
        sys.path.insert(0, path)
    else:
        prefer_inplace_build()
    import kvcache
    where = os.path.dirname(os.path.abspath(kvcache.__file__))
    if path and os.path.dirname(where) != path:
        raise SystemExit(f"kvcache was imported from {where}, not from {path}")
    return where


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-i", "--impls", default=DEFAULT,
                   help="comma-separated implementation names; 'kvcache' means every kvcache row")
    p.add_argument("-w", "--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5, help="least rounds per workload")
    p.add_argument("--min-time", type=float, default=1.0, metavar="S",
                   help="least timed CPU seconds per workload (all rows together)")
    p.add_argument("--get-n", type=int, default=100_000,
                   help="entries and lookups of the get, hit and batch workloads")
    p.add_argument("--capacity", type=int, default=10_000)
    p.add_argument("--inserts", type=int, default=1_000_000,
                   help="inserts per set-evict round and accesses per zipf-memo round")
    p.add_argument("--zipf-keys", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="keys per get_many call")
    p.add_argument("--blocks", type=int, default=100_000, help="block-manager pool size")
    p.add_argument("--requests", type=int, default=500, help="block-manager requests per round")
    p.add_argument("--kvcache-path", metavar="DIR",
                   help="import kvcache from DIR/kvcache instead of the in-place build")
    p.add_argument("--json", metavar="FILE", help="also write the best ns/op per row to FILE")
    args = p.parse_args(argv)
    where = _import_kvcache(args.kvcache_path)
    print(f"kvcache from {where}", flush=True)
    names = [n.strip() for n in args.impls.split(",")]
    if "kvcache" in names:
        i = names.index("kvcache")
        names[i:i + 1] = [impl.name for impl in IMPLS if impl.role == "kvcache"]
    impls = []
    for name in names:
        impl = BY_NAME[name]
        try:
            impl.load()
        except NotInstalled as exc:
            print(f"skipped: {exc}")
            continue
        impls.append(impl)
    rng = random.Random(0)
    results, rounds_of = {}, {}
    for workload in args.workloads.split(","):
        plans = _plans(workload, impls, args)
        if not plans:
            continue
        best = {name: float("inf") for name in plans}
        rounds = timed = 0
        # Short workloads get more rounds: a best round needs a quiet moment of the machine,
        # and the chance of meeting one grows with the time spent measuring, not the count.
        while rounds < args.rounds or timed < args.min_time:
            order = list(plans)
            rng.shuffle(order)
            for name in order:
                make, fn, ops, data = plans[name]
                cache = make()
                t0 = _clock()
                fn(cache, data)
                t = _clock() - t0
                timed += t
                best[name] = min(best[name], t / ops * 1e9)
            rounds += 1
        results[workload], rounds_of[workload] = best, rounds
        loop, base = best.get("loop (empty)"), best.get("dict")
        print(f"\n{workload}  (best of {rounds} interleaved rounds, ns/op)")
        for name, ns in sorted(best.items(), key=lambda kv: kv[1]):
            line = f"  {name:32s} {ns:8.1f}"
            if base and name != "loop (empty)":
                line += f"  x dict {ns / base:5.2f}"
                if loop is not None and base > loop:
                    line += f"  x dict-loop {(ns - loop) / (base - loop):5.2f}"
            print(line, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"kvcache": where, "ns_per_op": results, "rounds": rounds_of}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
