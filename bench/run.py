"""Run the benchmark suite against the peers and print ns/op and ratios per workload.

    python bench/run.py            # full run (a few minutes on 2 cores)
    python bench/run.py --quick    # shorter streams, fewer rounds
    python bench/run.py -k zipf    # only the workloads/implementations pytest -k selects

Runs every bench/bench_*.py with pytest-benchmark (JSON into bench/out/), measures memory per
entry in a fresh process per implementation, prints one table per workload (its columns
explained at the top), checks kvcache's performance targets, and writes into bench/out/:
summary.json, bench.png (kvcache vs the fastest other library vs dict, one bar group per
workload, as ratios to dict) and bench-<family>.png (every row of every workload).
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import platform
import re
import subprocess
import sys
import textwrap
import time

# Timings are process CPU time: an idle BLAS worker thread (numpy starts one per core) would add
# its spinning to it.  The benchmarks do no linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

HERE = os.path.dirname(os.path.abspath(__file__))
ROLE_ORDER = {"loop": 0, "baseline": 1, "reference": 2, "kvcache": 3, "peer": 4}
GET_GROUPS = ("get-hit-int", "get-hit-str")
FASTER_GROUPS = ("get-miss", "set-evict", "zipf-memo")
# CPU time of the process (all its threads) leaves out the time other load keeps it off the
# CPU, which on a shared machine is most of the noise; Windows' process clock ticks too coarsely.
TIMERS = {"cpu": "time.process_time", "wall": "time.perf_counter"}
DEFAULT_TIMER = "wall" if os.name == "nt" else "cpu"
GET_HIT_GOAL = 1.5  # LRUCache get-hit at most 1.5x dict d[k], loop cost subtracted
TINYLFU_GOAL = 1.3  # TinyLFUCache hit cost and bytes per entry at most 1.3x LRUCache's


def _setup_paths() -> dict:
    """Make this process and its children import the same kvcache; return the child env.

    Children run from bench/out, so a source tree without a build never shadows the
    installed package; with an in-place build, the source tree goes first on their path.
    """
    from kvbench import REPO, prefer_inplace_build

    env = dict(os.environ)
    if prefer_inplace_build():
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    return env


def _describe_libs() -> tuple[list[str], dict]:
    from importlib import metadata
    from kvbench import IMPLS, missing_peers

    lines = []
    try:
        import kvcache
        ver = getattr(kvcache, "__version__", "?")
        lines.append(f"kvcache {ver} from {os.path.dirname(os.path.abspath(kvcache.__file__))}")
    except ImportError as exc:
        lines.append(f"kvcache NOT IMPORTABLE: {exc}")
    missing = missing_peers()
    peers = []
    for impl in IMPLS:
        dist = impl.distribution
        if impl.role != "peer" or dist in missing or any(p.split()[0] == dist for p in peers):
            continue
        try:
            peers.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            peers.append(dist)
    lines.append("peers: " + ", ".join(peers))
    return lines, missing


# --------------------------------------------------------------------------- running

def run_pytest(args, env, json_path, log_path) -> int:
    files = sorted(glob.glob(os.path.join(HERE, "bench_*.py")))
    cmd = [sys.executable, "-m", "pytest", *files, "-v", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", f"--benchmark-json={json_path}",
           "--benchmark-columns=min,median,rounds", "--benchmark-sort=name",
           "--kv-size", "quick" if args.quick else "full",
           "--benchmark-max-time", "0.1" if args.quick else "0.3",
           "--benchmark-min-rounds", "3" if args.quick else "5",
           "--benchmark-timer", TIMERS[args.timer],
           "-m", "not memsmoke", "-o", "console_output_style=classic"]
    if args.k:
        cmd += ["-k", args.k]
    cmd += args.pytest_args
    print(f"running {len(files)} benchmark file(s): "
          + ", ".join(os.path.basename(f) for f in files))
    status = re.compile(r"::(\w+)\[?(.*?)\]? (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)\b")
    tty = sys.stdout.isatty()
    counts, current = {}, None
    start = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env, cwd=os.path.dirname(json_path))
        for line in proc.stdout:
            log.write(line)
            m = status.search(line)
            if not m:
                continue
            test, param, outcome = m.groups()
            counts[outcome] = counts.get(outcome, 0) + 1
            elapsed = time.monotonic() - start
            if outcome != "PASSED" or args.verbose:
                print(("\n" if tty else "") + f"  {outcome:7s} {test}[{param}]", flush=True)
            elif tty:
                print(f"\r  {sum(counts.values())} done, {test} ({elapsed:.0f}s)\033[K",
                      end="", flush=True)
            elif test != current:
                print(f"  > {test} ... ({elapsed:.0f}s)", flush=True)
            current = test
        rc = proc.wait()
    print(("\r" if tty else "") + "  pytest: "
          + ", ".join(f"{v} {k.lower()}" for k, v in sorted(counts.items()))
          + f" in {time.monotonic() - start:.0f}s (log: {os.path.relpath(log_path)})")
    if rc not in (0, 5):
        tail = open(log_path).read().splitlines()
        short = [l for l in tail if l.startswith(("FAILED", "ERROR"))]
        for l in short[:20]:
            print("  " + l)
    return rc


def run_memory(args, env) -> list[dict]:
    import memory
    from kvbench import impls_for

    n = 200_000 if args.quick else 1_000_000
    print(f"memory per entry: {n:,} int -> int entries, RSS growth in a fresh process each")
    out = []
    os.environ.update(env)  # memory.measure passes this environment on to its children
    for impl in impls_for("memory"):
        r = memory.measure(impl.name, n)
        r.update(role=impl.role, policy=impl.policy)
        out.append(r)
        if args.verbose:
            print(f"  {impl.name}: {r}")
    return out


# --------------------------------------------------------------------------- analysis

def load_groups(json_paths, stat) -> dict:
    """Read pytest-benchmark JSON files into {group: [row]}; repeated rows keep their best."""
    groups = {}
    for path in json_paths:
        if os.path.getsize(path) == 0:
            continue                     # -k selected no timed benchmark: pytest wrote nothing
        with open(path) as f:
            data = json.load(f)
        for b in data.get("benchmarks", []):
            extra = b.get("extra_info") or {}
            ops = extra.get("ops") or 1
            st = b["stats"]
            row = {
                "impl": extra.get("impl") or (b.get("param") or b["name"]),
                # rows from files that do not call kvbench.record() compare only by speed
                "role": extra.get("role", "other"), "policy": extra.get("policy", "?"),
                "ns": st[stat] / ops * 1e9, "ops": ops, "rounds": st["rounds"],
                # how far the median round is above the best one: the run's noise
                "spread": st["median"] / st["min"] - 1 if st["min"] > 0 else None,
                "hit_ratio": extra.get("hit_ratio"),
            }
            rows = groups.setdefault(b.get("group") or b["name"], [])
            old = next((r for r in rows if r["impl"] == row["impl"]), None)
            if old is None:
                rows.append(row)
            elif row["ns"] < old["ns"]:
                rows[rows.index(old)] = row
    return groups


def annotate(rows) -> dict:
    """Add ratio columns to the rows of one group; return the group's reference points."""
    by_role = {}
    for r in rows:
        by_role.setdefault(r["role"], []).append(r)
    base = by_role.get("baseline", [None])[0]
    loop = by_role.get("loop", [None])[0]
    peers = by_role.get("peer", [])
    best = min(peers, key=lambda r: r["ns"]) if peers else None
    timed = [r for r in rows if r["role"] != "loop"]
    fastest = min(timed, key=lambda r: r["ns"]) if timed else None
    for r in rows:
        r["x_fastest"] = r["ns"] / fastest["ns"] if fastest and r["role"] != "loop" else None
        r["x_dict"] = r["ns"] / base["ns"] if base else None
        r["x_dict_noloop"] = None
        if base and loop and r["role"] != "loop" and base["ns"] > loop["ns"]:
            r["x_dict_noloop"] = (r["ns"] - loop["ns"]) / (base["ns"] - loop["ns"])
        r["x_best_peer"] = r["ns"] / best["ns"] if best and r["role"] != "loop" else None
    rows.sort(key=lambda r: (r["role"] != "loop", r["ns"]))
    return {"baseline": base, "loop": loop, "best_peer": best}


