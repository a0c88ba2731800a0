"""The stubs: mypy sees the decorators' types, and stubtest finds the stubs true to the runtime."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvcache

# mypy is in the `test` extra; without it (a bare venv) these checks cannot run at all
pytest.importorskip("mypy")

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "typecheck" / "decorated.py"
ALLOWLISTS = [HERE / "stubtest_allowlist.txt"]
# the folder holding the kvcache being tested (site-packages in CI, the checkout when built in
# place): stubtest must compare that package's stubs with that package's compiled modules
PACKAGE_ROOT = Path(kvcache.__file__).resolve().parent.parent


def _mypy(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT))
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=600,
    )


def test_decorators_keep_the_decorated_functions_types(tmp_path):
    # --strict turns an untyped decorator into an error; each reveal_type is compared with the
    # type its line's "revealed:" comment expects, so a decorator typed Any fails here.
    # silent: the sample's own lines are checked, not the package's sources mypy follows into
    # (which it would find through the checkout when the sample is inside it)
    proc = _mypy(["mypy", "--strict", "--follow-imports=silent", "--cache-dir", os.devnull,
                  "--no-error-summary", str(SAMPLE)], cwd=tmp_path)
    revealed, errors = {}, []
    for line in proc.stdout.splitlines():
        m = re.match(r".*decorated\.py:(\d+): note: Revealed type is \"(.*)\"$", line)
        if m:
            revealed[int(m.group(1))] = m.group(2)
        elif (": error:" in line or ": note:" in line) and "decorated.py:" in line:
            # the sample's own lines: stubs of dependencies (numpy's generics differ between its
            # versions) are not what this test checks
            errors.append(line)
    assert not errors, "\n".join(errors)
    expected = {
        n: m.group(1)
        for n, text in enumerate(SAMPLE.read_text().splitlines(), 1)
        if (m := re.search(r"# revealed: (.*)$", text))
    }
    assert len(expected) > 20
    assert revealed == expected, proc.stdout
    assert not any("Any" in t for t in expected.values())


def test_stubtest_passes(tmp_path):
    # run outside the checkout, so that the kvcache stubtest imports is the package under test
    # (from the checkout's root, its source folder would shadow it)
    # (an allowlist entry that matches nothing is an error too, so the lists cannot go stale)
    allow = [arg for path in ALLOWLISTS for arg in ("--allowlist", str(path))]
    proc = _mypy(["mypy.stubtest", "kvcache", *allow,
                  "--mypy-config-file", str(HERE / "typecheck" / "stubtest.ini")], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
