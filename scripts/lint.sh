#!/usr/bin/env bash
# Static analysis of our own sources: clang-tidy (checks in .clang-tidy) and cppcheck (suppressions in
# .cppcheck-suppressions), both driven by the build's compile_commands.json.
# Usage: scripts/lint.sh [build-dir]   (`make lint` configures the build dir with CMAKE_EXPORT_COMPILE_COMMANDS=ON)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$root/build}" && pwd)
jobs=${LINT_JOBS:-$(nproc)}
clang_tidy=${CLANG_TIDY:-$(command -v clang-tidy-14 || command -v clang-tidy)}
cppcheck=${CPPCHECK:-cppcheck}

if [ ! -f "$build/compile_commands.json" ]; then
  echo "lint: $build/compile_commands.json is missing; configure with -DCMAKE_EXPORT_COMPILE_COMMANDS=ON" >&2
  exit 2
fi

work=$(mktemp -d /tmp/spr-lint-XXXXXX)
trap 'rm -rf "$work"' EXIT

# One entry per source file,
# restricted to our own directories: nothing generated, nothing from a build tree.
python3 - "$root" "$build" "$work" <<'EOF'
import json, os, sys
root, build, work = sys.argv[1:4]
ours = tuple(os.path.join(root, d) + os.sep for d in ("common", "src", "embed", "bench", "tests", "python"))
seen, entries = set(), []
for e in json.load(open(os.path.join(build, "compile_commands.json"))):
    f = os.path.normpath(os.path.join(e["directory"], e["file"]))
    if f in seen or not f.startswith(ours) or not f.endswith(".cpp"):
        continue
    seen.add(f)
    e["file"] = f
    entries.append(e)
json.dump(entries, open(os.path.join(work, "compile_commands.json"), "w"), indent=1)
open(os.path.join(work, "files.txt"), "w").write("".join(f + "\n" for f in sorted(seen)))
EOF
count=$(wc -l <"$work/files.txt")

# --- clang-tidy ----------------------------------------------------------------------------------
echo "lint: clang-tidy ($("$clang_tidy" --version | sed -n 's/.*version \([0-9.]*\).*/\1/p' | head -1)) on $count files, $jobs jobs"
mkdir -p "$work/tidy"
export clang_tidy work
# Each file's report goes to its own log so parallel runs do not interleave; the exit status says pass/fail.
# shellcheck disable=SC2016
if ! xargs -a "$work/files.txt" -P "$jobs" -n 1 bash -c '
    log="$work/tidy/$(echo "$1" | tr / _).log"
    if ! "$clang_tidy" -p "$work" --quiet "$1" >"$log" 2>&1; then
      echo "FAILED $1" >>"$log"; exit 1
    fi' _; then
  for log in "$work"/tidy/*.log; do
    grep -q '^FAILED ' "$log" && grep -v -E '^[0-9]+ warnings( and [0-9]+ errors?)? generated\.$' "$log"
  done
  echo "lint: clang-tidy found problems (see above)" >&2
  exit 1
fi
echo "lint: clang-tidy clean"

# --- cppcheck ------------------------------------------------------------------------------------
echo "lint: cppcheck ($("$cppcheck" --version)) on $count files"
"$cppcheck" --project="$work/compile_commands.json" \
  --enable=warning,performance,portability --error-exitcode=1 --inline-suppr \
  --suppressions-list="$root/.cppcheck-suppressions" \
  -i "$build" -i "$root/build" -i "$root/build-asan" -i "$root/build-tsan" -i "$root/build-fuzz" \
  -j "$jobs" --quiet --template='{file}:{line}:{column}: {severity}: {message} [{id}]'
echo "lint: cppcheck clean"
echo "lint: all clean"