#: Every column of the tables, explained once at the top of the report (print_legend).
COLUMNS = [
    ("ns/op", "time of one operation: a round's time divided by the operations in it"),
    ("ms/round", "(or s, µs, ns) time of one whole round, where the benchmark does not count "
                 "its operations"),
    ("vs dict", "time over the plain dict's in the same workload (below 1.00: faster)"),
    ("vs dict, own cost", "the same after taking the empty loop's time from both: the "
                          "operation's own cost"),
    ("vs best peer", "time over the fastest other cache library (any policy); below 1.00: "
                     "faster than every one"),
    ("vs fastest", "time over the fastest row, where there is no dict or library to compare"),
    ("hit %", "share of accesses that found their key"),
    ("bytes", "memory per entry: the process's growth in resident memory over the entries"),
    ("rounds", "timed repetitions; the figure shown is the {stat} of them"),
    ("noise", "how far the median round is above the best one (large: a disturbed run)"),
]


def print_legend(stat):
    """Explain each column of the tables once, before the first table."""
    print(f"\nHow to read the tables (one per workload; * marks kvcache's rows; {stat} of the "
          "rounds, process CPU time unless --timer wall):")
    for name, text in COLUMNS:
        print(f"  {name:18s} {text.format(stat=stat)}")


def _columns(rows, refs):
    """The ratio columns that mean something for this group: (header, key)."""
    cols = []
    if refs["baseline"]:
        cols.append(("vs dict", "x_dict"))
        if refs["loop"]:
            cols.append(("vs dict, own cost", "x_dict_noloop"))
    if refs["best_peer"]:
        cols.append(("vs best peer", "x_best_peer"))
    if not cols:
        cols.append(("vs fastest", "x_fastest"))
    return cols


