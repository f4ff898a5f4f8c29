// Request/reply field mapping shared by the supervisor and the worker.
#pragma once

#include <optional>
#include <string>

#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "common/outcome.hpp"  // failure(), timeout_result(): outcomes live there

namespace spr::detail {

constexpr int kProtocolVersion = 1;

// Every field of a reply except `id` and `type` maps onto RunResult. Throws std::invalid_argument
// (or nlohmann::json::exception) for a reply whose fields have the wrong type or range.
RunResult result_from_reply(const json& reply);
json reply_from_result(const RunResult& r);
ErrorKind error_kind_from_string(const std::string& s);  // unknown text -> protocol_error


// A policy as the supervisor sent it: fields applied, form checked (PolicyError), values not validated
// again (the supervisor validated them where the policy entered).
RunnerPolicy policy_from_wire(const json& j);

// "5", "1.9", "0.25": the shortest spelling that round-trips, as the original prints timeouts.
std::string format_seconds(double s);

}  // namespace spr::detail
