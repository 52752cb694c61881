"""PEP 517 build backend for the libmla Python package, with no build dependencies.

build_wheel: finds libmla.so ($LIBMLA_PATH, else `make lib` in the repository root above
this folder, else an existing build/libmla.so there), then writes a wheel holding the pure
Python package plus libmla.so next to it. The wheel is tagged for this platform because it
carries a shared library. build_editable: a wheel with a .pth file pointing at python/ (the
package then finds ../build/libmla.so itself). build_sdist: the python/ sources.
"""

import base64
import hashlib
import io
import os
import pathlib
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

NAME = "libmla"
SOURCE_DIR = pathlib.Path(__file__).resolve().parent.parent  # python/
REPO_ROOT = SOURCE_DIR.parent
SUMMARY = ("Paged MLA attention (DeepSeek-style, FP8 KV cache) via the libmla C library; "
           "tokenspeed_mla-compatible calls")


def _version():
    text = (SOURCE_DIR / NAME / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


def _metadata():
    readme = SOURCE_DIR / "README.md"
    lines = [
        "Metadata-Version: 2.1",
        f"Name: {NAME}",
        f"Version: {_version()}",
        f"Summary: {SUMMARY}",
        "Requires-Python: >=3.8",
        "Requires-Dist: numpy",
        "Provides-Extra: test",
        'Requires-Dist: pytest; extra == "test"',
    ]
    if readme.is_file():
        lines.append("Description-Content-Type: text/markdown")
        return "\n".join(lines) + "\n\n" + readme.read_text()
    return "\n".join(lines) + "\n"


def _platform_tag():
    return re.sub(r"[^A-Za-z0-9_]", "_", sysconfig.get_platform())


def _find_library():
    env = os.environ.get("LIBMLA_PATH")
    if env:
        path = pathlib.Path(env)
        if not path.is_file():
            raise RuntimeError(f"LIBMLA_PATH={env!r} does not name an existing file")
        return path
    built = REPO_ROOT / "build" / "libmla.so"
    if (REPO_ROOT / "Makefile").is_file() and shutil.which("make"):
        # Build (or bring up to date) the C library; its output goes to stderr so pip -v
        # shows it.
        result = subprocess.run(["make", "-C", str(REPO_ROOT), "lib"], stdout=sys.stderr,
                                stderr=sys.stderr)
        if result.returncode != 0:
            raise RuntimeError(f"`make lib` in {REPO_ROOT} failed (exit {result.returncode})")
    if built.is_file():
        return built
    raise RuntimeError(
        f"libmla.so not found: set LIBMLA_PATH, or build from a checkout where {REPO_ROOT} "
        "has the Makefile (`make lib` produces build/libmla.so)")


class _WheelWriter:
    def __init__(self, path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED)
        self.records = []

    def add(self, arcname, data, mode=0o644):
        info = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
        info.external_attr = (mode & 0xFFFF) << 16
        info.compress_type = zipfile.ZIP_DEFLATED
        self.zip.writestr(info, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        self.records.append(f"{arcname},sha256={digest},{len(data)}")

    def close(self, dist_info):
        record = f"{dist_info}/RECORD"
        self.records.append(f"{record},,")
        self.zip.writestr(zipfile.ZipInfo(record, date_time=(2020, 1, 1, 0, 0, 0)),
                          "\n".join(self.records) + "\n")
        self.zip.close()


def _write_wheel(wheel_directory, tag, add_payload, purelib):
    version = _version()
    dist_info = f"{NAME}-{version}.dist-info"
    filename = f"{NAME}-{version}-{tag}.whl"
    writer = _WheelWriter(os.path.join(wheel_directory, filename))
    add_payload(writer)
    writer.add(f"{dist_info}/METADATA", _metadata().encode())
    wheel_meta = ("Wheel-Version: 1.0\nGenerator: libmla_build\n"
                  f"Root-Is-Purelib: {'true' if purelib else 'false'}\nTag: {tag}\n")
    writer.add(f"{dist_info}/WHEEL", wheel_meta.encode())
    writer.add(f"{dist_info}/top_level.txt", f"{NAME}\n".encode())
    writer.close(dist_info)
    return filename


def _package_files():
    for path in sorted((SOURCE_DIR / NAME).rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc" \
                and path.name != "libmla.so":
            yield path


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    library = _find_library()

    def payload(writer):
        for path in _package_files():
            writer.add(path.relative_to(SOURCE_DIR).as_posix(), path.read_bytes())
        writer.add(f"{NAME}/libmla.so", library.read_bytes(), mode=0o755)

    return _write_wheel(wheel_directory, f"py3-none-{_platform_tag()}", payload, purelib=False)


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    def payload(writer):
        writer.add(f"__editable__.{NAME}.pth", (str(SOURCE_DIR) + "\n").encode())

    return _write_wheel(wheel_directory, "py3-none-any", payload, purelib=True)


def build_sdist(sdist_directory, config_settings=None):
    base = f"{NAME}-{_version()}"
    filename = f"{base}.tar.gz"
    with tarfile.open(os.path.join(sdist_directory, filename), "w:gz") as tar:
        for rel in ["pyproject.toml", "README.md", "build_backend/libmla_build.py"]:
            if (SOURCE_DIR / rel).is_file():
                tar.add(SOURCE_DIR / rel, arcname=f"{base}/{rel}")
        for path in _package_files():
            tar.add(path, arcname=f"{base}/{path.relative_to(SOURCE_DIR).as_posix()}")
        info = tarfile.TarInfo(f"{base}/PKG-INFO")
        data = _metadata().encode()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return filename


def get_requires_for_build_wheel(config_settings=None):
    return []


def get_requires_for_build_editable(config_settings=None):
    return []


def get_requires_for_build_sdist(config_settings=None):
    return []