def _fmt(x, spec="5.2f"):
    return format(x, spec) if x is not None else ""


def print_group(name, rows, refs, stat):
    ops = rows[0]["ops"]
    cols = _columns(rows, refs)
    has_hits = any(r["hit_ratio"] is not None for r in rows)
    best = refs["best_peer"]
    if ops > 1:
        per, div, head_t = f"{ops:,} operations per round", 1.0, "ns/op"
    else:
        div, unit = _time_scale([r["ns"] for r in rows])
        per, head_t = "time per round", f"{unit}/round"
    title = group_title(name)
    print(f"\n{title}" + (f"  [{name}]" if title != name else "") + f"  ({per})"
          + (f"  fastest other library: {best['impl']}" if best else ""))
    width = max([26] + [len(row_name(name, r["impl"])) for r in rows])
    head = f"  {'implementation':{width}s} {head_t:>11s}"
    for t, _ in cols:
        head += f" {t:>{max(7, len(t))}s}"
    if has_hits:
        head += f" {'hit %':>6s}"
    head += f" {'rounds':>6s} {'noise':>6s}"
    print(head)
    for r in rows:
        mark = "*" if _role(r, name) == "kvcache" else " "
        val = f"{r['ns']:11.1f}" if ops > 1 else f"{r['ns'] / div:11.4g}"
        line = f" {mark}{row_name(name, r['impl']):{width}s} {val}"
        for t, key in cols:
            line += f" {_fmt(r[key]):>{max(7, len(t))}s}"
        if has_hits:
            hit = r["hit_ratio"] * 100 if r["hit_ratio"] is not None else None
            line += f" {_fmt(hit, '6.1f'):>6s}"
        noise = f"{r['spread'] * 100:5.0f}%" if r["spread"] is not None and r["rounds"] > 1 else ""
        print(line + f" {r['rounds']:6d} {noise:>6s}")


def print_memory(mem):
    ok = [r for r in mem if "per_entry" in r]
    base = next((r for r in ok if r["role"] == "baseline"), None)
    peers = [r for r in ok if r["role"] == "peer"]
    best = min(peers, key=lambda r: r["per_entry"]) if peers else None
    n = ok[0]["n"] if ok else 0
    print(f"\nmemory per entry  ({n:,} int -> int entries; the key and value objects "
          "are not counted)" + (f"  fastest other library: {best['impl']}" if best else ""))
    print(f"  {'implementation':26s} {'bytes':>9s} {'vs dict':>7s} {'vs best peer':>12s}")
    for r in sorted(ok, key=lambda r: r["per_entry"]):
        mark = "*" if r["role"] == "kvcache" else " "
        xd = r["per_entry"] / base["per_entry"] if base else None
        xb = r["per_entry"] / best["per_entry"] if best else None
        flag = "" if r["verified"] else "  (CONTENTS WRONG)"
        print(f" {mark}{r['impl']:26s} {r['per_entry']:9.1f} {_fmt(xd):>7s} {_fmt(xb):>12s}{flag}")
    for r in mem:
        if "per_entry" not in r:
            print(f"  {r['impl']:26s} {r.get('missing') or r.get('error')}")


