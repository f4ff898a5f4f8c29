// RunResult and ErrorKind: names, JSON form, and the reply mapping of the wire protocol.
#include <array>
#include <climits>
#include <stdexcept>
#include <type_traits>
#include <cstdio>
#include <utility>

#include "common/run_files.hpp"
#include "common/protocol.hpp"

namespace spr {

namespace {
// The stable wire names of ErrorKind, in enum order.
constexpr std::array<std::pair<ErrorKind, const char*>, 17> kKinds{{
    {ErrorKind::none, "none"},
    {ErrorKind::exception, "exception"},
    {ErrorKind::syntax, "syntax"},
    {ErrorKind::timeout, "timeout"},
    {ErrorKind::memory, "memory"},
    {ErrorKind::cpu_time, "cpu_time"},
    {ErrorKind::blocked_import, "blocked_import"},
    {ErrorKind::denied, "denied"},
    {ErrorKind::system_exit, "system_exit"},
    {ErrorKind::result_too_large, "result_too_large"},
    {ErrorKind::worker_crashed, "worker_crashed"},
    {ErrorKind::worker_unavailable, "worker_unavailable"},
    {ErrorKind::protocol_error, "protocol_error"},
    {ErrorKind::bad_input, "bad_input"},
    {ErrorKind::cancelled, "cancelled"},
    {ErrorKind::session_lost, "session_lost"},
    {ErrorKind::host_call_limit, "host_call_limit"},
}};
}  // namespace

std::string to_string(ErrorKind k) {
  for (const auto& [kind, name] : kKinds)
    if (kind == k) return name;
  return "protocol_error";
}

json RunResult::to_json() const {
  json j = protocol::reply_from_result(*this);
  j["duration_ms"] = static_cast<double>(duration.count()) / 1000.0;
  j["queued_ms"] = static_cast<double>(queued.count()) / 1000.0;
  j["isolation"] = to_string(isolation);
  return j;
}

namespace protocol {

ErrorKind error_kind_from_string(const std::string& s) {
  for (const auto& [kind, name] : kKinds)
    if (s == name) return kind;
  return ErrorKind::protocol_error;
}

json reply_from_result(const RunResult& r) {
  json j = json::object();
  j["ok"] = r.ok;
  j["result"] = r.result;
  j["stdout"] = r.stdout_text;
  j["stderr"] = r.stderr_text;
  j["timed_out"] = r.timed_out;
  j["resource_exceeded"] = r.resource_exceeded;
  j["error"] = r.error ? json(*r.error) : json(nullptr);
  j["exit_code"] = r.exit_code;
  j["error_kind"] = to_string(r.error_kind);
  j["stdout_truncated"] = r.stdout_truncated;
  j["stderr_truncated"] = r.stderr_truncated;
  if (r.repr) j["repr"] = *r.repr;
  if (!r.files.empty()) j["files"] = detail::run_files::to_json(r.files);
  if (!r.files_left_out.empty()) j["files_left_out"] = r.files_left_out;
  if (r.files_truncated) j["files_truncated"] = true;
  return j;
}

namespace {
// Replies come from a process that ran untrusted code: every field is type-checked, and a value
// of the wrong type or out of range makes the whole reply invalid (std::invalid_argument).
template <class T>
T field(const json& j, const char* name, T fallback) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return fallback;
  if constexpr (std::is_same_v<T, bool>) {
    if (!it->is_boolean()) throw std::invalid_argument(std::string("reply field '") + name + "' is not a boolean");
  } else if constexpr (std::is_same_v<T, int>) {
    if (!it->is_number_integer() || it->get<long long>() < INT_MIN || it->get<long long>() > INT_MAX)
      throw std::invalid_argument(std::string("reply field '") + name + "' is not an int");
  } else {
    if (!it->is_string()) throw std::invalid_argument(std::string("reply field '") + name + "' is not a string");
  }
  return it->get<T>();
}
}  // namespace

RunResult result_from_reply(const json& j) {
  if (!j.is_object()) throw std::invalid_argument("reply is not an object");
  RunResult r;
  r.ok = field(j, "ok", false);
  if (auto it = j.find("result"); it != j.end()) r.result = *it;
  r.stdout_text = field<std::string>(j, "stdout", "");
  r.stderr_text = field<std::string>(j, "stderr", "");
  r.timed_out = field(j, "timed_out", false);
  r.resource_exceeded = field(j, "resource_exceeded", false);
  if (auto it = j.find("error"); it != j.end() && it->is_string()) r.error = it->get<std::string>();
  r.exit_code = field(j, "exit_code", r.ok ? 0 : 1);
  r.error_kind = error_kind_from_string(field<std::string>(j, "error_kind", r.ok ? "none" : "protocol_error"));
  r.stdout_truncated = field(j, "stdout_truncated", false);
  r.stderr_truncated = field(j, "stderr_truncated", false);
  if (auto it = j.find("repr"); it != j.end() && !it->is_null()) r.repr = field<std::string>(j, "repr", "");
  if (auto it = j.find("files"); it != j.end() && !it->is_null()) r.files = detail::run_files::from_json(*it, "files");
  if (auto it = j.find("files_left_out"); it != j.end() && !it->is_null()) {
    if (!it->is_array() || it->size() > detail::run_files::kMaxFiles)
      throw std::invalid_argument("reply field 'files_left_out' is not a list of names");
    for (const auto& n : *it) {
      if (!n.is_string() || !detail::run_files::check_name(n.get_ref<const std::string&>()).empty())
        throw std::invalid_argument("reply field 'files_left_out' holds something other than a name");
      r.files_left_out.push_back(n.get<std::string>());
    }
  }
  r.files_truncated = field(j, "files_truncated", false);
  if (!r.ok && !r.error) {
    r.error = "worker reported failure without an error message";
    if (r.error_kind == ErrorKind::none) r.error_kind = ErrorKind::protocol_error;
  }
  return r;
}

}  // namespace protocol
}  // namespace spr
