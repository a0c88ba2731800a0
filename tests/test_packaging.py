"""Packaging: build requirements, stripped extensions, what the sdist carries, the wheel workflow."""
import importlib.machinery
import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import kvcache

if sys.version_info >= (3, 11):
    import tomllib
else:  # pytest itself depends on tomli before 3.11, and the test extra names it
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
WHEELS_YML = ROOT / ".github" / "workflows" / "wheels.yml"


def _version(text):
    return tuple(int(part) for part in text.split("."))


def _lower_bounds(requirements):
    """Map each requirement's name to its >= bound (None when it has none)."""
    bounds = {}
    for req in requirements:
        # a lower bound, optionally followed by an upper one (mypy>=2.4,<3) and a marker
        m = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*(?:>=\s*([0-9][0-9.]*))?\s*(?:,\s*<\s*[0-9.]+)?"
                         r"\s*(?:;.*)?", req)
        assert m, f"cannot read requirement {req!r}"
        bounds[m.group(1).lower()] = _version(m.group(2)) if m.group(2) else None
    return bounds


# -- build requirements --------------------------------------------------------------------------

def test_setuptools_bound_accepts_the_license_string():
    # project.license as an SPDX string (PEP 639) and license-files: setuptools < 77 rejects
    # both ("project.license must be valid exactly by one definition"), so a lower bound under
    # 77 lets pip pick a setuptools that cannot build the project.
    project = PYPROJECT["project"]
    bounds = _lower_bounds(PYPROJECT["build-system"]["requires"])
    if isinstance(project.get("license"), str) or "license-files" in project:
        assert bounds.get("setuptools") is not None and bounds["setuptools"] >= (77,), bounds
    # the sdist test builds without isolation from the test extra: same floor there
    test_bounds = _lower_bounds(project["optional-dependencies"]["test"])
    assert test_bounds["setuptools"] >= bounds["setuptools"]
    assert test_bounds["cython"] >= bounds["cython"]


# -- release builds carry no debug info ----------------------------------------------------------

