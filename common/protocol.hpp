// The typed wire protocol between supervisor and worker: one struct per message, one encode/decode pair.
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/frame.hpp"
#include "spr/policy.hpp"
#include "spr/result.hpp"

namespace spr::protocol {

// Carried in the hello; a supervisor refuses a worker that speaks another version.
constexpr int kVersion = 1;

// Every field of a reply except `id`, `type` and `retire` maps onto RunResult. Throws std::invalid_argument
// (or nlohmann::json::exception) for a reply whose fields have the wrong type or range.
RunResult result_from_reply(const json& reply);
json reply_from_result(const RunResult& r);
ErrorKind error_kind_from_string(const std::string& s);  // unknown text -> protocol_error

// A policy as the supervisor sent it: fields applied, form checked (PolicyError), values not validated
// again (the supervisor validated them where the policy entered).
RunnerPolicy policy_from_wire(const json& j);

// A frame that is not a well-formed message of the expected kind. Raised by decode() only; the side
// that reads turns it into a protocol_error (supervisor) or a bad_input reply (worker).
class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// worker -> supervisor, once, before anything else.
struct Hello {
  int protocol = kVersion;
  std::int64_t pid = 0;
  Isolation isolation = Isolation::fork;
  std::string python;                // "3.11.2"
  std::string build;                 // sys.version of the embedded libpython: "3.11.2 (main, ...) [GCC 12.2.0]"
  json hardening = json::array();    // [{"name","active","detail"}, ...]
  std::optional<std::string> error;  // the worker could not start: why
};

// supervisor -> worker: run this. The policy was validated where it entered the supervisor.
// The one request type: the worker decodes it and the engine runs it as it is (embed/engine/engine.hpp).
struct Request {
  std::uint64_t id = 0;
  std::string code;
  // "input_data": its JSON text as the frame carried it (empty: {}), from input_at on. The run decodes it
  // with CPython's own scanner; no tree is built on the way. A worker that takes a whole frame over for its
  // input leaves the bytes before the value where they are: cutting them off would move (and in a fork child,
  // copy page by page) the whole input.
  std::string input_json;
  std::size_t input_at = 0;
  std::string_view input_text() const { return std::string_view(input_json).substr(std::min(input_at, input_json.size())); }
  RunnerPolicy policy;
  std::string stdin_text;  // "stdin" on the wire, left out when empty
  bool want_repr = false;  // "repr" (sessions): report repr() of a trailing expression; left out when false
  // "kill_after_seconds": a fork worker kills the run's process this long after it got the request
  // (detail::kill_after: timeout + grace). 0: left out, the worker uses the default grace.
  double kill_after_seconds = 0;
  // "functions": the host functions the run may call (names only), left out when none.
  std::vector<std::string> functions;
  // "files" (name -> text | {"base64"}) written into the run directory before the code starts, and
  // "collect" (glob patterns) of the files that come back; both left out when empty.
  Files files;
  std::vector<std::string> collect;
  // "operator_policy": the policy is the one the operator gave the Runner, not a caller's own (left out when
  // false). Only such a policy is kept decoded in a fork parent, whose children all inherit what it keeps.
  bool operator_policy = false;
};

// A request as the supervisor sends it: it refers to the caller's values instead of copying them (as
// fmt's format_args refers to its arguments), and encode() writes them straight into the frame's text.
// Lives no longer than the values it refers to.
struct RequestRef {
  std::uint64_t id;
  const std::string& code;
  const json& input_data;
  const RunnerPolicy& policy;
  const std::string& stdin_text;
  bool want_repr;
  double kill_after_seconds;
  const std::vector<std::string>& functions;
  const Files& files;
  const std::vector<std::string>& collect;
  // input_data's JSON text, spliced into the frame as it is (whoever set it checked it with
  // detail::json_text_error); empty: input_data is encoded.
  std::string_view input_json = {};
  bool operator_policy = false;  // Request::operator_policy
};

// worker -> supervisor: how request `id` ended. Everything in it is the run's own claim.
struct Reply {
  std::uint64_t id = 0;
  RunResult result;
  // The worker ends after this reply (the run left something in its process that it cannot undo, such as
  // a descriptor it kept in place of one of the worker's own): the supervisor replaces it before its next
  // lease, instead of seeing the hang-up only when it sends the next request.
  bool retire = false;
};

// worker -> supervisor: the code of request `id` calls a function the host registered. Everything
// in it is the run's own claim: the supervisor checks it (spr/runner.hpp, SECURITY.md).
struct HostCall {
  std::uint64_t id = 0;
  std::uint64_t call = 0;  // numbers the calls of one request, from 1
  std::string name;
  json args = json::array();
  json kwargs = json::object();
};

// supervisor -> worker: the answer to HostCall `call` (a value, or an error message). `limit`: the
// run is over a host call limit and ends with host_call_limit (the supervisor says so in its reply
// whatever the worker does).
struct HostReturn {
  std::uint64_t id = 0;
  std::uint64_t call = 0;
  json value;
  std::optional<std::string> error;
  bool limit = false;
};

// supervisor -> session worker: list the variables of the session's namespace.
struct ListVariables {
  std::uint64_t id = 0;
};
// session worker -> supervisor: {name: {"type", "value" | "repr"}}; the run's own claim, like a reply.
struct Variables {
  std::uint64_t id = 0;
  json variables = json::object();
};

using Message = std::variant<Hello, Request, Reply, HostCall, HostReturn, ListVariables, Variables>;

// The wire name of each message type ("hello", "request", ...), as in the "type" field.
const char* type_name(const Message& m);

// JSON text of one frame. Never throws for text content: invalid UTF-8 is replaced.
std::string encode(const Message& m);
std::string encode(const RequestRef& r);  // the same text as encode(Request) of the same values
// Parses one frame's text. Throws ProtocolError for anything malformed (bad JSON, nesting deeper than
// detail::kMaxJsonDepth, unknown type, missing field, wrong type or range). A policy inside a message
// is checked for form only: its values are validated where a policy enters the supervisor.
// (A worker decodes the same policy once: embed/worker/worker_protocol.hpp, PolicyText.)
Message decode(std::string_view text);

// The fork parent's own replies: encode(r) without the four output fields and the closing brace, so
// that the parent appends a killed run's output from the shared buffer in place (it never copies a
// run's data into a JSON value). The caller appends ,"stdout":..,"stderr":..,"stdout_truncated":..,
// "stderr_truncated":..}
std::string encode_reply_head(const Reply& r);

// Decodes and requires a message of type T; ProtocolError names what came instead.
template <class T>
T decode_as(std::string_view text) {
  Message m = decode(text);
  if (auto* v = std::get_if<T>(&m)) return std::move(*v);
  throw ProtocolError(std::string("expected a ") + type_name(Message{T{}}) + " message, got " + type_name(m));
}

}  // namespace spr::protocol
