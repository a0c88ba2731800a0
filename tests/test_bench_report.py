"""bench/run.py's report and charts, from a small saved summary (no benchmark is run)."""
import importlib.util
import json
import os
import re

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", os.path.join(BENCH, "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(impl, role, ns, ops, **extra):
    return dict(impl=impl, role=role, policy="lru", ns=ns, ops=ops, rounds=5, spread=0.1,
                hit_ratio=extra.get("hit_ratio"))


def _summary():
    """Two workloads that record operations, one that does not, and memory per entry."""
    core = lambda ns_kv, ns_peer, ns_dict: [  # noqa: E731
        _row("loop (empty)", "loop", 5.0, 100_000), _row("kvcache.LRUCache", "kvcache", ns_kv, 100_000),
        _row("kvcache.FIFOCache", "kvcache", ns_kv * 0.9, 100_000),
        _row("cachebox.LRUCache", "peer", ns_peer, 100_000),
        _row("cachetools.LRUCache", "peer", ns_peer * 4, 100_000),
        _row("dict", "baseline", ns_dict, 100_000)]
    return {
        "stat": "min", "python": "3.11", "quick": False, "timer": "cpu", "repeat": 1,
        "missing": {}, "goals": [],
        "groups": {
            "get-hit-int": core(50.0, 78.0, 73.0),
            "set-evict": [r for r in core(64.0, 84.0, 210.0) if r["role"] != "loop"],
            # A file without record(): pytest's test names, one round = one call.
            "vector-get-many-384": [_row("test_vector_get_many_384", "other", 2.3e8, 1),
                                    _row("test_numpy_gather_384", "other", 3.7e8, 1),
                                    _row("test_dict_loop_384", "other", 3.2e9, 1)],
        },
        "memory": [dict(impl="dict", role="baseline", policy="none", n=1000, per_entry=42.0,
                        verified=True),
                   dict(impl="kvcache.LRUCache", role="kvcache", policy="lru", n=1000,
                        per_entry=44.0, verified=True),
                   dict(impl="cachebox.LRUCache", role="peer", policy="lru", n=1000,
                        per_entry=83.0, verified=True)],
    }


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "in" / "summary.json"
    path.parent.mkdir()
    path.write_text(json.dumps(_summary()))
    return path


def test_row_names_are_readable(run):
    assert run.row_name("vector-get-many-384", "test_numpy_gather_384") == \
        "numpy slab[rows] (no cache: the floor)"
    assert run.row_name("lru-get-many", "test_lru_get_loop") == "[c.get(k) for k in keys]"
    assert run.row_name("expiry sweep (random per-entry TTLs)", "1000000-0.25") == \
        "expire(), 1M entries, 25% due"
    assert run.row_name("expiry sweep (random per-entry TTLs)", "100000") == \
        "pop() one by one, 100k entries"
    # The same parameter id means different things in different groups.
    assert run.row_name("llm-ttft (512 shared + 32 unique prompt tokens)", "none") == "no cache"
    assert run.row_name("llm-decode-512 (one new token at 512 tokens of context)", "none") == \
        "no cache (recompute)"
    assert run.row_name("get-hit-int", "kvcache.LRUCache") == "kvcache.LRUCache"  # already readable
    assert run.group_title("get-miss") == "lookup miss"


def test_every_unrecorded_test_of_the_bench_files_has_a_readable_name(run):
    # A test in a file that does not call record() shows as its pytest name: each needs a
    # name in ROW_NAMES (parametrized tests are labelled by their parameters instead).
    unnamed = []
    for fname in sorted(os.listdir(BENCH)):
        if not (fname.startswith("bench_") and fname.endswith(".py")):
            continue
        src = open(os.path.join(BENCH, fname)).read()
        for m in re.finditer(r"((?:[ \t]*@pytest\.mark\.[^\n]*\n)*)[ \t]*def (test_\w+)\(benchmark", src):
            decorators, name = m.groups()
            if "parametrize" in decorators or "record(benchmark" in src[m.end():m.end() + 2000]\
                    .split("\ndef ")[0]:
                continue
            if name not in run.ROW_NAMES["*"]:
                unnamed.append(f"{fname}::{name}")
    assert unnamed == []


