// Force-included by run_fuzz.sh when it compiles src/policy.cpp with toml++ header-only.
//
// toml++ 3.3.0 asserts a precondition of parser::parse_key() that parse_table_header() does not
// establish: a table header whose key starts with a character that is neither a bare-key character
// nor a quote ("[`", "[[=", "[[[1]]]") aborts a debug build (upstream: marzer/tomlplusplus PR #301).
// The product links the packaged libtomlplusplus, built with NDEBUG by GCC, where the assert is
// compiled out and parse_key() reports an ordinary parse_error (PolicyError for us). This hook lets
// that one known assertion pass so fuzzing can go on, and keeps every other toml++ assertion fatal.
// The same holds for parse_value()'s `!is_value_terminator(*cp)` precondition, broken by
// parse_array() on "x = [}" (tests/fuzz/crashes/policy-toml++-parse_value-assert-array.toml).
// SPR_FUZZ_STRICT_TOML=1 in run_fuzz.sh leaves toml++'s own assert() in place.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>

constexpr void spr_fuzz_toml_assert(bool ok, const char* expr, const char* file, int line) {
  if (ok) return;
  if (std::strcmp(expr, "is_bare_key_character(*cp) || is_string_delimiter(*cp)") == 0) return;
  if (std::strcmp(expr, "!is_value_terminator(*cp)") == 0) return;  // parse_value(), e.g. "x = [}"
  std::fprintf(stderr, "%s:%d: toml++ assertion failed: %s\n", file, line, expr);
  std::abort();
}

#define TOML_ASSERT(expr) spr_fuzz_toml_assert(static_cast<bool>(expr), #expr, __FILE__, __LINE__)
