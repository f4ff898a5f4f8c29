#!/usr/bin/env bash
# `pip install <repo>` into fresh venvs (no system site packages, no PyPI), both with pip's build
# isolation and with --no-build-isolation; then the package runs a snippet with nothing configured.
# The backend reuses this build folder (build-dir); a fresh build is the same code path with a
# temporary folder.
set -euo pipefail
src=$1 build=$2 python=$3
tmp=$(mktemp -d /tmp/spr-pip-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
check() {  # venv
  local out
  out=$(cd "$tmp" && env -u PYTHONPATH -u SPR_WORKER "$1/bin/python" -c \
    "from safe_py_runner import run_code; print(run_code('result = 6 * 7').result)")
  echo "$1: $out"
  [ "$out" = 42 ]
  (cd "$tmp" && env -u PYTHONPATH "$1/bin/python" -c "
import os, pathlib, safe_py_runner
here = pathlib.Path(safe_py_runner.__file__).parent
assert str(here).startswith('$1/'), here
assert os.access(here / 'spr-worker', os.X_OK), 'no worker in the package'
# The workers for the other CPythons the build found are installed too (python_executable uses them).
built = sorted(p.name for p in pathlib.Path('$build/python/safe_py_runner').glob('spr-worker*'))
assert sorted(p.name for p in here.glob('spr-worker*')) == built, built
assert (here / 'py.typed').exists()
# Every module of the source package is installed (a wheel once lacked _future.py: submit() failed).
def package_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.suffix in ('.py', '.pyi') or p.name == 'py.typed')
assert package_files(here) == package_files(pathlib.Path('$src/python/safe_py_runner')), package_files(here)
with safe_py_runner.Runner(workers=1) as runner:
    assert runner.submit('result = 2 + 3').result().result == 5
")
}
pip_flags=(--disable-pip-version-check --quiet --config-settings "build-dir=$build")
"$python" -m venv "$tmp/isolated"
"$tmp/isolated/bin/pip" install "${pip_flags[@]}" "$src"
check "$tmp/isolated"
"$python" -m venv "$tmp/plain"
"$tmp/plain/bin/pip" install "${pip_flags[@]}" --no-build-isolation "$src"
check "$tmp/plain"
