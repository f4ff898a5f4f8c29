// Fuzz target: the JSON side of the wire protocol. The input is one frame payload: parse_json with
// the depth limit, then the policy of a request (RunnerPolicy::from_json) and the reply mapping
// (result_from_reply). Expected refusals are nlohmann exceptions and PolicyError; anything else
// escaping is a bug (libFuzzer reports an uncaught exception as a crash). dump_json must never throw.
#include <stdexcept>
#include <string>
#include <string_view>

#include "common/frame.hpp"
#include "common/protocol.hpp"
#include "fuzz_common.hpp"
#include "spr/runner.hpp"

namespace {

using nlohmann::json;

void check_policy(const json& policy_json) {
  spr::RunnerPolicy p;
  try {
    p = spr::RunnerPolicy::from_json(policy_json);
  } catch (const spr::PolicyError&) {
    return;
  } catch (const json::exception&) {
    return;
  }
  // An accepted policy must validate, serialise, and be accepted again unchanged.
  p.validate();
  const json out = p.to_json();
  (void)spr::detail::dump_json(out);
  spr::RunnerPolicy again;
  try {
    again = spr::RunnerPolicy::from_json(out);
  } catch (const spr::PolicyError& e) {
    spr_fuzz::bug("policy from to_json() refused:", e.what());
  }
  // Compared as text: extra_globals may hold NaN (TOML `nan`), which never equals itself.
  if (spr::detail::dump_json(again.to_json()) != spr::detail::dump_json(out))
    spr_fuzz::bug("policy to_json/from_json round trip differs");
}

void check_reply(const json& reply) {
  spr::RunResult r;
  try {
    r = spr::protocol::result_from_reply(reply);
  } catch (const json::exception&) {
    return;  // wrong field types: the supervisor turns these into protocol_error
  } catch (const std::invalid_argument&) {
    return;  // a field of the wrong type or out of range: also protocol_error
  }
  if (!r.ok && !r.error) spr_fuzz::bug("failed result without an error message");
  (void)spr::detail::dump_json(r.to_json());
  (void)spr::detail::dump_json(spr::protocol::reply_from_result(r));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  json value;
  try {
    value = spr::detail::parse_json(text);
  } catch (const json::exception&) {
    return 0;
  }
  (void)spr::detail::dump_json(value);
  if (!value.is_object()) return 0;
  if (auto it = value.find("policy"); it != value.end()) check_policy(*it);
  check_reply(value);
  return 0;
}
