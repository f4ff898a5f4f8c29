#!/usr/bin/env bash
# Installs the build into a temporary prefix, builds the consumer against it, runs it with nothing
# pointing into the build folder: the installed package must find its own worker. The consumer is
# configured with toml++, Boost and pkg-config refused to find_package and, where a private mount
# namespace can be made (root), built with their headers hidden: the package asks only for nlohmann/json.
set -euo pipefail
build=$(cd "$1" && pwd) src=$2
# A sanitized build installs a sanitized static library: the consumer must link the same runtime.
sanitize=${3:-}
flags=(-DCMAKE_DISABLE_FIND_PACKAGE_tomlplusplus=ON -DCMAKE_DISABLE_FIND_PACKAGE_Boost=ON
       -DCMAKE_DISABLE_FIND_PACKAGE_PkgConfig=ON)
[ -n "$sanitize" ] && flags+=("-DCMAKE_CXX_FLAGS=-fsanitize=$sanitize" "-DCMAKE_EXE_LINKER_FLAGS=-fsanitize=$sanitize")
prefix=$(mktemp -d /tmp/spr-consumer-XXXXXX)
trap 'rm -rf "$prefix"' EXIT
cmake --install "$build" --prefix "$prefix/install" >/dev/null
# The installed public headers name neither toml++ nor Boost.
if grep -rlE '#include <(toml\+\+|boost)/' "$prefix/install/include"; then
  echo "an installed header includes toml++ or Boost" >&2
  exit 1
fi
configure_and_build="cmake -S '$src' -B '$prefix/build' -DCMAKE_PREFIX_PATH='$prefix/install' ${flags[*]} >/dev/null \
  && cmake --build '$prefix/build' -j 2 >/dev/null"
hide=""
for d in /usr/include/toml++ /usr/include/boost; do
  [ -d "$d" ] && hide+="mount -t tmpfs -o ro none $d && "
done
if [ "$(id -u)" -eq 0 ] && unshare --mount true 2>/dev/null; then
  unshare --mount --propagation private sh -c "$hide [ ! -e /usr/include/toml++/toml.h ] && $configure_and_build"
  echo "consumer built with toml++ and Boost headers hidden"
else
  sh -c "$configure_and_build"
fi
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
