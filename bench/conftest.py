"""pytest configuration shared by every bench_*.py file.

Sizes: ``--kv-size=full`` is what the issue's workloads ask for, ``quick`` is a shorter
run with the same shape, ``smoke`` is tiny and is the default under ``--benchmark-disable``
(then the files run as correctness tests in seconds).
"""
import os
import sys
from dataclasses import dataclass

# Timings are process CPU time: an idle BLAS worker thread (numpy starts one per core) would add
# its spinning to it.  The benchmarks do no linear algebra.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pytest

# Test modules are imported with --import-mode=importlib, which does not put their folder on
# sys.path; the bench files share kvbench.py through this.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@dataclass(frozen=True)
class Sizes:
    """Workload sizes for one run (see the issue's Benchmarks section for the full ones)."""

    name: str
    get_n: int  # entries in the cache and lookups per round, get-hit / get-miss
    evict_capacity: int  # maxsize for set-with-eviction and Zipf
    evict_inserts: int  # distinct inserts per round, set-with-eviction
    zipf_keys: int  # key space of the Zipf stream
    zipf_length: int  # accesses per round of the Zipf stream
    min_rounds: int  # rounds of the workloads that need a fresh cache per round ...
    max_rounds: int  # ... between these two, as many as fit in round_budget seconds
    round_budget: float


SIZES = {
    "full": Sizes("full", 100_000, 10_000, 1_000_000, 1_000_000, 1_000_000, 2, 5, 1.0),
    "quick": Sizes("quick", 100_000, 10_000, 200_000, 1_000_000, 200_000, 2, 3, 0.3),
    "smoke": Sizes("smoke", 5_000, 500, 20_000, 50_000, 20_000, 1, 1, 0.0),
}


def pytest_collect_file(file_path, parent):
    """Collect bench_*.py too, so that ``pytest bench/ --benchmark-disable`` runs them."""
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)


def pytest_addoption(parser):
    group = parser.getgroup("kvcache benchmarks")
    group.addoption("--kv-size", choices=sorted(SIZES), default=None,
                    help="workload sizes: full (default when benchmarking), quick, or smoke "
                         "(default under --benchmark-disable)")


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "memsmoke: checks the memory-per-entry machinery at a small size "
                   "(bench/run.py measures the real figure itself and deselects these)")


@pytest.fixture(scope="session")
def sizes(request) -> Sizes:
    """The workload sizes chosen for this run."""
    name = request.config.getoption("--kv-size")
    if name is None:
        disabled = request.config.getoption("benchmark_disable", default=False)
        name = "smoke" if disabled else "full"
    return SIZES[name]
