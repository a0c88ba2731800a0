"""Compare two kvcache builds: alternate ab.py processes before, after, before, after ...

    python bench/abab.py --before /tmp/kvbase                  # after = this tree's build
    python bench/abab.py --before /tmp/kvbase --after /tmp/kvbase -k 3   # A/A: the noise floor
    python bench/abab.py --before OLD -k 4 -- --rounds 3 -w set-evict,zipf-memo

Each side is a folder holding a built ``kvcache/`` package.  Every process runs ab.py on
every kvcache row of every workload (``-i kvcache``); arguments after ``--`` go to ab.py.
The table gives per row the best (minimum) ns/op over all of a side's processes, the
after/before ratio of those minima, and each side's spread (slowest process's best over the
fastest's, minus 1): a ratio inside the spreads, or inside an A/A run's ratios, is noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def run_side(path, extra, tmp, tag):
    """Run one ab.py process on the build in ``path``; return its JSON (ns_per_op, rounds)."""
    out = os.path.join(tmp, f"{tag}.json")
    cmd = [sys.executable, os.path.join(HERE, "ab.py"), "--kvcache-path", path, "-i", "kvcache",
           "--json", out, *extra]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}")
    with open(out) as f:
        return json.load(f)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, metavar="DIR", help="folder holding kvcache/")
    p.add_argument("--after", default=REPO, metavar="DIR",
                   help="folder holding kvcache/ (default: this tree's in-place build)")
    p.add_argument("-k", type=int, default=3, help="alternations (processes per side)")
    args = p.parse_args(argv)
    sides = {"before": os.path.abspath(args.before), "after": os.path.abspath(args.after)}
    print(f"before: {sides['before']}\nafter:  {sides['after']}\n"
          f"{args.k} alternations, ab.py {' '.join(extra) or '(defaults)'}", flush=True)
    runs = {"before": [], "after": []}
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.k):
            for side, path in sides.items():
                got = run_side(path, extra, tmp, f"{side}{k}")
                runs[side].append(got["ns_per_op"])
                rounds.append(got["rounds"])
                print(f"  run {k + 1}/{args.k} {side} done", flush=True)
    print("\nns/op: best over each side's processes (each process: best of its rounds);"
          " runs: processes per side; rounds/run: fewest-most rounds in one process")
    print(f"{'workload':16s} {'row':32s} {'before':>9s} {'after':>9s} {'after/before':>12s}"
          f" {'spread b':>8s} {'spread a':>8s} {'runs':>5s} {'rounds/run':>10s}")
    rows = {}  # (workload, row) in first-seen order, from either side
    for r in runs["before"] + runs["after"]:
        for workload, best in r.items():
            rows.update(dict.fromkeys((workload, row) for row in best))
    for workload, row in rows:
        per = {s: [r[workload][row] for r in runs[s] if row in r.get(workload, {})]
               for s in runs}
        if not (per["before"] and per["after"]):
            print(f"{workload:16s} {row:32s} only measured on the "
                  f"{'before' if per['before'] else 'after'} side")
            continue
        b, a = min(per["before"]), min(per["after"])
        spread = {s: max(v) / min(v) - 1 for s, v in per.items()}
        print(f"{workload:16s} {row:32s} {b:9.1f} {a:9.1f} {a / b:12.3f}"
              f" {spread['before']:8.1%} {spread['after']:8.1%}"
              f" {len(per['before'])}+{len(per['after'])}"
              f" {min(r[workload] for r in rounds if workload in r):>4d}-"
              f"{max(r[workload] for r in rounds if workload in r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