def goals(groups, mem) -> list[dict]:
    """Evaluate kvcache's performance targets on this run's figures."""
    out = []

    def row(group, impl):
        return next((r for r in groups.get(group, []) if r["impl"] == impl), None)

    def faster_than(group, impl, peer_filter, what):
        me = row(group, impl)
        peers = [r for r in groups.get(group, []) if r["role"] == "peer" and peer_filter(r)]
        if me is None or not peers:
            return
        best = min(peers, key=lambda r: r["ns"])
        ratio = me["ns"] / best["ns"]
        out.append({"goal": f"{group}: {impl} faster than every {what}", "value": ratio,
                    "text": f"{ratio:.2f}x {best['impl']}", "ok": ratio < 1})

    for g in GET_GROUPS:
        me = row(g, "kvcache.LRUCache")
        if me and me["x_dict_noloop"] is not None:
            v = me["x_dict_noloop"]
            out.append({"goal": f"{g}: kvcache.LRUCache <= {GET_HIT_GOAL}x dict (loop cost "
                                f"subtracted)", "value": v, "text": f"{v:.2f}x",
                        "ok": v <= GET_HIT_GOAL})
        faster_than(g, "kvcache.LRUCache", lambda r: r["policy"].startswith("lru"), "peer LRU")
    for g in FASTER_GROUPS:
        faster_than(g, "kvcache.LRUCache", lambda r: True, "peer")
        faster_than(g, "kvcache.LRUCache", lambda r: r["policy"].startswith("lru"), "peer LRU")
    # The other policies against their own kind: informative, not targets.
    for g in GET_GROUPS + FASTER_GROUPS:
        for pol in ("lfu", "fifo", "rr"):
            faster_than(g, f"kvcache.{pol.upper()}Cache", lambda r, p=pol: r["policy"] == p,
                        f"peer {pol.upper()}")
    me = next((r for r in mem if r["impl"] == "kvcache.LRUCache" and "per_entry" in r), None)
    peers = [r for r in mem if r["role"] == "peer" and "per_entry" in r]
    if me and peers:
        best = min(peers, key=lambda r: r["per_entry"])
        out.append({"goal": "memory: kvcache.LRUCache fewer bytes per entry than every peer",
                    "value": me["per_entry"] / best["per_entry"],
                    "text": f"{me['per_entry']:.1f} B vs {best['per_entry']:.1f} B "
                            f"({best['impl']})", "ok": me["per_entry"] < best["per_entry"]})
    # Issue 5: the adaptive policy's price next to LRUCache's, and its TinyLFU peers.
    for g in GET_GROUPS:
        tl, lru = row(g, "kvcache.TinyLFUCache"), row(g, "kvcache.LRUCache")
        if tl and lru:
            v = tl["ns"] / lru["ns"]
            out.append({"goal": f"{g}: kvcache.TinyLFUCache <= {TINYLFU_GOAL}x kvcache.LRUCache",
                        "value": v, "text": f"{v:.2f}x", "ok": v <= TINYLFU_GOAL})
    for g in GET_GROUPS + FASTER_GROUPS:
        faster_than(g, "kvcache.TinyLFUCache", lambda r: r["policy"] == "tinylfu", "peer TinyLFU")
    tl = next((r for r in mem if r["impl"] == "kvcache.TinyLFUCache" and "per_entry" in r), None)
    if tl and me:
        v = tl["per_entry"] / me["per_entry"]
        out.append({"goal": f"memory: kvcache.TinyLFUCache <= {TINYLFU_GOAL}x kvcache.LRUCache",
                    "value": v, "text": f"{v:.2f}x ({tl['per_entry']:.1f} B)",
                    "ok": v <= TINYLFU_GOAL})
    return out


# --------------------------------------------------------------------------- names and units

