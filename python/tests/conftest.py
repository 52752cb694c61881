"""Shared fixtures. Run from the repository root after `make lib`:
    PYTHONPATH=python LIBMLA_PATH=build/libmla.so python3 -m pytest -q python/tests
Random data is fresh each run; the seed is printed in the header (LIBMLA_TEST_SEED=N repeats)."""

import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
try:
    import libmla  # noqa: F401
except ImportError:  # plain checkout without PYTHONPATH: use the package source beside tests/
    sys.path.insert(0, str(TESTS_DIR.parent))
    import libmla  # noqa: F401

SEED = int(os.environ.get("LIBMLA_TEST_SEED") or int.from_bytes(os.urandom(4), "little"))


def pytest_report_header(config):
    return [f"libmla: {libmla.library_path()} (version {libmla.version()}); "
            f"LIBMLA_TEST_SEED={SEED}"]


@pytest.fixture
def rng(request):
    # One stream per test, derived from the session seed and the test's name.
    return np.random.default_rng([SEED, sum(map(ord, request.node.nodeid))])


def repo_include_dir():
    """include/ of the checkout the package source lives in (None for an installed wheel)."""
    inc = pathlib.Path(libmla.__file__).resolve().parent.parent.parent / "include"
    return inc if (inc / "mla.h").is_file() else None


def c_compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def compile_c(source, out_path, link_lib=True):
    inc = repo_include_dir()
    cc = c_compiler()
    if inc is None or cc is None:
        pytest.skip("needs a C compiler and include/mla.h (a repository checkout)")
    cmd = [cc, "-std=c11", "-O1", "-Wall", "-Wextra", "-Werror", f"-I{inc}", str(source),
           "-o", str(out_path)]
    if link_lib:
        lib = pathlib.Path(libmla.library_path()).resolve()
        cmd += [str(lib), f"-Wl,-rpath,{lib.parent}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    assert result.returncode == 0, f"compiling {source} failed:\n{result.stderr}"
    return out_path


@pytest.fixture(scope="session")
def c_driver(tmp_path_factory):
    """Path of tests/c_driver.c compiled against the header and the loaded library, or None
    without a checkout's include/ or a C compiler (tests then check against the oracle only)."""
    if repo_include_dir() is None or c_compiler() is None:
        return None
    exe = tmp_path_factory.mktemp("driver") / "c_driver"
    return compile_c(TESTS_DIR / "c_driver.c", exe)


def run_driver(driver, op, workdir, params, files):
    """Writes params and input files, runs the C driver, returns its directory (None when
    there is no driver)."""
    if driver is None:
        return None
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params").write_text(" ".join(str(p) for p in params) + "\n")
    for name, arr in files.items():
        (workdir / name).write_bytes(np.ascontiguousarray(arr).tobytes())
    result = subprocess.run([str(driver), op, str(workdir)], capture_output=True, text=True)
    assert result.returncode == 0, f"c_driver {op} failed: {result.stdout}{result.stderr}"
    return workdir
