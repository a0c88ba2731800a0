"""Build the compiled core; all metadata lives in pyproject.toml."""
import os
import sys

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("KVCACHE_DEBUG") == "1"
# AddressSanitizer build (CI's sanitizer job, .ci/run). The directives stay as shipped (no bounds
# checks) so ASAN watches the very memory accesses a release build makes. Python itself is not
# instrumented, so a process importing this build needs the runtime preloaded:
# LD_PRELOAD=$(gcc -print-file-name=libasan.so).
ASAN = os.environ.get("KVCACHE_ASAN") == "1"

directives = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": not DEBUG,
    "embedsignature": True,
    # "clinic": a compiled class gets its signature from its docstring's first line (written by
    # hand, see Cache), and Cython functions keep clean docstrings (inspect reads their
    # signature directly).  The default "c" format puts a signature of its own, with the
    # keyword-only marker misplaced, before the class docstring, where inspect cannot read it.
    "embedsignature.format": "clinic",
}

if ASAN:
    compile_args = link_args = ["-fsanitize=address", "-fno-omit-frame-pointer", "-O1", "-g"]
elif DEBUG:
    compile_args, link_args = ["-O0", "-g"], []
elif os.name == "nt":
    compile_args, link_args = ["/O2"], []   # MSVC writes no debug info unless asked (/Zi)
else:
    # Python's own CFLAGS carry -g, which made each release .so mostly DWARF (13.1 MB for the
    # eight parts on Linux, 2.0 MB without): -g0 comes later on the command line and wins.
    # GNU ld's -s also drops the symbol table, which nothing at run time reads (the dynamic
    # symbols stay). On macOS the DWARF stays in the object files anyway; its ld has no -s.
    compile_args = ["-O3", "-g0"]
    link_args = [] if sys.platform == "darwin" else ["-Wl,-s"]

# One extension per compiled part (docs/architecture.md): each cimports the engine through
# kvcache/_core.pxd, so an edit to one part recompiles that part alone.
PARTS = ["_core", "_expiry", "_tinylfu", "_simulate", "_memo", "_vector", "_paged", "_tiered"]

extensions = [
    Extension(
        f"kvcache.{part}",
        [f"kvcache/{part}.pyx"],
        include_dirs=[numpy.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    for part in PARTS
]

setup(
    ext_modules=cythonize(extensions, compiler_directives=directives),
    # build_ext skips an extension whose output in build/ is newer than its sources, whatever
    # the flags: an ASAN build must not pick up a normal build's leftovers, nor the reverse.
    options={"build": {"build_base": "build/asan"}} if ASAN else {},
)
