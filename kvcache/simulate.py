"""Replay key traces through the caches to compare hit ratios, with Belady's OPT as the ceiling.

    >>> import numpy as np
    >>> from kvcache.simulate import replay, opt
    >>> keys = np.array([1, 2, 1, 3, 1, 2], dtype=np.int64)
    >>> replay(keys, "lru", 2), opt(keys, 2)
    (2, 3)

Command line::

    python -m kvcache.simulate TRACE [TRACE ...] --sizes 1000,2000 [--policies lru,tinylfu,opt] [--plot out.png]

A trace is a ``.npy`` file (a 1-D integer array, one key per access) or a text file with one
key per line (a key has no spaces; anything else is rejected as not a trace).  Every access is
a lookup; a miss inserts the key (cold start, whole trace).  Belady's OPT is always reported;
``opt`` may also be named among the policies.  A progress bar shows on a terminal when tqdm is
installed (``pip install kvcache[simulate]``), never in a redirected log.
"""

import argparse
import os
import sys

import numpy as np

from kvcache._core import Cache, FIFOCache, LFUCache, LRUCache, RRCache
from kvcache._simulate import Replayer, opt_hits
from kvcache._tinylfu import TinyLFUCache

__all__ = ["POLICIES", "opt", "replay", "load_trace", "main"]

#: Short names of the policies, mapped to their cache classes.
POLICIES = {
    "lru": LRUCache,
    "lfu": LFUCache,
    "fifo": FIFOCache,
    "rr": RRCache,
    "tinylfu": TinyLFUCache,
    "cache": Cache,
}

_CHUNK = 1 << 20          # accesses per progress step
#: Accepted on the command line: Belady's optimum, reported in the OPT column.
_OPT_NAMES = ("opt", "OPT")


def _policy_class(policy):
    if isinstance(policy, type) and policy in POLICIES.values():
        return policy
    if isinstance(policy, str):
        key = policy.lower()
        if key in POLICIES:
            return POLICIES[key]
        for cls in POLICIES.values():
            if cls.__name__ == policy:
                return cls
    raise ValueError("unknown policy %r; expected one of %s or a class name (%s)" % (
        policy, ", ".join(POLICIES), ", ".join(c.__name__ for c in POLICIES.values())))


def _as_keys(keys):
    arr = np.asarray(keys)
    if arr.ndim != 1:
        raise ValueError("keys must be a 1-D array, not %d-D" % arr.ndim)
    if arr.dtype == np.int64 or arr.dtype == np.uint64:
        return arr
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind in "iub":
        return arr.astype(np.int64)
    raise TypeError("keys must be integers (int64 or uint64), not %s" % arr.dtype)


def _check_maxsize(maxsize):
    if isinstance(maxsize, bool) or not isinstance(maxsize, (int, np.integer)):
        raise TypeError("maxsize must be an int")
    if maxsize < 0:
        raise ValueError("maxsize must be non-negative")
    return int(maxsize)


def replay(keys, policy, maxsize, *, seed=None, progress=None):
    """Return the hits of replaying `keys` through a fresh `policy` cache of `maxsize` entries.

    Each key is looked up and, on a miss, inserted: exactly what a Python loop
    ``if c.get(k, MISS) is MISS: c[k] = v`` over ``cls(maxsize, seed=seed)`` counts, computed in
    compiled code without the GIL.  `policy` is a short name (``"lru"``, ``"tinylfu"``, ...), a
    class name (``"TinyLFUCache"``) or the class.  `progress(done, total)` is called between chunks.
    """
    cls = _policy_class(policy)
    maxsize = _check_maxsize(maxsize)
    arr = _as_keys(keys)
    replayer = Replayer(cls(maxsize, seed=seed))
    n = arr.shape[0]
    if progress is None:
        return int(replayer.feed(arr))
    for start in range(0, n, _CHUNK):
        replayer.feed(arr[start:start + _CHUNK])
        progress(min(start + _CHUNK, n), n)
    return int(replayer.hits)


def opt(keys, maxsize):
    """Return the hits of Belady's optimal policy (it may decline to cache a missed key)."""
    maxsize = _check_maxsize(maxsize)
    arr = _as_keys(keys)
    if arr.shape[0] == 0 or maxsize == 0:
        return 0
    uniq, ids = np.unique(arr, return_inverse=True)
    return int(opt_hits(ids.astype(np.int64, copy=False).ravel(), uniq.shape[0], maxsize))


def load_trace(path):
    """Load a trace: a ``.npy`` integer array, or text with one key per line (non-integers get ids).

    Raise ValueError naming the file when it is not a trace: a binary file that is not ``.npy``,
    or text whose lines are not single keys (prose, markdown, tables: keys have no spaces).
    """
    if str(path).endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ValueError("%s is not a trace: not a readable .npy array (%s)" % (path, exc))
        return _as_keys(arr)
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:       # NUL is valid UTF-8 but never in a text file
        raise ValueError("%s is not a trace: a binary file, expected .npy or text with one key "
                         "per line" % path) from None
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines, 1):
        # One key per line: a line with spaces is a sentence or a table row, not a key.
        if len(line.split()) > 1:
            raise ValueError("%s is not a trace: line %d holds more than one word (%r); expected "
                             "one key per line" % (path, i, line[:40]))
    lines = [line for line in lines if line]
    try:
        return np.array([int(line) for line in lines], dtype=np.int64)
    except (ValueError, OverflowError):
        ids = {}
        return np.array([ids.setdefault(line, len(ids)) for line in lines], dtype=np.int64)


