#!/usr/bin/env bash
# Installs the Debian packages safe-py-runner needs, and only those that are missing.
# Usage: scripts/install-deps.sh [--build] [extra-package ...]
#   --build: only what configuring and building needs (`make run`); the rest is for tests, docs and the examples.
set -euo pipefail

build_only=0
if [ "${1:-}" = "--build" ]; then
  build_only=1
  shift
fi
build_packages=(g++ cmake make pkg-config python3-dev libboost-dev nlohmann-json3-dev doctest-dev
                libtomlplusplus-dev libcli11-dev libseccomp-dev pybind11-dev)
if [ $build_only -eq 1 ]; then
  packages=("${build_packages[@]}" "$@")
else
packages=("${build_packages[@]}" python3-pytest python3-venv python3-pip
          # make docs: the API reference of the public headers
          doxygen
          # test dependencies of the third-party package tests
          python3-numpy python3-pandas python3-distributed
          # files out of a run: the README's plot example and its test
          python3-matplotlib
          # the HTTP service's tests: OpenAPI checks, Node clients (npm ci), load, load balancer, browser
          python3-jsonschema python3-yaml nodejs wrk nginx chromium "$@")
# npm comes with NodeSource's nodejs; Debian's nodejs needs its npm package beside it.
command -v npm >/dev/null 2>&1 || packages+=(npm)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
echo "install-deps: installing ${missing[*]}" >&2
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
