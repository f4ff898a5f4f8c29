"""PEP 517 build backend of safe-py-runner: CMake builds the extension and the worker, zipfile packs them.

It needs nothing from PyPI (``requires = []``), so ``pip install .`` works offline, with or without
build isolation. Config settings (``pip install --config-settings KEY=VALUE``, or the environment):
  build-dir (SPR_BUILD_DIR)   reuse this CMake build folder (configured here when it is empty)
  jobs (SPR_BUILD_JOBS)       parallel compile jobs (default: the number of CPUs)
  pythons (SPR_PYTHONS)       other CPythons to build a worker for: "auto" (default: every CPython 3.9-3.13
                              found), "none" (only the Python running pip: the quickest build), or paths
                              separated by ";"
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
NAME = "safe_py_runner"
DIST = "safe-py-runner"
# The package's own files: every module and stub of python/safe_py_runner, and the typing marker (a list
# written out by hand once left a new module out of every wheel).
SOURCE_PACKAGE = ROOT / "python" / NAME


def _source_files() -> List[str]:
    return sorted(p.name for p in SOURCE_PACKAGE.iterdir()
                  if p.is_file() and (p.suffix in (".py", ".pyi") or p.name == "py.typed"))


__all__ = ["get_requires_for_build_wheel", "get_requires_for_build_sdist", "prepare_metadata_for_build_wheel",
           "build_wheel", "build_sdist"]


def _version() -> str:
    text = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    m = re.search(r"project\(\s*safe_py_runner\s+VERSION\s+([0-9.]+)", text)
    if not m:
        raise RuntimeError("no project version in CMakeLists.txt")
    return m.group(1)


def _setting(config: Optional[Dict], key: str, env: str) -> Optional[str]:
    if config and config.get(key):
        return str(config[key])
    return os.environ.get(env) or None


def _tag() -> str:
    impl = "cp" + "".join(map(str, sys.version_info[:2]))
    plat = re.sub(r"[-.]", "_", sysconfig.get_platform())
    return f"{impl}-{impl}-{plat}"


def _dist_info() -> str:
    return f"{NAME}-{_version()}.dist-info"


def _metadata() -> str:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return (
        "Metadata-Version: 2.1\n"
        f"Name: {DIST}\n"
        f"Version: {_version()}\n"
        "Summary: Run untrusted Python snippets with hard limits and OS isolation (C++ engine)\n"
        "License: MIT\n"
        "Requires-Python: >=3.10\n"
        "Classifier: Operating System :: POSIX :: Linux\n"
        "Classifier: Programming Language :: C++\n"
        "Classifier: Programming Language :: Python :: 3\n"
        "Description-Content-Type: text/markdown\n"
        "\n" + readme
    )


def _wheel_file() -> str:
    return ("Wheel-Version: 1.0\n"
            f"Generator: {NAME} build_backend\n"
            "Root-Is-Purelib: false\n"
            f"Tag: {_tag()}\n")


def _run(cmd: List[str]) -> None:
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, cwd=str(ROOT))


def _cmake_build(config: Optional[Dict], scratch: Path) -> Path:
    """Builds the `spr_python` target (in `scratch` unless a build-dir is given); returns the staged package."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise RuntimeError("cmake is needed to build safe-py-runner (Debian: apt-get install cmake)")
    given = _setting(config, "build-dir", "SPR_BUILD_DIR")
    build = Path(given).resolve() if given else scratch
    if not (build / "CMakeCache.txt").exists():
        python = os.path.realpath(sys.executable)
        cmd = [cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
               f"-DPython3_EXECUTABLE={python}", "-DSPR_BUILD_PYTHON=ON", "-DSPR_BUILD_TESTS=OFF",
               "-DSPR_BUILD_BENCH=OFF", "-DSPR_WERROR=OFF"]
        pythons = _setting(config, "pythons", "SPR_PYTHONS")
        if pythons:
            cmd.append("-DSPR_PYTHONS=" + ("" if pythons == "none" else pythons))
        if shutil.which("ccache"):
            cmd.append("-DCMAKE_CXX_COMPILER_LAUNCHER=ccache")
        _run(cmd)
    jobs = _setting(config, "jobs", "SPR_BUILD_JOBS") or str(os.cpu_count() or 1)
    _run([cmake, "--build", str(build), "--target", "spr_python", "-j", jobs])
    return build / "python" / NAME