def _progress_bar(label, total):
    """Return a tqdm bar on stderr, or None without tqdm.

    ``disable=None`` makes tqdm draw only on a terminal: a redirected log gets no ``\\r``.
    """
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=label, unit=" accesses", unit_scale=True, leave=False,
                disable=None, file=sys.stderr)


def _parse_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("sizes must be comma-separated integers: %r" % text)
    if not sizes or any(s < 0 for s in sizes):
        raise argparse.ArgumentTypeError("sizes must be non-negative integers")
    return sizes


def _parse_policies(text):
    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name in _OPT_NAMES:
            continue
        try:
            _policy_class(name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc))
    return names


def run(traces, sizes, policies, *, seed=None, stream=None, progress=True):
    """Return {trace: {size: {policy: hit ratio %, "OPT": hit ratio %}}} and print the tables.

    `traces` are paths, or (name, keys) pairs already loaded.  ``opt`` among `policies` is
    Belady's optimum, always reported as the OPT column.
    """
    stream = sys.stdout if stream is None else stream
    policies = [p for p in policies if p not in _OPT_NAMES]
    results = {}
    for trace in traces:
        if isinstance(trace, tuple):
            name, keys = trace
        else:
            name, keys = os.path.splitext(os.path.basename(str(trace)))[0], load_trace(trace)
        n = keys.shape[0]
        rows = results[name] = {}
        bar = _progress_bar(name, n * len(sizes) * len(policies)) if progress else None
        for size in sizes:
            row = rows[size] = {}
            for policy in policies:
                if bar is not None:
                    bar.set_postfix_str("%s, size %d" % (policy, size))
                    step = [0]

                    def advance(done, total, step=step):
                        bar.update(done - step[0])
                        step[0] = done
                else:
                    advance = None
                hits = replay(keys, policy, size, seed=seed, progress=advance)
                row[policy] = 100.0 * hits / n if n else 0.0
            row["OPT"] = 100.0 * opt(keys, size) / n if n else 0.0
        if bar is not None:
            bar.close()
        cols = list(policies) + ["OPT"]
        stream.write("\n%s: %d accesses, %d distinct keys (hit ratio %%)\n" % (
            name, n, np.unique(keys).shape[0] if n else 0))
        stream.write("%10s" % "size" + "".join("%10s" % c for c in cols) + "\n")
        for size in sizes:
            stream.write("%10d" % size + "".join("%10.2f" % rows[size][c] for c in cols) + "\n")
    return results


def plot(results, path):
    """Draw hit ratio against cache size, one panel per trace, one line per policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    names = list(results)
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        sizes = sorted(results[name])
        policies = list(results[name][sizes[0]])
        for policy in policies:
            ax.plot(sizes, [results[name][s][policy] for s in sizes], marker="o", label=policy,
                    linestyle="--" if policy == "OPT" else "-", color="black" if policy == "OPT" else None)
        if len(sizes) > 1 and sizes[0] > 0:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("cache size (entries)")
        ax.set_ylabel("hit ratio (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _check_plot_path(parser, path):
    """Exit with a one-line error unless matplotlib can write a chart to `path`."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.backend_bases import FigureCanvasBase
    except ImportError:
        parser.error("--plot needs matplotlib (pip install matplotlib)")
    if os.path.isdir(path):
        parser.error("--plot %s: is a folder, not a file name" % path)
    ext = os.path.splitext(path)[1].lstrip(".").lower()
    formats = FigureCanvasBase.get_supported_filetypes()
    if ext not in formats:
        parser.error("--plot %s: unknown image type %r; use one of %s" % (
            path, ext, ", ".join("." + f for f in sorted(formats))))
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error("--plot %s: no such folder %s" % (path, folder))
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        parser.error("--plot %s: not writable" % path)


def main(argv=None):
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(prog="python -m kvcache.simulate", description=__doc__.split("\n\n")[0])
    parser.add_argument("traces", nargs="+", help=".npy (1-D integer array) or text file, one key per line")
    parser.add_argument("--sizes", required=True, type=_parse_sizes, help="comma-separated cache sizes")
    parser.add_argument("--policies", default="lru,lfu,fifo,rr,tinylfu", type=_parse_policies,
                        help="comma-separated: %s, opt (default: all but cache; OPT is always "
                             "shown)" % ",".join(POLICIES))
    parser.add_argument("--seed", type=int, default=None, help="hash/RNG seed (default: random)")
    parser.add_argument("--plot", metavar="PNG", help="draw hit ratio against size into this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (it shows "
                        "only on a terminal, with tqdm installed)")
    args = parser.parse_args(argv)
    if args.plot:
        # Checked before the replay, which may take minutes: a bad path must not waste them.
        _check_plot_path(parser, args.plot)
    loaded = []
    for path in args.traces:
        if not os.path.exists(path):
            parser.error("no such trace file: %s" % path)
        try:
            loaded.append((os.path.splitext(os.path.basename(path))[0], load_trace(path)))
        except (ValueError, TypeError) as exc:
            parser.error(str(exc))
    try:
        results = run(loaded, args.sizes, args.policies, seed=args.seed, progress=not args.no_progress)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    if args.plot:
        plot(results, args.plot)
        print("\nplot written to %s" % args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
