"""Run the benchmark suite against the peers and print ns/op and ratios per workload.

    python bench/run.py            # full run (a few minutes on 2 cores)
    python bench/run.py --quick    # shorter streams, fewer rounds
    python bench/run.py -k zipf    # only the workloads/implementations pytest -k selects

Runs every bench/bench_*.py with pytest-benchmark (JSON into bench/out/), measures memory per
entry in a fresh process per implementation, prints one table per workload, checks the
issue's goals, and writes bench/out/summary.json and bench/out/bench.png.
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
GET_HIT_GOAL = 1.5  # issue 2: LRUCache get-hit at most 1.5x dict d[k], loop cost subtracted
TINYLFU_GOAL = 1.3  # issue 5: TinyLFUCache hit cost and bytes per entry at most 1.3x LRUCache's


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


def _columns(rows, refs):
    """The ratio columns that mean something for this group: (header, key)."""
    cols = []
    if refs["baseline"]:
        cols.append(("x dict", "x_dict"))
        if refs["loop"]:
            cols.append(("x dict-loop", "x_dict_noloop"))
    if refs["best_peer"]:
        cols.append(("x best peer", "x_best_peer"))
    if not cols:
        cols.append(("x fastest", "x_fastest"))
    return cols


def _fmt(x, spec="5.2f"):
    return format(x, spec) if x is not None else ""


def print_group(name, rows, refs, stat):
    ops = rows[0]["ops"]
    cols = _columns(rows, refs)
    has_hits = any(r["hit_ratio"] is not None for r in rows)
    best = refs["best_peer"]
    per = f"{ops:,} ops/round" if ops > 1 else "1 op/round: no ops recorded, ns/op is per round"
    print(f"\n{name}  ({per}, ns/op = {stat} of rounds; noise = median/min - 1)"
          + (f"  best peer: {best['impl']}" if best else ""))
    head = f"  {'implementation':26s} {'ns/op':>11s}"
    for title, _ in cols:
        head += f" {title:>{max(7, len(title))}s}"
    if has_hits:
        head += f" {'hit %':>6s}"
    head += f" {'rounds':>6s} {'noise':>6s}"
    print(head)
    for r in rows:
        mark = "*" if r["role"] == "kvcache" else " "
        line = f" {mark}{r['impl']:26s} {r['ns']:11.1f}"
        for title, key in cols:
            line += f" {_fmt(r[key]):>{max(7, len(title))}s}"
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
    print(f"\nmemory per entry  ({n:,} int -> int, key/value objects excluded)"
          + (f"  best peer: {best['impl']}" if best else ""))
    print(f"  {'implementation':26s} {'B/entry':>9s} {'x dict':>7s} {'x best peer':>11s}")
    for r in sorted(ok, key=lambda r: r["per_entry"]):
        mark = "*" if r["role"] == "kvcache" else " "
        xd = r["per_entry"] / base["per_entry"] if base else None
        xb = r["per_entry"] / best["per_entry"] if best else None
        flag = "" if r["verified"] else "  (CONTENTS WRONG)"
        print(f" {mark}{r['impl']:26s} {r['per_entry']:9.1f} {_fmt(xd):>7s} {_fmt(xb):>11s}{flag}")
    for r in mem:
        if "per_entry" not in r:
            print(f"  {r['impl']:26s} {r.get('missing') or r.get('error')}")


def goals(groups, mem) -> list[dict]:
    """Evaluate the benchmark goals of issues 2 and 5 on this run's figures."""
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
    # The other policies against their own kind: informative, not issue goals.
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


# --------------------------------------------------------------------------- chart

def chart(groups, mem, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart")
        return
    panels = [(g, rows) for g, rows in groups.items()]
    mem_ok = [r for r in mem if "per_entry" in r]
    if mem_ok:
        panels.append(("memory per entry", mem_ok))
    if not panels:
        return
    colors = {"kvcache": "#d62728", "peer": "#1f77b4", "baseline": "#555555",
              "reference": "#999999", "loop": "#cccccc", "other": "#2ca02c"}
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    height = max(len(rows) for _, rows in panels) * 0.28 + 1.2
    fig, axes = plt.subplots(nrows, ncols, figsize=(13, height * nrows), squeeze=False)
    for ax, (title, rows) in zip(axes.flat, panels):
        is_mem = title == "memory per entry"
        key = "per_entry" if is_mem else "ns"
        rows = sorted(rows, key=lambda r: r[key], reverse=True)
        vals = [r[key] for r in rows]
        ax.barh([r["impl"] for r in rows], vals, color=[colors.get(r["role"], "#1f77b4")
                                                         for r in rows])
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.0f}", va="center", fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("bytes per entry" if is_mem else "ns per operation, log scale (lower is "
                      "better)", fontsize=8)
        ax.tick_params(labelsize=7)
        if is_mem:
            ax.set_xlim(0, max(vals) * 1.15)
        else:
            # Log scale: the slowest peers are 50x the fastest rows, which would flatten them.
            ax.set_xscale("log")
            ax.set_xlim(min(vals) / 1.5, max(vals) * 2.5)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle("kvcache (red) vs dict (dark grey) and peers (blue)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
                        help="only print/chart an earlier results.json (no pytest run)")
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
    if args.from_json:
        json_paths = [json_path]
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
    groups = load_groups([p for p in json_paths if os.path.exists(p)], args.stat)
    refs = {g: annotate(rows) for g, rows in groups.items()}
    for g, rows in groups.items():
        print_group(g, rows, refs[g], args.stat)

    mem = []
    want_mem = not args.no_memory and not args.from_json and (
        not args.k or "memory" in args.k)
    if want_mem:
        print()
        mem = run_memory(args, env)
        print_memory(mem)

    results = goals(groups, mem)
    if results:
        print("\ngoals (issues 2 and 5; measured in this run, not asserted)")
        for r in results:
            print(f"  [{'met ' if r['ok'] else 'MISS'}] {r['goal']}: {r['text']}")

    summary = {"python": platform.python_version(), "stat": args.stat, "quick": args.quick,
               "timer": args.timer, "repeat": args.repeat,
               "missing": missing, "groups": groups, "memory": mem, "goals": results}
    with open(os.path.join(args.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    png = os.path.join(args.out, "bench.png")
    chart(groups, mem, png)
    if os.path.exists(png):
        print(f"\nchart: {os.path.relpath(png)}   summary: "
              f"{os.path.relpath(os.path.join(args.out, 'summary.json'))}")
    if rc not in (0, 5):
        print(f"pytest exited with {rc}: some benchmarks failed their checks (see above)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
