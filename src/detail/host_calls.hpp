// The supervisor's side of host functions: one run's declared set, its checks on every call frame, its helper thread.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/frame.hpp"
#include "spr/host.hpp"
#include "spr/policy.hpp"

namespace spr::detail {

// A call frame carries the arguments' JSON, the name and this much more at most (fixed fields, numbers).
constexpr std::size_t kHostCallFrameOverhead = 256;

// Names must be Python identifiers not starting with '_'. Throws PolicyError naming a bad one.
void check_function_names(const HostFunctions& functions);

// One run's host functions. Every call frame is the run's own claim: it is capped, decoded and checked
// (this run's id, the next call number, a declared name, its size, the count) before a function runs.
class HostCalls {
 public:
  // `runner`'s functions, then `run`'s (a name in both: the run's). Either may be null.
  HostCalls(std::shared_ptr<const HostFunctions> runner, const HostFunctions* run);
  ~HostCalls();  // a function still busy is left to finish on its thread; its answer is dropped
  HostCalls(const HostCalls&) = delete;
  HostCalls& operator=(const HostCalls&) = delete;

  bool empty() const { return names_.empty(); }
  const std::vector<std::string>& names() const { return names_; }
  // Our encoder writes "type" last: a frame ending so is decoded as a call (and refused if it is none).
  static bool looks_like_call(const std::string& frame);

  enum class Step {
    answered,    // the call was answered (with a value, an error, or the limit): the run goes on
    timed_out,   // the run's deadline passed in the host function or while answering
    gone,        // the worker died or stopped reading
    refused,     // the frame broke the protocol: the worker must be replaced (protocol_error, `why`)
    over_limit,  // a frame over max_host_call_kb: the worker must be replaced (host_call_limit, `why`)
  };
  // Answers one call frame of run `id` on `sock`. `deadline` is when the run's time is up; `pidfd`
  // turns readable when the worker has died (or been killed by a cancel).
  Step answer(const std::string& frame, std::uint64_t id, const RunnerPolicy& policy, int sock, int pidfd,
              Clock::time_point deadline, std::string& why);
  // The run went over a host call limit: its result is host_call_limit whatever the worker replies.
  const std::optional<std::string>& limit() const { return limit_; }

 private:
  struct Helper;
  std::shared_ptr<const HostFunctions> runner_;
  std::shared_ptr<const HostFunctions> merged_;  // runner's and run's, when the run has its own
  const HostFunctions* table_ = nullptr;
  std::vector<std::string> names_;
  std::uint64_t calls_ = 0;
  std::optional<std::string> limit_;
  std::shared_ptr<Helper> helper_;
};

}  // namespace spr::detail