#: What each workload measures, in words, by pytest-benchmark group.
GROUP_TITLES = {
    "get-hit-int": "lookup hit, int keys",
    "get-hit-str": "lookup hit, str keys",
    "get-hit-int-shuffled": "lookup hit, int keys in random order",
    "get-miss": "lookup miss",
    "set-evict": "insert into a full cache (evicts)",
    "zipf-memo": "memoization, Zipf(1.0) keys",
    "memory": "memory per entry",
    "vector-find-rows": "VectorCache: find the rows of 1M keys",
    "vector-get-many-384": "VectorCache.get_many, 384-wide rows",
    "vector-get-many-384-out": "VectorCache.get_many into a given array, 384-wide rows",
    "lru-get-many": "LRUCache.get_many of an int64 array",
    "hit path: f(int)": "decorator hit, f(int)",
    "hit path: f(str, str)": "decorator hit, f(str, str)",
    "zipf memoization: 1M keys, maxsize 10k": "decorator memoization, Zipf keys, maxsize 10k",
    "replay 300k accesses": "simulate.replay of 300k accesses",
    "hit (1000 lookups of present keys)": "1000 lookup hits",
    "ttl get-hit (10k lookups)": "TTL cache: 10k lookup hits",
    "ttl set-with-eviction (10k new keys into 1k)": "TTL cache: 10k inserts into a full 1k cache",
    "expiry sweep (random per-entry TTLs)": "expiring entries with random TTLs",
    "llm-block-manager (match+allocate+commit+release, 100k blocks, full)":
        "LLM block manager: match, allocate, commit, release (100k blocks)",
    "llm-ttft (512 shared + 32 unique prompt tokens)":
        "LLM time to first token (512 shared + 32 own prompt tokens)",
    "llm-decode-512 (one new token at 512 tokens of context)":
        "LLM decoding one token at 512 tokens of context",
    "redis-hit": "lookup hit c[k]: local tier vs Redis",
    "redis-hit-get": "lookup hit .get(k): local tier",
    "redis-hit-in": "membership k in c: local tier",
    "redis-zipf": "Zipf read-mostly workload over Redis",
    "redis-invalidation": "write until the other process's copy is gone",
    "redis-batch": "1,000 keys, cold local tier: batch vs MGET vs a loop",
}

#: Readable names of the rows whose benchmark file does not call kvbench.record(): their
#: label is then pytest's test name or parameter id.  Keyed by group first (ids like "none"
#: or "kvcache" mean different things in different groups), then by id in any group.
ROW_NAMES = {
    "vector-find-rows": {"lru-refresh": "find rows, refresh LRU order",
                         "no-refresh": "find rows, leave LRU order"},
    "llm-block-manager (match+allocate+commit+release, 100k blocks, full)": {
        "kvcache": "kvcache.llm.PrefixCache (token lists)",
        "kvcache-numpy": "kvcache.llm.PrefixCache (numpy tokens)",
        "python": "same algorithm in pure Python"},
    "llm-ttft (512 shared + 32 unique prompt tokens)": {
        "none": "no cache", "kv": "KV cache", "prefix": "KV cache + shared prefix reuse"},
    "llm-decode-512 (one new token at 512 tokens of context)": {
        "none": "no cache (recompute)", "kv": "KV cache"},
    "replay 300k accesses": {"lru": "LRU", "lfu": "LFU", "fifo": "FIFO", "rr": "random",
                             "tinylfu": "TinyLFU"},
    "*": {
        "test_vector_get_many_384": "VectorCache.get_many",
        "test_numpy_gather_384": "numpy slab[rows] (no cache: the floor)",
        "test_dict_loop_384": "dict of numpy rows, Python loop",
        "test_vector_get_many_384_out": "VectorCache.get_many(out=)",
        "test_numpy_take_384_out": "numpy.take(out=) (no cache: the floor)",
        "test_lru_get_many": "LRUCache.get_many",
        "test_lru_get_loop": "[c.get(k) for k in keys]",
        "test_hit_lrucache": "LRUCache",
        "test_hit_tiered_local": "TieredCache, local hit",
        "test_hit_redis_get": "redis-py GET (100 keys)",
        "test_hit_get_lrucache": "LRUCache",
        "test_hit_get_tiered_local": "TieredCache, local hit",
        "test_hit_in_lrucache": "LRUCache",
        "test_hit_in_tiered_local": "TieredCache, local hit",
        "local10pct": "TieredCache, local tier 10% of keys",
        "local100pct": "TieredCache, local tier 100% of keys",
        "test_zipf_redis_py": "redis-py alone",
        "test_invalidation_latency": "TieredCache invalidation",
        "test_batch_raw_mget": "redis-py MGET (no local tier: the floor)",
        "test_batch_tiered_get_many": "TieredCache.get_many",
        "test_batch_tiered_loop_get": "loop of TieredCache.get",
        "test_embedding_stream": "embedding model behind VectorCache",
    },
}
_SWEEP = re.compile(r"^(\d+)(?:-([\d.]+))?$")


def _count(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}")


