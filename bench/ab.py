"""Interleaved comparison: steadier ratios than run.py on a machine shared with other load.

pytest-benchmark times one implementation after another, so load that comes and goes
lands on some rows and not others.  This tool runs the same workloads and loops as
bench_core.py, but round-robin: every round times each implementation once, in a new
random order, on process CPU time; each row keeps its best round.

    python bench/ab.py                                  # kvcache vs dict and the fast peers
    python bench/ab.py --rounds 9 -w zipf-memo -i dict,kvcache.LRUCache,cachebox.LRUCache
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time

# Timings are process CPU time: an idle BLAS worker thread (numpy starts one per core) would add
# its spinning to it.  The benchmarks do no linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from kvbench import (BY_NAME, NotInstalled, make_evict_data, make_get_data,  # noqa: E402
                     make_zipf_data, prefer_inplace_build)

DEFAULT = ("loop (empty),dict,kvcache.LRUCache,kvcache.LFUCache,kvcache.FIFOCache,"
           "kvcache.RRCache,cachebox.LRUCache,cachebox.LFUCache,cachebox.FIFOCache,"
           "cachebox.RRCache,lru-dict.LRU")
WORKLOADS = ("get-hit-int", "get-hit-str", "get-miss", "set-evict", "zipf-memo")
_clock = time.perf_counter if os.name == "nt" else time.process_time


def _empty_loop(c, keys):
    for k in keys:
        pass


def _plans(workload, impls, args):
    """Return {impl name: (make_round_state, timed_fn, ops)} for one workload."""
    plans = {}
    if workload.startswith("get"):
        data = make_get_data(args.get_n)
        stored, lookups = data[{"get-hit-int": "int", "get-hit-str": "str",
                                "get-miss": "miss"}[workload]]
        for impl in impls:
            if impl.role == "loop":
                plans[impl.name] = (lambda: None, _empty_loop, len(lookups), lookups)
                continue
            if workload == "get-miss" and "miss" not in impl.workloads:
                continue
            if workload != "get-miss" and "hit" not in impl.workloads:
                continue
            cache = impl.new(len(stored))
            impl.style.fill(cache, stored, stored)
            fn = impl.style.miss if workload == "get-miss" else impl.style.hit
            plans[impl.name] = (lambda c=cache: c, fn, len(lookups), lookups)
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
    else:
        stream, _ = make_zipf_data(args.zipf_keys, args.inserts)
        for impl in impls:
            if impl.role == "loop" or "memo" not in impl.workloads:
                continue
            plans[impl.name] = (lambda impl=impl: impl.new(args.capacity), impl.style.memo,
                                len(stream), stream)
    return plans


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-i", "--impls", default=DEFAULT, help="comma-separated implementation names")
    p.add_argument("-w", "--workloads", default=",".join(WORKLOADS))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--get-n", type=int, default=100_000)
    p.add_argument("--capacity", type=int, default=10_000)
    p.add_argument("--inserts", type=int, default=1_000_000,
                   help="inserts per set-evict round and accesses per zipf-memo round")
    p.add_argument("--zipf-keys", type=int, default=1_000_000)
    args = p.parse_args(argv)
    prefer_inplace_build()
    impls = []
    for name in args.impls.split(","):
        impl = BY_NAME[name.strip()]
        try:
            impl.load()
        except NotInstalled as exc:
            print(f"skipped: {exc}")
            continue
        impls.append(impl)
    rng = random.Random(0)
    for workload in args.workloads.split(","):
        plans = _plans(workload, impls, args)
        best = {name: float("inf") for name in plans}
        for _ in range(args.rounds):
            order = list(plans)
            rng.shuffle(order)
            for name in order:
                make, fn, ops, data = plans[name]
                cache = make()
                t0 = _clock()
                fn(cache, data)
                best[name] = min(best[name], (_clock() - t0) / ops * 1e9)
        loop, base = best.get("loop (empty)"), best.get("dict")
        print(f"\n{workload}  (best of {args.rounds} interleaved rounds, ns/op)")
        for name, ns in sorted(best.items(), key=lambda kv: kv[1]):
            line = f"  {name:24s} {ns:8.1f}"
            if base and name != "loop (empty)":
                line += f"  x dict {ns / base:5.2f}"
                if loop is not None and base > loop:
                    line += f"  x dict-loop {(ns - loop) / (base - loop):5.2f}"
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
