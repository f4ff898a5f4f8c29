// Layout of the shared output buffer (a memfd the supervisor creates and the worker maps),
// so a run's partial stdout/stderr survive even a SIGKILL of the worker or its child.
#pragma once

#include <cstdint>

namespace spr::detail {

constexpr std::uint32_t kCaptureMagic = 0x31525053;  // "SPR1"
constexpr int kCaptureFd = 4;                        // where the worker finds the memfd

struct CaptureHeader {
  std::uint32_t magic;
  std::uint32_t pad;
  std::uint64_t run_id;   // the request id these bytes belong to
  std::uint64_t cap;      // bytes reserved for each stream
  std::uint64_t out_len;  // bytes used in the stdout area (<= cap)
  std::uint64_t err_len;  // bytes used in the stderr area (<= cap)
  std::uint32_t out_truncated;
  std::uint32_t err_truncated;
};
// The stdout area starts at kCaptureDataOffset, the stderr area at kCaptureDataOffset + cap.
constexpr std::uint64_t kCaptureDataOffset = 64;
static_assert(sizeof(CaptureHeader) <= kCaptureDataOffset);

}  // namespace spr::detail

namespace spr::detail {
constexpr int kProtocolFd = 3;  // the worker's end of the supervisor's socketpair: requests in, replies out
}  // namespace spr::detail
