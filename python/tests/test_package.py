"""Packaging: the in-tree build backend writes a valid wheel that carries libmla.so next to the
package, and the package finds its library via $LIBMLA_PATH, then next to itself, then
../build relative to the package source."""

import base64
import hashlib
import os
import pathlib
import subprocess
import sys
import zipfile

import libmla

PYTHON_DIR = pathlib.Path(libmla.__file__).resolve().parent.parent


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("LIBMLA_PATH", "PYTHONPATH")}
    env.update(extra)
    return env


def _backend_module():
    sys.path.insert(0, str(PYTHON_DIR / "build_backend"))
    try:
        import libmla_build
    finally:
        sys.path.pop(0)
    return libmla_build


def test_wheel_contents_and_install(tmp_path, monkeypatch):
    if not (PYTHON_DIR / "build_backend" / "libmla_build.py").is_file():
        import pytest
        pytest.skip("not a source checkout")
    backend = _backend_module()
    # LIBMLA_PATH short-cuts `make lib`, so the test does not rebuild the C library.
    monkeypatch.setenv("LIBMLA_PATH", libmla.library_path())
    name = backend.build_wheel(str(tmp_path))
    wheel = tmp_path / name
    assert name.startswith(f"libmla-{libmla.__version__}-py3-none-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        assert {"libmla/__init__.py", "libmla/_ffi.py", "libmla/libmla.so",
                f"libmla-{libmla.__version__}.dist-info/METADATA",
                f"libmla-{libmla.__version__}.dist-info/WHEEL",
                f"libmla-{libmla.__version__}.dist-info/RECORD"} <= names
        assert not any("__pycache__" in n for n in names)
        record = zf.read(f"libmla-{libmla.__version__}.dist-info/RECORD").decode()
        for line in record.splitlines():
            path, digest, size = line.rsplit(",", 2)
            if not digest:
                continue
            data = zf.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert digest == f"sha256={want}" and int(size) == len(data), path
        assert zf.read("libmla/libmla.so") == pathlib.Path(libmla.library_path()).read_bytes()
        zf.extractall(tmp_path / "site")
    # The unpacked wheel imports and loads the library shipped next to the package.
    code = "import libmla; print(libmla.library_path()); print(libmla.backends()[0])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, env=_env(PYTHONPATH=str(tmp_path / "site")))
    assert result.returncode == 0, result.stderr
    path_line = result.stdout.splitlines()[0]
    assert pathlib.Path(path_line) == tmp_path / "site" / "libmla" / "libmla.so"
    assert "'cpu', True" in result.stdout


def test_library_search_order(tmp_path):
    code = "import libmla; print(libmla.library_path())"
    # A LIBMLA_PATH that names nothing is an error, not a silent fallback.
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=_env(PYTHONPATH=str(PYTHON_DIR),
                                  LIBMLA_PATH=str(tmp_path / "missing.so")))
    assert bad.returncode != 0 and "does not name an existing file" in bad.stderr
    # LIBMLA_PATH wins over ../build.
    good = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(PYTHONPATH=str(PYTHON_DIR), LIBMLA_PATH=libmla.library_path()))
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == str(pathlib.Path(libmla.library_path()))
    # Without it, a checkout uses ../build/libmla.so when that exists.
    repo_build = PYTHON_DIR.parent / "build" / "libmla.so"
    if repo_build.is_file():
        plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                               env=_env(PYTHONPATH=str(PYTHON_DIR)))
        assert plain.returncode == 0, plain.stderr
        assert pathlib.Path(plain.stdout.strip()) == repo_build.resolve()
