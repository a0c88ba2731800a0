"""Running from a clone's root: an unbuilt source folder says in one line what to do."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "kvcache"
PARTS = sorted(p.stem for p in SOURCE.glob("*.pyx"))


@pytest.fixture
def unbuilt_clone(tmp_path):
    """A copy of the source folder as a fresh clone has it: sources only, nothing compiled."""
    shutil.copytree(SOURCE, tmp_path / "kvcache",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.c", "__pycache__"))
    return tmp_path


def run_in(cwd, *args):
    # cwd goes first on sys.path (as at a clone's root) unless safe-path mode is on: turn it off
    env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def expected_message(clone):
    return (f"kvcache is imported from its source folder {clone / 'kvcache'}, which lacks its"
            f" compiled parts ({', '.join(PARTS)}): build them in place with `pip install -e .`")


def test_the_source_tree_has_compiled_parts():
    assert "_core" in PARTS and len(PARTS) > 1           # the fixture below copies real sources


def test_import_from_an_unbuilt_source_folder_says_what_to_do(unbuilt_clone):
    r = run_in(unbuilt_clone, "-c", "import kvcache")
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: " + expected_message(unbuilt_clone)), r.stderr
    assert "run from another directory" in last


def test_cli_from_an_unbuilt_source_folder_prints_one_line(unbuilt_clone):
    # runpy reports an ImportError of the package as one line, with no traceback
    r = run_in(unbuilt_clone, "-m", "kvcache.simulate", "--help")
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expected_message(unbuilt_clone) in lines[0]


def test_only_the_missing_parts_are_named(unbuilt_clone):
    # a module standing in for _core: the message lists the other parts, the ones really missing
    (unbuilt_clone / "kvcache" / "_core.py").write_text("")
    r = run_in(unbuilt_clone, "-c", "import kvcache")
    rest = ", ".join(p for p in PARTS if p != "_core")
    assert f"which lacks its compiled parts ({rest}):" in r.stderr.strip().splitlines()[-1]
