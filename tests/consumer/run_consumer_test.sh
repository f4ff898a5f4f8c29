#!/usr/bin/env bash
# Installs the build into a temporary prefix, builds the consumer against it, runs it.
set -euo pipefail
build=$1 src=$2
# A sanitized build installs a sanitized static library: the consumer must link the same runtime.
sanitize=${3:-}
flags=()
[ -n "$sanitize" ] && flags=("-DCMAKE_CXX_FLAGS=-fsanitize=$sanitize" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=$sanitize")
prefix=$(mktemp -d /tmp/spr-consumer-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/install" >/dev/null
cmake -S "$src" -B "$prefix/build" -DCMAKE_PREFIX_PATH="$prefix/install" "${flags[@]}" >/dev/null
cmake --build "$prefix/build" -j 2 >/dev/null
out=$(SPR_WORKER="$prefix/install/libexec/safe-py-runner/spr-worker" "$prefix/build/consumer")
echo "consumer printed: $out"
[ "$out" = "9.0" ]