def _elf_section_names(path):
    """Read the section names of an ELF file from its section header table."""
    data = Path(path).read_bytes()
    assert data[:4] == b"\x7fELF", f"{path} is not ELF"
    is64 = data[4] == 2
    end = "<" if data[5] == 1 else ">"
    if is64:
        shoff, = struct.unpack_from(end + "Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from(end + "I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from(end + "HHH", data, 0x2E)

    def header(i):   # (sh_name, sh_offset, sh_size)
        base = shoff + i * shentsize
        if is64:
            name, = struct.unpack_from(end + "I", data, base)
            offset, size = struct.unpack_from(end + "QQ", data, base + 0x18)
        else:
            name, = struct.unpack_from(end + "I", data, base)
            offset, size = struct.unpack_from(end + "II", data, base + 0x10)
        return name, offset, size

    if shnum == 0:        # more than 0xff00 sections: the count is section 0's sh_size
        shnum = header(0)[2]
    if shstrndx == 0xFFFF:  # SHN_XINDEX: the index is section 0's sh_link
        shstrndx, = struct.unpack_from(end + "I", data, shoff + (0x28 if is64 else 0x18))
    _, str_off, str_size = header(shstrndx)
    strtab = data[str_off:str_off + str_size]
    names = []
    for i in range(shnum):
        name = header(i)[0]
        names.append(strtab[name:strtab.index(b"\0", name)].decode())
    return names


def _extension_files():
    package = Path(kvcache.__file__).parent
    return sorted(p for p in package.iterdir()
                  if any(p.name.endswith(s) for s in importlib.machinery.EXTENSION_SUFFIXES))


def test_elf_reader_sees_debug_sections(tmp_path):
    # The check below is only as good as the reader: show it finds the sections of an object
    # file compiled here with -g.
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not sys.platform.startswith("linux"):
        pytest.skip("needs a C compiler on an ELF platform")
    src, obj = tmp_path / "probe.c", tmp_path / "probe.o"
    src.write_text("int kvcache_probe(int x) { return x + 1; }\n")
    subprocess.run([cc, "-g", "-c", str(src), "-o", str(obj)], check=True)
    names = _elf_section_names(obj)
    assert ".debug_info" in names and ".symtab" in names and ".text" in names


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ELF check: Linux builds only")
def test_release_extensions_are_stripped():
    # Release builds (setup.py without KVCACHE_DEBUG / KVCACHE_ASAN) compile with -g0 and link
    # with -s: 2.0 MB for the eight parts instead of 13.1 MB, most of it DWARF.
    if os.environ.get("KVCACHE_DEBUG") == "1" or os.environ.get("KVCACHE_ASAN") == "1":
        pytest.skip("a KVCACHE_DEBUG / KVCACHE_ASAN build keeps its debug info on purpose")
    files = _extension_files()
    assert files, f"no compiled extension next to {kvcache.__file__}"
    for path in files:
        names = _elf_section_names(path)
        if b"libasan.so" in path.read_bytes():   # its NEEDED entry, as .ci/run checks
            pytest.skip(f"{path.name} is an AddressSanitizer build")
        debug = [n for n in names if n.startswith((".debug_", ".zdebug_"))]
        assert not debug, (f"{path.name} carries {debug} (built with KVCACHE_DEBUG=1? rebuild "
                           "without it: python setup.py build_ext --inplace)")
        assert ".symtab" not in names, f"{path.name} still has its symbol table (not linked -s)"


# -- the sdist -----------------------------------------------------------------------------------

def _readme_local_targets():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return sorted({t.split("#")[0] for t in targets
                   if not re.match(r"[a-z]+:", t) and not t.startswith("#")})


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    if importlib.util.find_spec("build") is None:
        pytest.skip("needs `build` (pip install '.[test]')")
    # Build from a copy: setup.py cythonizes in place and setuptools writes kvcache.egg-info,
    # neither of which belongs in the source tree the other tests import from.
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "*.so",
                                    "*.pyd", "*.c", "__pycache__", ".pytest_cache",
                                    ".hypothesis", ".benchmarks", "out", "wheelhouse")
    shutil.copytree(ROOT, src / "kvcache-src", ignore=ignore)
    out = tmp_path_factory.mktemp("dist")
    # --no-isolation: no download of the build requirements (the test extra installs them)
    proc = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation",
                           "--outdir", str(out), str(src / "kvcache-src")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    archive, = out.glob("*.tar.gz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        top = names[0].split("/")[0]
        pkg_info = tar.extractfile(f"{top}/PKG-INFO").read().decode()
    return {n.split("/", 1)[1] for n in names if "/" in n}, pkg_info


def test_sdist_carries_examples_and_what_readme_links(sdist):
    files, _ = sdist
    examples = {p.relative_to(ROOT).as_posix() for p in (ROOT / "examples").glob("*.py")}
    assert examples and examples <= files, sorted(examples - files)
    linked = _readme_local_targets()
    assert "bench/results/bench.png" in linked or any(t.endswith(".png") for t in linked)
    missing = [t for t in linked if t not in files and not any(f.startswith(t.rstrip("/") + "/")
                                                                for f in files)]
    assert not missing, f"README links to files the sdist lacks: {missing}"
    assert "docs/architecture.md" in files
    assert not [f for f in files if f.endswith((".so", ".pyd", ".c"))], "build products in sdist"


def test_sdist_metadata_classifiers(sdist):
    _, pkg_info = sdist
    classifiers = set(re.findall(r"^Classifier: (.+)$", pkg_info, re.M))
    assert "Operating System :: OS Independent" not in classifiers   # compiled extension
    # one classifier for each CPython the wheel matrix builds, and only those
    built = re.findall(r"cp3(\d+)-", PYPROJECT["tool"]["cibuildwheel"]["build"])
    declared = {c.rsplit(" ", 1)[1] for c in classifiers
                if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)}
    assert declared == {f"3.{m}" for m in built}, (declared, built)
    floor = re.fullmatch(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"]).group(1)
    assert min(int(m) for m in built) == int(floor)
    assert {"Programming Language :: Cython", "Operating System :: POSIX :: Linux",
            "Operating System :: MacOS", "Operating System :: Microsoft :: Windows"} <= classifiers


# -- the wheel workflow --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workflow():
    yaml = pytest.importorskip("yaml", reason="needs pyyaml (pip install '.[test]')")
    if not WHEELS_YML.exists() and (ROOT / "PKG-INFO").exists():
        pytest.skip("running from an sdist, which does not ship .github/")
    wf = yaml.safe_load(WHEELS_YML.read_text(encoding="utf-8"))
    # YAML 1.1 reads the bare key `on` as the boolean true
    wf["on"] = wf.pop(True, wf.get("on"))
    return wf


def _steps(job):
    return job.get("steps", [])


def test_workflow_runs_on_main_and_tags(workflow):
    push = workflow["on"]["push"]
    assert "main" in push.get("branches", []), "wheels must build on every push to main"
    assert any(t.startswith("v") for t in push.get("tags", []))
    wheels = workflow["jobs"]["wheels"]
    assert "if" not in wheels, "the wheel job must not be limited to tags"


def test_workflow_runners(workflow):
    runners = workflow["jobs"]["wheels"]["strategy"]["matrix"]["os"]
    assert not [r for r in runners if re.fullmatch(r"macos-1[0-3](-.*)?", r)], \
        f"deprecated macOS runner in {runners}"
    mac = [r for r in runners if r.startswith("macos")]
    assert any("intel" in r for r in mac), "no x86_64 macOS runner"
    assert any("intel" not in r and "large" not in r for r in mac), "no arm64 macOS runner"
    assert any(r.startswith("ubuntu") and not r.endswith("-arm") for r in runners)
    assert any(r.startswith("ubuntu") and r.endswith("-arm") for r in runners)
    assert any(r.startswith("windows") for r in runners)


def test_workflow_cibuildwheel_version_and_images(workflow):
    text = WHEELS_YML.read_text(encoding="utf-8")
    # pinned either on PyPI (cibuildwheel==X.Y.Z) or as the action (@<sha>  # vX.Y.Z, or @vX.Y.Z)
    versions = re.findall(r"cibuildwheel(?:==|@v|@\w+\s+#\s*v)(\d+)\.(\d+)\.(\d+)", text)
    assert versions, "cibuildwheel is not pinned in wheels.yml"
    assert all(int(major) >= 3 for major, _, _ in versions), versions
    cibw = PYPROJECT["tool"]["cibuildwheel"]
    for arch in ("x86_64", "aarch64"):
        image = cibw.get(f"manylinux-{arch}-image", "")
        m = re.fullmatch(r"manylinux_2_(\d+)", image)
        assert m and int(m.group(1)) >= 28, f"manylinux-{arch}-image = {image!r}"
    # and no environment variable in the workflow puts the old image back
    for name, value in re.findall(r"(CIBW_MANYLINUX_\w+_IMAGE)\s*:\s*(\S+)", text):
        m = re.search(r"manylinux_2_(\d+)", value)
        assert m and int(m.group(1)) >= 28, (name, value)


@pytest.mark.skipif(os.name == "nt" or shutil.which("bash") is None,
                    reason="the selection step is a bash script (checked on POSIX)")
@pytest.mark.parametrize("ref, full", [("refs/heads/main", False), ("refs/tags/v1.2.3", True)])
def test_workflow_python_selection(workflow, tmp_path, ref, full):
    # Run the workflow's own selection step as GitHub would: a push to main builds and tests
    # one CPython per OS, a tag the full matrix of pyproject.toml's [tool.cibuildwheel].
    step, = [s for s in _steps(workflow["jobs"]["wheels"]) if s.get("id") == "select"]
    env_file = tmp_path / "env"
    env_file.write_text("")
    env = {**os.environ, "GITHUB_ENV": str(env_file), "GITHUB_REF": ref,
           "GITHUB_REF_TYPE": "tag" if ref.startswith("refs/tags/") else "branch",
           "GITHUB_EVENT_NAME": "push"}
    subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], env=env, check=True)
    selected = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if line)
    if full:
        assert "CIBW_BUILD" not in selected, selected
    else:
        build = selected["CIBW_BUILD"].split()
        assert len(build) == 1 and re.fullmatch(r"cp3\d+-\*", build[0]), build
        assert build[0].split("-")[0] in PYPROJECT["tool"]["cibuildwheel"]["build"]
