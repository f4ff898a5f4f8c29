#!/usr/bin/env bash
# Installs the build into a temporary prefix, builds the consumer against it, runs it with nothing
# pointing into the build folder: the installed package must find its own worker.
set -euo pipefail
build=$(cd "$1" && pwd) src=$2
# A sanitized build installs a sanitized static library: the consumer must link the same runtime.
sanitize=${3:-}
flags=()
[ -n "$sanitize" ] && flags=("-DCMAKE_CXX_FLAGS=-fsanitize=$sanitize" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=$sanitize")
prefix=$(mktemp -d /tmp/spr-consumer-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/install" >/dev/null
cmake -S "$src" -B "$prefix/build" -DCMAKE_PREFIX_PATH="$prefix/install" "${flags[@]}" >/dev/null
cmake --build "$prefix/build" -j 2 >/dev/null
# The program runs from a folder of its own (no spr-worker beside it), without SPR_WORKER, and
# carries no path to the build folder's worker.
mkdir "$prefix/app"
cp "$prefix/build/consumer" "$prefix/app/consumer"
if grep -aqF "$build/spr-worker" "$prefix/app/consumer"; then
  echo "the consumer refers to the build folder's worker ($build/spr-worker)" >&2
  exit 1
fi
out=$(cd / && env -u SPR_WORKER "$prefix/app/consumer")
echo "consumer printed: $out"
[ "$out" = "9.0" ]
