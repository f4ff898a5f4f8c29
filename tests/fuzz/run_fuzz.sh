#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) and runs each one in turn.
#
#   bash tests/fuzz/run_fuzz.sh [build-dir]        (default: build-fuzz; `make fuzz` calls this)
#
# Environment:
#   SPR_FUZZ_SECONDS   seconds per target (default 60)
#   SPR_FUZZ_TARGETS   targets to run (default "frame request policy")
#   SPR_FUZZ_JOBS      parallel compile jobs (default 2)
#   CXX                clang++ to use (default clang++, then clang++-14)
#   SPR_FUZZ_UBSAN_RECOVER=1  UBSan reports and continues (distinct reports are listed in the summary)
#                             instead of stopping the target at the first one with a saved input
#   SPR_FUZZ_STRICT_TOML=1    keep toml++'s known parse_key assertion fatal (see toml_assert.hpp)
#
# Each target fuzzes <build-dir>/corpus-<name> (seeded from tests/fuzz/corpus/<name>, which is
# never written). Crashes land in <build-dir>/crashes-<name>/; logs in <build-dir>/fuzz-<name>.log.
# Replay one input: <build-dir>/fuzz_<name> <file>. Exit status: 1 if any target crashed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-build-fuzz}"
seconds="${SPR_FUZZ_SECONDS:-60}"
targets="${SPR_FUZZ_TARGETS:-frame request policy protocol}"
jobs="${SPR_FUZZ_JOBS:-2}"

if [[ -z "${CXX:-}" ]]; then
  if command -v clang++ >/dev/null; then CXX=clang++; else CXX=clang++-14; fi
fi
command -v "$CXX" >/dev/null || { echo "run_fuzz.sh: $CXX not found (libFuzzer needs clang)" >&2; exit 2; }

mkdir -p "$out"
out="$(cd "$out" && pwd)"

sanitize="-fsanitize=fuzzer,address,undefined"
recover="-fno-sanitize-recover=undefined"
[[ "${SPR_FUZZ_UBSAN_RECOVER:-0}" == 1 ]] && recover=""
# toml++ header-only so the TOML parser is instrumented too (the packaged .so is not).
cxxflags=(-std=c++17 -g -O1 -fno-omit-frame-pointer $sanitize $recover
          -DTOML_HEADER_ONLY=1 -I"$root" -I"$root/include" -I"$here")
[[ "${SPR_FUZZ_STRICT_TOML:-0}" == 1 ]] || cxxflags+=(-include "$here/toml_assert.hpp")
# Flags change the objects: rebuild everything when they differ from the last build.
flags_id="$CXX ${cxxflags[*]}"
if [[ "$(cat "$out/.flags" 2>/dev/null)" != "$flags_id" ]]; then rm -f "$out"/*.o; echo "$flags_id" >"$out/.flags"; fi
libs=($(pkg-config --libs tomlplusplus 2>/dev/null || echo -ltomlplusplus))

# --- build: product sources once (objects shared by all targets), then each target ---------------
echo "== building libFuzzer targets in $out with $CXX"
compile() {  # src obj
  local src="$1" obj="$2"
  if [[ ! -f "$obj" || "$src" -nt "$obj" || "$here/toml_assert.hpp" -nt "$obj" || "$here/fuzz_common.hpp" -nt "$obj" || -n "$(find "$root/common" "$root/include" -name '*.hpp' -newer "$obj" -print -quit)" ]]; then
    "$CXX" "${cxxflags[@]}" -c "$src" -o "$obj"
  fi
}
pids=()
for src in common/frame common/policy common/protocol common/result common/version src/policy_file; do
  compile "$root/$src.cpp" "$out/$(basename "$src").o" & pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for t in $targets; do
  compile "$here/fuzz_$t.cpp" "$out/fuzz_$t.o" & pids+=($!)
  if (( ${#pids[@]} >= jobs )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done
for t in $targets; do
  "$CXX" $sanitize "$out/fuzz_$t.o" "$out/frame.o" "$out/policy.o" "$out/result.o" "$out/protocol.o" "$out/version.o" "$out/policy_file.o" "${libs[@]}" -o "$out/fuzz_$t"
done

# --- run: one target at a time -------------------------------------------------------------------
max_len_for() {
  case "$1" in
    frame) echo 8192 ;;    # the target caps frames at 4096 bytes; leave room for several and for too_large
    request) echo 4096 ;;  # deep-nesting inputs need > 2 * 512 bytes
    policy) echo 4096 ;;
    *) echo 4096 ;;
  esac
}

summary=()
status=0
for t in $targets; do
  corpus="$out/corpus-$t"
  crashes="$out/crashes-$t"
  log="$out/fuzz-$t.log"
  mkdir -p "$corpus" "$crashes"
  cp -n "$here/corpus/$t/"* "$corpus/" 2>/dev/null || true
  dict=()
  [[ -f "$here/$t.dict" ]] && dict=(-dict="$here/$t.dict")
  echo "== fuzz_$t for ${seconds}s (max_len $(max_len_for "$t"))"
  set +e
  ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}" \
  UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}" \
    "$out/fuzz_$t" "$corpus" "${dict[@]}" -max_total_time="$seconds" -max_len="$(max_len_for "$t")" \
      -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix="$crashes/" >"$log" 2>&1
  rc=$?
  set -e
  execs="$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)"
  if [[ -z "$execs" ]]; then  # a crash skips the final stats: take the last progress line
    execs="$(grep -o '^#[0-9]*' "$log" | tail -1 | tr -d '#' || true)"
  fi
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || true)"
  if [[ $rc -eq 0 ]]; then
    verdict="no crash"
  else
    status=1
    artifact="$(grep -o "Test unit written to .*" "$log" | tail -1 | sed 's/Test unit written to //' || true)"
    reason="$(grep -m1 -E '^==[0-9]+==ERROR|runtime error|FUZZ BUG|[Aa]ssertion|uncaught exception|deadly signal' "$log" | head -c 200 || true)"
    verdict="CRASHED (exit $rc): ${reason:-see log}; input: ${artifact:-none}"
  fi
  ub="$( (grep -o 'runtime error: .*' "$log" || true) | sort -u | wc -l)"
  if [[ $rc -eq 0 && $ub -gt 0 ]]; then
    status=1
    verdict="no crash, but $ub distinct UBSan report(s): $(grep -m1 -o '[^ ]*: runtime error: .*' "$log" | head -c 200)"
  fi
  line="fuzz_$t: ${execs:-?} executions, coverage ${cov:-?}, $verdict"
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (logs in $out/fuzz-<name>.log)"
printf '%s\n' "${summary[@]}"
exit $status