def _record_line(arcname: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{arcname},sha256={digest},{len(data)}"


def _package_files(stage: Path) -> List[Tuple[str, Path]]:
    files = [(f"{NAME}/{f}", stage / f) for f in _source_files()]
    ext = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    core = stage / f"_core{ext}"
    if not core.exists():
        raise RuntimeError(f"the build made no {core.name} (is it for another Python?)")
    files.append((f"{NAME}/{core.name}", core))
    files.append((f"{NAME}/spr-worker", stage / "spr-worker"))
    # Workers for the other CPythons found when building (cmake/pythons.cmake): python_executable uses them.
    files += [(f"{NAME}/{w.name}", w) for w in sorted(stage.glob("spr-worker-python*"))]
    return files


# --- PEP 517 hooks ---------------------------------------------------------------------------


def get_requires_for_build_wheel(config_settings=None) -> List[str]:
    return []


def get_requires_for_build_sdist(config_settings=None) -> List[str]:
    return []


def prepare_metadata_for_build_wheel(metadata_directory, config_settings=None) -> str:
    info = Path(metadata_directory) / _dist_info()
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(_metadata(), encoding="utf-8")
    (info / "WHEEL").write_text(_wheel_file(), encoding="utf-8")
    return info.name


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None) -> str:
    with tempfile.TemporaryDirectory(prefix="spr-wheel-") as scratch:
        return _build_wheel(Path(wheel_directory), config_settings, Path(scratch))


def _build_wheel(wheel_directory: Path, config_settings: Optional[Dict], scratch: Path) -> str:
    stage = _cmake_build(config_settings, scratch)
    wheel_name = f"{NAME}-{_version()}-{_tag()}.whl"
    info = _dist_info()
    entries: List[Tuple[str, bytes, int]] = []
    for arcname, path in _package_files(stage):
        mode = 0o755 if os.access(path, os.X_OK) and not arcname.endswith(".py") else 0o644
        entries.append((arcname, path.read_bytes(), mode))
    entries.append((f"{info}/METADATA", _metadata().encode(), 0o644))
    entries.append((f"{info}/WHEEL", _wheel_file().encode(), 0o644))
    entries.append((f"{info}/top_level.txt", f"{NAME}\n".encode(), 0o644))
    entries.append((f"{info}/LICENSE", (ROOT / "LICENSE").read_bytes(), 0o644))
    record = [_record_line(a, d) for a, d, _ in entries] + [f"{info}/RECORD,,"]
    entries.append((f"{info}/RECORD", ("\n".join(record) + "\n").encode(), 0o644))
    out = wheel_directory / wheel_name
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for arcname, data, mode in entries:
            zi = zipfile.ZipInfo(arcname, date_time=(2020, 1, 1, 0, 0, 0))
            zi.external_attr = (0o100000 | mode) << 16
            zi.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(zi, data)
    return wheel_name


def build_sdist(sdist_directory, config_settings=None) -> str:
    base = f"{NAME}-{_version()}"
    name = f"{base}.tar.gz"
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=str(ROOT), check=True,
                                capture_output=True).stdout.decode().split("\0")
        files = [f for f in listed if f and (ROOT / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*")
                 if p.is_file() and not any(part.startswith((".git", "build")) for part in p.relative_to(ROOT).parts)]
    with tarfile.open(Path(sdist_directory) / name, "w:gz") as tf:
        for f in sorted(files):
            tf.add(str(ROOT / f), arcname=f"{base}/{f}")
        pkg_info = _metadata().encode()
        ti = tarfile.TarInfo(f"{base}/PKG-INFO")
        ti.size = len(pkg_info)
        tf.addfile(ti, io.BytesIO(pkg_info))
    return name