def row_name(group: str, impl: str) -> str:
    """Return the readable name of a row (a test id or parameter id made into words)."""
    name = ROW_NAMES.get(group, {}).get(impl) or ROW_NAMES["*"].get(impl)
    if name:
        return name
    m = _SWEEP.match(impl)
    if group.startswith("expiry sweep") and m:
        n, frac = int(m.group(1)), m.group(2)
        if frac is None:                    # test_expiry_sweep_baseline_pop: the floor
            return f"pop() one by one, {_count(n)} entries"
        return f"expire(), {_count(n)} entries, {float(frac):.0%} due"
    return impl


def group_title(group: str) -> str:
    """Return what a workload measures, in words (the group name when it is not known)."""
    return GROUP_TITLES.get(group, group)


def unit_of(rows) -> str:
    """Return what one timed figure of these rows is: per operation only if ops were recorded."""
    ops = rows[0].get("ops") or 1
    return "operation" if ops > 1 else "round"


_KVCACHE_NAMES = ("kvcache", "VectorCache", "LRUCache", "TieredCache", "TinyLFUCache")


def _role(row, group="") -> str:
    # Files that do not call record() give no role; a kvcache row still shows as kvcache.
    if row["role"] == "other" and row_name(group, row["impl"]).startswith(_KVCACHE_NAMES):
        return "kvcache"
    return row["role"]


def _time_scale(values):
    """Return (divisor, unit) putting the largest of `values` (ns) in a readable range."""
    top = max(values)
    for div, unit in ((1e9, "s"), (1e6, "ms"), (1e3, "µs")):
        if top >= div * 10:
            return div, unit
    return 1.0, "ns"


# --------------------------------------------------------------------------- charts

ROLE_COLORS = {"kvcache": "#d62728", "peer": "#1f77b4", "baseline": "#444444",
               "reference": "#9e9e9e", "other": "#2ca02c"}
ROLE_LABELS = {"kvcache": "kvcache", "peer": "other cache libraries", "baseline": "dict",
               "reference": "stdlib reference (OrderedDict LRU, functools)",
               "other": "other implementation"}
#: Per-group charts: file suffix -> (title, groups it holds, by prefix of the group name).
FAMILIES = [
    ("core", "Mapping operations (kvcache vs dict and peers)",
     ("get-", "set-evict", "zipf-memo", "memory")),
    ("decorators", "Memoizing decorators", ("hit path", "zipf memoization")),
    ("ttl", "Expiry (TTL)", ("ttl ", "expiry")),
    ("batch", "Batch and vector lookups", ("vector-", "lru-get-many", "embed")),
    ("llm", "LLM serving", ("llm-",)),
    ("redis", "Redis tier", ("redis-",)),
    ("simulate", "Simulator", ("replay", "hit (")),
]


def summary_rows(groups, mem):
    """Return [(workload, {"kvcache"|"best peer"|"dict": (ratio to dict, row name)})].

    One entry per workload that has a kvcache.LRUCache row (the fastest kvcache row when
    there is none), a dict row and at least one peer; ratios are time (memory: bytes) over
    the dict's, so dict is 1.
    """
    out = []
    items = [(g, rows, "ns") for g, rows in groups.items()]
    mem_ok = [r for r in mem if "per_entry" in r]
    if mem_ok:
        items.append(("memory", mem_ok, "per_entry"))
    for g, rows, key in items:
        base = next((r for r in rows if r["role"] == "baseline"), None)
        kv = [r for r in rows if r["role"] == "kvcache"]
        peers = [r for r in rows if r["role"] == "peer"]
        if not (base and kv and peers) or not base[key]:
            continue
        me = next((r for r in kv if r["impl"] == "kvcache.LRUCache"), None) or min(
            kv, key=lambda r: r[key])
        best = min(peers, key=lambda r: r[key])
        out.append((g, {"kvcache": (me[key] / base[key], me["impl"]),
                        "best peer": (best[key] / base[key], best["impl"]),
                        "dict": (1.0, "dict")}))
    return out


