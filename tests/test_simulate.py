"""kvcache.simulate: replay equals a Python loop over the class, OPT equals brute force, the CLI."""
import collections
import functools
import itertools
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import kvcache
from kvcache import simulate
from kvcache.simulate import opt, replay


MISS = object()


def loop_hits(cls, keys, maxsize, seed):
    """What replay() promises to equal: look up, insert on a miss, through the public API."""
    c = cls(maxsize, seed=seed)
    hits = 0
    for k in keys.tolist():
        if c.get(k, MISS) is MISS:
            try:
                c[k] = True
            except ValueError:                  # maxsize 0: nothing fits
                pass
        else:
            hits += 1
    return hits


def mixed_trace(n, seed, dtype=np.int64):
    rng = np.random.default_rng(seed)
    hot = rng.zipf(1.3, size=n) % 3000
    loop = np.arange(n) % 1500 + 10_000
    scan = np.arange(n) + 100_000
    pick = rng.random(n)
    keys = np.where(pick < 0.6, hot, np.where(pick < 0.85, loop, scan))
    return keys.astype(dtype)


@pytest.mark.parametrize("policy", sorted(simulate.POLICIES))
@pytest.mark.parametrize("maxsize", [0, 1, 7, 100, 1500])
def test_replay_equals_python_loop(policy, maxsize):
    keys = mixed_trace(12_000, seed=maxsize)
    cls = simulate.POLICIES[policy]
    assert replay(keys, policy, maxsize, seed=3) == loop_hits(cls, keys, maxsize, seed=3)


def test_replay_equals_python_loop_across_buffer_growth():
    # maxsize above the initial 1024-entry buffers: the replay grows them exactly as the class
    keys = mixed_trace(30_000, seed=9)
    for policy in ("tinylfu", "lfu", "rr"):
        cls = simulate.POLICIES[policy]
        assert replay(keys, policy, 5000, seed=4) == loop_hits(cls, keys, 5000, seed=4)


def test_replay_distinguishes_keys_with_equal_python_hash():
    m = 2**61 - 1                               # hash(k) == hash(k + m) for ints
    base = np.array([1, 2, 3, 1 + m, 2 + m, 3 + m] * 50, dtype=np.uint64)
    for policy in ("lru", "tinylfu"):
        cls = simulate.POLICIES[policy]
        assert replay(base, policy, 4, seed=1) == loop_hits(cls, base, 4, seed=1)
        assert replay(base, policy, 6, seed=1) == 6 * 49


def test_replay_uint64_and_negative_int64():
    big = np.array([2**64 - 1, 2**63, 5, 2**64 - 1, 2**63, 5, 7], dtype=np.uint64)
    neg = np.array([-1, -2, -1, -(2**63), -2, -(2**63), 0], dtype=np.int64)
    for keys in (big, neg):
        for policy in ("lru", "tinylfu", "lfu"):
            assert replay(keys, policy, 3, seed=2) == loop_hits(simulate.POLICIES[policy], keys, 3, seed=2)


def test_replay_accepts_names_classes_and_small_int_dtypes():
    keys = np.array([1, 2, 1, 3, 1, 2], dtype=np.int32)
    assert replay(keys, "LRUCache", 2) == replay(keys, kvcache.LRUCache, 2) == replay(keys, "lru", 2) == 2
    assert replay([1, 1, 1], "tinylfu", 1) == 2


@pytest.mark.parametrize("bad, exc", [
    (dict(policy="nope"), ValueError),
    (dict(keys=np.array([1.5, 2.5])), TypeError),
    (dict(keys=np.zeros((2, 2), dtype=np.int64)), ValueError),
    (dict(maxsize=-1), ValueError),
    (dict(maxsize=2.5), TypeError),
])
def test_replay_rejects_bad_arguments(bad, exc):
    args = dict(keys=np.array([1, 2], dtype=np.int64), policy="lru", maxsize=2)
    args.update(bad)
    with pytest.raises(exc):
        replay(args["keys"], args["policy"], args["maxsize"])


def test_replay_progress_callback_sees_the_end():
    keys = mixed_trace(3000, seed=1)
    calls = []
    old = simulate._CHUNK
    simulate._CHUNK = 1000
    try:
        hits = replay(keys, "tinylfu", 50, seed=1, progress=lambda d, n: calls.append((d, n)))
    finally:
        simulate._CHUNK = old
    assert calls == [(1000, 3000), (2000, 3000), (3000, 3000)]
    assert hits == replay(keys, "tinylfu", 50, seed=1)


