// Shared bits of the fuzz targets: the libFuzzer entry point's signature and a loud failure helper.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

namespace spr_fuzz {

// A property the product promises does not hold: report and abort so both libFuzzer and the
// standalone driver record the input as a crash.
[[noreturn]] inline void bug(const char* what, const char* detail = "") {
  std::fprintf(stderr, "\nFUZZ BUG: %s %s\n", what, detail);
  std::fflush(stderr);
  std::abort();
}

}  // namespace spr_fuzz
