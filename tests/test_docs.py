"""The docs a new user reads first: README's two commands, and links that stay inside the repo."""
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", "bench/README.md", "docs/architecture.md", "bench/hitratio.md"]

# The docs link files of the repository, which an sdist or an installed package only partly has.
pytestmark = pytest.mark.skipif(not (ROOT / ".git").exists(),
                                reason="not a git checkout: the docs point into the repository")


def readme_commands():
    """The lines of README's first code block that are not comments."""
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_in_separate_venvs():
    bench, tests = readme_commands()
    venvs = []
    for cmd in (bench, tests):
        made = re.findall(r"-m venv (\S+)", cmd)
        assert len(made) == 1, cmd
        used = set(re.findall(r"(\S+)/bin/", cmd))
        assert used == set(made), cmd               # each runs only from the venv it made
        venvs.append(made[0])
    # one venv each: the benchmark's pytest plugins (pytest-benchmark) stay out of the tests
    assert venvs[0] != venvs[1]
    assert "[bench]" in bench and "[bench]" not in tests


def test_ci_runs_readme_test_command_in_the_venv_it_removes():
    # .ci/run takes the line after "# 2. " and removes .venv before each run: a fresh venv
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = readme_commands()[1]
    venv = re.search(r"-m venv (\S+)", cmd).group(1)
    assert "awk '/^# 2\\. /{getline; print; exit}' README.md" in ci
    assert f"rm -rf {venv}\n" in ci


def ignored_dirs():
    """Folders .gitignore lists: what the tools write (bench/out/, build/) may be named unbuilt."""
    lines = (ROOT / ".gitignore").read_text().splitlines()
    return [x for x in lines if x.endswith("/")]


def paths_named(text):
    """Markdown link targets, and words with a slash inside `code` spans (URLs left out)."""
    names = re.findall(r"\]\(([^)\s]+)\)", text)
    for span in re.findall(r"`([^`\n]+)`", text):
        names += [w.strip("\"'(),;:") for w in span.split() if "/" in w]
    return [n for n in names if "://" not in n]


@pytest.mark.parametrize("doc", DOCS)
def test_docs_name_only_paths_inside_the_repo(doc):
    here = (ROOT / doc).parent
    bad = []
    for name in paths_named((ROOT / doc).read_text()):
        if name.startswith("/") or ".." in Path(name).parts:
            bad.append(name)                        # outside the repository
        elif "<" in name or re.search(r"(^|/)[A-Z]+(/|$)", name):
            continue                                # a placeholder: bench/bench_<workload>.py, DIR/x
        elif any(name.startswith(d) for d in ignored_dirs()):
            continue                                # written by the tools, not in the repository
        elif not any(list(base.glob(name.rstrip("/"))) or (base / (name + ".py")).exists()
                     for base in (ROOT, here)):
            bad.append(name)                        # `kvcache/__init__` names the module's file
    assert not bad, f"{doc} names paths that are not in the repository: {bad}"