# ---------------------------------------------------------------------------------------------
# OPT
# ---------------------------------------------------------------------------------------------


def brute_force_opt(keys, size):
    """Best hits over every admission/eviction choice (a miss may also bypass the cache)."""
    keys = tuple(keys)

    @functools.lru_cache(maxsize=None)
    def best(i, cached):
        if i == len(keys):
            return 0
        k = keys[i]
        if k in cached:
            return 1 + best(i + 1, cached)
        options = [best(i + 1, cached)]                         # bypass
        if len(cached) < size:
            options.append(best(i + 1, cached | {k}))
        else:
            for v in cached:
                options.append(best(i + 1, (cached - {v}) | {k}))
        return max(options)

    return best(0, frozenset())


def test_opt_equals_brute_force_on_tiny_traces():
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(1, 11))
        keys = rng.integers(0, int(rng.integers(1, 6)), size=n).astype(np.int64)
        for size in (0, 1, 2, 3):
            assert opt(keys, size) == brute_force_opt(keys.tolist(), size), (keys, size)


def test_opt_exhaustively_on_all_short_traces():
    for n in range(1, 7):
        for keys in itertools.product(range(3), repeat=n):
            arr = np.array(keys, dtype=np.int64)
            for size in (1, 2):
                assert opt(arr, size) == brute_force_opt(keys, size)


def test_opt_bounds_every_policy():
    keys = mixed_trace(20_000, seed=5)
    for size in (10, 300, 2000):
        best = opt(keys, size)
        for policy in simulate.POLICIES:
            assert replay(keys, policy, size, seed=1) <= best
        assert opt(keys, len(np.unique(keys))) == len(keys) - len(np.unique(keys))


# ---------------------------------------------------------------------------------------------
# The trace shipped with the tests (tests/data/mixed_trace.npy), against independent references
# ---------------------------------------------------------------------------------------------

SHIPPED_TRACE = Path(__file__).resolve().parent / "data" / "mixed_trace.npy"


def shipped_trace_keys(n=3000):
    """Make tests/data/mixed_trace.npy (uint16, 6 KB): 60% hot, 25% loop, 15% scan accesses.

    Regenerate with `python -c "import numpy as np, tests.test_simulate as t;
    np.save('tests/data/mixed_trace.npy', t.shipped_trace_keys())"`. Integer arithmetic and no
    random generator, so no numpy release can change it. Hot keys follow a power law (key k
    with probability about 1/k^2, folded into 0..499) drawn through a golden-ratio sequence;
    the loop cycles over 300 keys (500..799); the scan never repeats a key (1000 and up).
    """
    i = np.arange(n, dtype=np.uint64)
    u = ((i * np.uint64(2654435761)) % np.uint64(2**32)).astype(np.float64) / 2**32
    hot = (1.0 / (u + 1e-3)).astype(np.int64) % 500
    loop = 500 + np.arange(n) % 300
    scan = 1000 + np.arange(n)
    phase = np.arange(n) % 20
    return np.where(phase < 12, hot, np.where(phase < 17, loop, scan)).astype(np.uint16)


def reference_lru(keys, size):
    """LRU hits by an OrderedDict, sharing no code with kvcache."""
    od, hits = collections.OrderedDict(), 0
    for k in keys:
        if k in od:
            od.move_to_end(k)
            hits += 1
        elif size:
            if len(od) == size:
                od.popitem(last=False)
            od[k] = None
    return hits


def reference_opt(keys, size):
    """Belady with bypass: on a miss with the cache full, drop whichever of the cached keys
    and the new one is next used farthest in the future (the new one: bypass)."""
    nxt, seen = [0] * len(keys), {}
    for i in range(len(keys) - 1, -1, -1):
        nxt[i] = seen.get(keys[i], float("inf"))
        seen[keys[i]] = i
    cached, hits = {}, 0                        # key -> index of its next use
    for i, k in enumerate(keys):
        if k in cached:
            hits += 1
            cached[k] = nxt[i]
        elif size:
            if len(cached) == size:
                far = max(cached, key=cached.get)
                if cached[far] <= nxt[i]:
                    continue                    # bypass
                del cached[far]
            cached[k] = nxt[i]
    return hits