def summary_figure(groups, mem, plt):
    """Draw one bar group per workload: kvcache, the best peer and dict, as ratios to dict.

    Return (figure, axes, workloads drawn), or None when no workload has all three.
    """
    data = summary_rows(groups, mem)
    if not data:
        return None
    series = [("kvcache", ROLE_COLORS["kvcache"]), ("best peer", ROLE_COLORS["peer"]),
              ("dict", ROLE_COLORS["baseline"])]
    kv_names = sorted({d["kvcache"][1] for _, d in data})
    names = {"kvcache": ", ".join(kv_names), "best peer": "fastest other library (named under the "
             "workload)", "dict": "dict"}
    fig, ax = plt.subplots(figsize=(max(6.5, 1.6 * len(data) + 1.5), 4.6))
    width = 0.27
    top = max(v[0] for _, d in data for v in d.values())
    for i, (label, color) in enumerate(series):
        xs = [j + (i - 1) * width for j in range(len(data))]
        vals = [d[label][0] for _, d in data]
        # The legend is built from these bars, so its colours are the bars' colours.
        ax.bar(xs, vals, width, color=color, label=names[label])
        for x, v in zip(xs, vals):
            ax.text(x, v + top * 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(data)))
    # Wrapped so that neighbouring workloads' labels never run into each other.
    ax.set_xticklabels([textwrap.fill(group_title(g), 16) + "\n(" + d["best peer"][1] + ")"
                        for g, d in data], fontsize=7)
    ax.axhline(1.0, color=ROLE_COLORS["baseline"], linewidth=0.6, linestyle=":")
    ax.set_ylim(0, top * 1.15)
    ax.set_ylabel("time relative to dict (memory: bytes)\nlower is better", fontsize=8)
    ax.set_title(f"{', '.join(kv_names)} vs the fastest other library vs dict", fontsize=10)
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return fig, ax, [g for g, _ in data]


def _panel(ax, group, rows, is_mem):
    key = "per_entry" if is_mem else "ns"
    rows = sorted((r for r in rows if r["role"] != "loop"), key=lambda r: r[key], reverse=True)
    vals = [r[key] for r in rows]
    if is_mem:
        div, xlabel = 1.0, "bytes per entry"
    else:
        div, unit = _time_scale(vals)
        xlabel = f"{unit} per {unit_of(rows)}"
        if unit_of(rows) == "operation":
            xlabel += f" ({rows[0]['ops']:,} per round)"
    scaled = [v / div for v in vals]
    roles = [_role(r, group) for r in rows]
    ax.barh(range(len(rows)), scaled, color=[ROLE_COLORS.get(x, ROLE_COLORS["other"])
                                             for x in roles])
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([row_name(group, r["impl"]) for r in rows], fontsize=7)
    # A linear axis with the value on each bar: no overlapping log-scale tick labels.
    for i, v in enumerate(scaled):
        ax.text(v, i, f" {v:,.0f}" if v >= 100 else f" {v:.3g}", va="center", fontsize=6)
    ax.set_xlim(0, max(scaled) * 1.2 if scaled else 1)
    ax.set_title(group_title(group), fontsize=9)
    ax.set_xlabel(xlabel + ", lower is better", fontsize=7)
    ax.tick_params(axis="x", labelsize=6)
    return set(roles)


def group_figures(groups, mem, plt):
    """Draw one figure per family of workloads (FAMILIES); return [(file suffix, figure)]."""
    from matplotlib.patches import Patch

    panels = [(g, rows, False) for g, rows in groups.items()]
    mem_ok = [r for r in mem if "per_entry" in r]
    if mem_ok:
        panels.append(("memory", mem_ok, True))
    families = {}
    for g, rows, is_mem in panels:
        fam = next((f for f in FAMILIES if g.startswith(f[2])), ("other", "Other", ()))
        families.setdefault(fam, []).append((g, rows, is_mem))
    out = []
    for (suffix, title, _), items in families.items():
        ncols = 2 if len(items) > 1 else 1
        nrows = math.ceil(len(items) / ncols)
        height = max(sum(r["role"] != "loop" for r in rows) for _, rows, _ in items) * 0.2 + 1.1
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.2 * ncols, height * nrows + 0.6),
                                 squeeze=False)
        seen = set()
        for ax, (g, rows, is_mem) in zip(axes.flat, items):
            seen |= _panel(ax, g, rows, is_mem)
        for ax in list(axes.flat)[len(items):]:
            ax.axis("off")
        # The legend lists exactly the roles drawn, in the colours they were drawn with.
        handles = [Patch(color=ROLE_COLORS[r], label=ROLE_LABELS[r]) for r in ROLE_COLORS
                   if r in seen]
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 1.0))
        fig.suptitle(title, fontsize=10, y=1.0 - 0.35 / (height * nrows + 0.6))
        fig.tight_layout(rect=(0, 0, 1, 1 - 0.6 / (height * nrows + 0.6)))
        out.append((suffix, fig))
    return out