def test_charts_from_a_saved_summary(run, saved, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    assert run.main(["--from-json", str(saved), "--out", str(out)]) == 0
    names = sorted(os.listdir(out))
    assert {"bench.png", "bench-core.png", "bench-batch.png"} <= set(names)
    for name in names:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "summary.json").read_text())["groups"].keys() == \
        _summary()["groups"].keys()


def test_summary_chart_has_one_bar_group_per_workload(run):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    data = _summary()
    groups = data["groups"]
    for rows in groups.values():
        run.annotate(rows)
    fig, ax, workloads = run.summary_figure(groups, data["memory"], plt)
    try:
        # The workloads with kvcache, a peer and dict; not the one without roles.
        assert workloads == ["get-hit-int", "set-evict", "memory"]
        labels = [t.get_text() for t in ax.get_xticklabels()]
        assert len(labels) == 3
        assert labels[0].replace("\n", " ").startswith("lookup hit, int keys")
        assert "(cachebox.LRUCache)" in labels[0]
        assert len(ax.patches) == 3 * 3
        ratios = [round(p.get_height(), 3) for p in ax.patches]
        assert ratios[:3] == [round(50 / 73, 3), round(64 / 210, 3), round(44 / 42, 3)]  # kvcache
        assert ratios[6:] == [1.0, 1.0, 1.0]  # dict
        # The legend's colours are the bars' colours, in the same order.
        legend = ax.get_legend()
        bar_colors = [ax.patches[i * 3].get_facecolor() for i in range(3)]
        assert [h.get_facecolor() for h in legend.legend_handles] == bar_colors
        assert legend.get_texts()[0].get_text() == "kvcache.LRUCache"
    finally:
        plt.close(fig)


def test_group_charts_say_true_units_and_their_legend_matches(run):
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.colors
    import matplotlib.pyplot as plt
    data = _summary()
    figures = dict(run.group_figures(data["groups"], data["memory"], plt))
    try:
        assert set(figures) == {"core", "batch"}
        core = figures["core"].axes
        hit = next(ax for ax in core if ax.get_title() == "lookup hit, int keys")
        assert hit.get_xlabel().startswith("ns per operation (100,000 per round)")
        batch = figures["batch"].axes[0]
        assert batch.get_xlabel().startswith("ms per round")   # no ops recorded: per round
        assert [t.get_text() for t in batch.get_yticklabels()] == [
            "dict of numpy rows, Python loop", "numpy slab[rows] (no cache: the floor)",
            "VectorCache.get_many"]
        for fig in figures.values():
            legend = fig.legends[0]
            drawn = {matplotlib.colors.to_hex(p.get_facecolor()) for ax in fig.axes
                     for p in ax.patches}
            listed = {matplotlib.colors.to_hex(h.get_facecolor()) for h in legend.legend_handles}
            assert listed == drawn
    finally:
        for fig in figures.values():
            plt.close(fig)


def test_report_explains_its_columns_in_plain_words(run, saved, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(run, "chart", lambda *a: [])   # the text only
    assert run.main(["--from-json", str(saved), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "issue" not in out.lower() and "no ops recorded" not in out
    assert "x dict-loop" not in out and "x best peer" not in out
    legend, _, tables = out.partition("How to read the tables")[2].partition("\n\n")
    explained = {line.strip().split("  ")[0] for line in legend.splitlines()[1:]}
    assert {"ns/op", "vs dict", "vs dict, own cost", "vs best peer", "rounds", "noise"} <= explained
    assert out.count("How to read the tables") == 1
    # One header per table; each of its columns is one the legend explains.
    heads = [line for line in tables.splitlines() if line.startswith("  implementation")]
    assert len(heads) == 4                           # three workloads and memory
    for head in heads:
        rest = re.sub(r"(µs|ms|ns|s)/round", "", head.replace("implementation", "", 1))
        for name in sorted(explained, key=len, reverse=True):
            rest = rest.replace(name, "")
        assert rest.strip() == "", head              # a column the legend does not explain
    assert "VectorCache.get_many, 384-wide rows" in tables
    assert "numpy slab[rows] (no cache: the floor)" in tables
    assert "ms/round" in tables and "test_numpy_gather_384" not in tables