def test_shipped_trace_is_what_its_docstring_says():
    assert np.array_equal(np.load(SHIPPED_TRACE), shipped_trace_keys())
    assert np.load(SHIPPED_TRACE).dtype == np.uint16


@pytest.mark.parametrize("size", [10, 50, 200, 600])
def test_lru_and_opt_match_independent_references_on_the_shipped_trace(size):
    keys = np.load(SHIPPED_TRACE)
    as_list = keys.tolist()
    assert replay(keys, "lru", size) == reference_lru(as_list, size)
    assert opt(keys, size) == reference_opt(as_list, size)
    # both references find hits at every size: a trace where nothing hits would prove little
    assert 0 < reference_lru(as_list, size) <= reference_opt(as_list, size)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def test_cli_prints_a_table_with_opt(tmp_path, capsys):
    keys = mixed_trace(5000, seed=2)
    npy = tmp_path / "t.npy"
    np.save(npy, keys)
    txt = tmp_path / "words.txt"
    txt.write_text("\n".join(["a", "b", "a", "c", "a", "b"] * 20) + "\n")
    assert simulate.main([str(npy), str(txt), "--sizes", "10,100", "--policies", "lru,tinylfu",
                          "--seed", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "OPT" in out and "tinylfu" in out and "t:" in out and "words:" in out
    row = [line.split() for line in out.splitlines() if line.split()[:1] == ["100"]][0]
    lru, tiny, best = map(float, row[1:4])
    assert lru == round(100 * replay(keys, "lru", 100, seed=1) / len(keys), 2)
    assert tiny == round(100 * replay(keys, "tinylfu", 100, seed=1) / len(keys), 2)
    assert best == round(100 * opt(keys, 100) / len(keys), 2)


def test_cli_replays_the_shipped_trace(capsys):
    assert simulate.main([str(SHIPPED_TRACE), "--sizes", "50", "--policies", "lru",
                          "--no-progress"]) == 0
    row = [line.split() for line in capsys.readouterr().out.splitlines()
           if line.split()[:1] == ["50"]][0]
    keys = np.load(SHIPPED_TRACE)
    assert float(row[1]) == round(100 * reference_lru(keys.tolist(), 50) / len(keys), 2)


def test_cli_plot(tmp_path, capsys):
    npy = tmp_path / "t.npy"
    np.save(npy, mixed_trace(2000, seed=3))
    png = tmp_path / "out.png"
    argv = [str(npy), "--sizes", "10,100", "--policies", "lru,tinylfu", "--plot", str(png)]
    try:
        import matplotlib  # noqa: F401
    except ImportError:                          # optional dependency: a clear error instead
        with pytest.raises(SystemExit):
            simulate.main(argv)
        assert "needs matplotlib" in capsys.readouterr().err
        return
    assert simulate.main(argv) == 0
    assert png.stat().st_size > 1000


def test_cli_rejects_bad_input(tmp_path, capsys):
    with pytest.raises(SystemExit):
        simulate.main([str(tmp_path / "missing.npy"), "--sizes", "10"])
    npy = tmp_path / "t.npy"
    np.save(npy, np.arange(10))
    with pytest.raises(SystemExit):
        simulate.main([str(npy), "--sizes", "ten"])
    with pytest.raises(SystemExit):
        simulate.main([str(npy), "--sizes", "10", "--policies", "lru,bogus"])
    np.save(npy, np.array([0.5, 1.5]))
    with pytest.raises(SystemExit):
        simulate.main([str(npy), "--sizes", "10"])


def test_load_trace_text_of_integers(tmp_path):
    p = tmp_path / "ints.txt"
    p.write_text("1\n2\n\n3\n18446744073709551615\n1\n")
    got = simulate.load_trace(p)                # beyond int64: read as labels, given dense ids
    assert got.tolist() == [0, 1, 2, 3, 0]
    p.write_text("1\n2\n2\n")
    assert simulate.load_trace(p).tolist() == [1, 2, 2]


# ---------------------------------------------------------------------------------------------
# Command line: what a new user runs into
# ---------------------------------------------------------------------------------------------


def test_cli_accepts_opt_as_a_policy(tmp_path, capsys):
    # The README names Belady's `opt`: `--policies lru,opt` works and OPT is not doubled.
    npy = tmp_path / "t.npy"
    keys = mixed_trace(3000, seed=5)
    np.save(npy, keys)
    assert simulate.main([str(npy), "--sizes", "50", "--policies", "lru,opt", "--no-progress"]) == 0
    out = capsys.readouterr().out
    head = next(line.split() for line in out.splitlines() if line.split()[:1] == ["size"])
    assert head == ["size", "lru", "OPT"]
    row = next(line.split() for line in out.splitlines() if line.split()[:1] == ["50"])
    assert float(row[2]) == round(100 * opt(keys, 50) / len(keys), 2)


class _Stderr:
    """A stand-in for sys.stderr that says whether it is a terminal."""

    def __init__(self, tty):
        import io
        self.buf, self.tty = io.StringIO(), tty

    def isatty(self):
        return self.tty

    def write(self, s):
        return self.buf.write(s)

    def flush(self):
        pass


@pytest.mark.parametrize("tty", [True, False])
def test_cli_progress_on_a_terminal_only(tmp_path, monkeypatch, capsys, tty):
    pytest.importorskip("tqdm")
    npy = tmp_path / "t.npy"
    # On a terminal, a short trace (a bar used to need 2M accesses); in a log, a long one (whose
    # bar used to write carriage returns there).
    np.save(npy, mixed_trace(5000 if tty else 2 * simulate._CHUNK + 1, seed=6))
    err = _Stderr(tty)
    monkeypatch.setattr("sys.stderr", err)
    assert simulate.main([str(npy), "--sizes", "10", "--policies", "lru"]) == 0
    text = err.buf.getvalue()
    if tty:
        assert "accesses" in text and "\r" in text   # a tqdm bar, redrawn in place
    else:
        assert text == ""                            # a log gets no bar and no carriage returns


def test_cli_progress_without_tqdm_is_silent(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm", None)   # import tqdm raises ImportError
    npy = tmp_path / "t.npy"
    np.save(npy, mixed_trace(2000, seed=7))
    err = _Stderr(True)
    monkeypatch.setattr("sys.stderr", err)
    assert simulate.main([str(npy), "--sizes", "10", "--policies", "lru"]) == 0
    assert err.buf.getvalue() == ""


@pytest.mark.parametrize("plot, says", [
    ("{tmp}/no/such/folder/out.png", "no such folder"),
    ("{tmp}", "is a folder"),
    ("{tmp}/out.notanimage", "unknown image type"),
])
def test_cli_checks_the_plot_path_before_replaying(tmp_path, plot, says):
    pytest.importorskip("matplotlib")
    npy = tmp_path / "t.npy"
    np.save(npy, mixed_trace(2000, seed=8))
    proc_err = _run_cli([str(npy), "--sizes", "10", "--plot", plot.format(tmp=tmp_path)])
    assert proc_err.returncode == 2
    lines = proc_err.stderr.strip().splitlines()
    assert "Traceback" not in proc_err.stderr and says in lines[-1]
    assert proc_err.stdout == ""                     # failed before any table was computed


def _run_cli(args):
    import subprocess
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(simulate.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    # from the folder holding the kvcache under test: `-m` puts the working directory first on
    # sys.path, and from the clone's root the source folder would shadow an installed kvcache
    return subprocess.run([sys.executable, "-m", "kvcache.simulate", *args], capture_output=True,
                          text=True, env=env, timeout=120, cwd=root)


def test_cli_rejects_files_that_are_not_traces(tmp_path):
    png = tmp_path / "chart.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    readme = tmp_path / "README.md"
    readme.write_text("# kvcache\n\nCompiled drop-in caches for Python.\n\n| a | b |\n|---|---|\n")
    fake_npy = tmp_path / "fake.npy"
    fake_npy.write_text("not numpy\n")
    for path, says in ((png, "binary file"), (readme, "more than one word"),
                       (fake_npy, "not a readable .npy")):
        proc = _run_cli([str(path), "--sizes", "10"])
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        last = proc.stderr.strip().splitlines()[-1]
        assert "is not a trace" in last and says in last and str(path) in last
        with pytest.raises(ValueError, match="is not a trace"):
            simulate.load_trace(path)