def chart(groups, mem, out_dir) -> list[str]:
    """Write bench.png (the summary) and bench-<family>.png (every workload); return paths."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return []
    figures = []
    drawn = summary_figure(groups, mem, plt)
    if drawn:
        figures.append(("bench.png", drawn[0]))
    figures += [(f"bench-{suffix}.png", fig) for suffix, fig in group_figures(groups, mem, plt)]
    paths = []
    for name, fig in figures:
        paths.append(os.path.join(out_dir, name))
        fig.savefig(paths[-1], dpi=110 if name == "bench.png" else 100)
        plt.close(fig)
    return paths


# --------------------------------------------------------------------------- main

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Benchmark kvcache against dict and peers.")
    parser.add_argument("--quick", action="store_true", help="shorter workloads, fewer rounds")
    parser.add_argument("-k", metavar="EXPR", help="pytest -k expression selecting benchmarks "
                        "(memory runs only when EXPR mentions 'memory')")
    parser.add_argument("--no-memory", action="store_true", help="skip memory per entry")
    parser.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="run the timed suite N times and keep each row's best run "
                             "(steadier figures on a busy machine)")
    parser.add_argument("--timer", choices=sorted(TIMERS), default=DEFAULT_TIMER,
                        help=f"cpu: process CPU time, excludes time descheduled by other load; "
                             f"wall: elapsed time (default {DEFAULT_TIMER})")
    parser.add_argument("--stat", choices=("min", "median", "mean"), default="min",
                        help="statistic of the rounds to report (default min: least noisy)")
    parser.add_argument("--out", default=os.path.join(HERE, "out"), help="output folder")
    parser.add_argument("--from-json", metavar="PATH",
                        help="no benchmark run: print and chart an earlier run's results.json "
                             "or summary.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    sys.path.insert(0, HERE)
    env = _setup_paths()
    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.abspath(args.from_json or os.path.join(args.out, "results.json"))
    lines, missing = _describe_libs()
    print(f"Python {platform.python_version()} on {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {args.timer} time; " + "; ".join(lines))
    for dist, reason in missing.items():
        print(f"missing peer: {dist} (pip install {dist}) -- its rows are skipped")

    rc = 0
    saved = None
    if args.from_json:
        json_paths = [json_path]
        with open(json_path) as f:
            data = json.load(f)
        if "groups" in data:             # a summary.json: the tables as data, memory included
            saved = data
    else:
        json_paths = []
        for i in range(max(1, args.repeat)):
            path = json_path if i == 0 else json_path.replace(".json", f"-{i + 1}.json")
            if os.path.exists(path):
                os.remove(path)
            if args.repeat > 1:
                print(f"pass {i + 1} of {args.repeat}")
            r = run_pytest(args, env, path, os.path.join(args.out, "pytest.log"))
            if r not in (0, 5) or rc == 0:
                rc = r
            json_paths.append(path)
    if saved is not None:
        groups, args.stat = saved["groups"], saved.get("stat", args.stat)
    else:
        groups = load_groups([p for p in json_paths if os.path.exists(p)], args.stat)
    refs = {g: annotate(rows) for g, rows in groups.items()}
    if groups:
        print_legend(args.stat)
    for g, rows in groups.items():
        print_group(g, rows, refs[g], args.stat)

    mem = saved.get("memory", []) if saved is not None else []
    if mem:
        print_memory(mem)
    want_mem = not args.no_memory and not args.from_json and (
        not args.k or "memory" in args.k)
    if want_mem:
        print()
        mem = run_memory(args, env)
        print_memory(mem)

    results = goals(groups, mem)
    if results:
        print("\nkvcache's performance targets (measured in this run, not asserted)")
        for r in results:
            print(f"  [{'met ' if r['ok'] else 'MISS'}] {r['goal']}: {r['text']}")

    summary = {"python": platform.python_version(), "stat": args.stat, "quick": args.quick,
               "timer": args.timer, "repeat": args.repeat,
               "missing": missing, "groups": groups, "memory": mem, "goals": results}
    summary_path = os.path.join(args.out, "summary.json")
    if os.path.abspath(summary_path) != json_path:   # never overwrite the file being read
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=1)
    pngs = chart(groups, mem, args.out)
    if pngs:
        print(f"\ncharts: {os.path.relpath(pngs[0])} (summary), "
              + ", ".join(os.path.basename(p) for p in pngs[1:]))
    print(f"summary: {os.path.relpath(summary_path)}")
    if rc not in (0, 5):
        print(f"pytest exited with {rc}: some benchmarks failed their checks (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
