// The typed wire protocol between supervisor and worker: one struct per message, one encode/decode pair.
#pragma once

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>

#include "common/frame.hpp"
#include "common/wire.hpp"
#include "spr/policy.hpp"
#include "spr/result.hpp"

namespace spr::protocol {

// Carried in the hello; a supervisor refuses a worker that speaks another version. One number for
// the protocol, whichever form (typed or not) a message takes.
constexpr int kVersion = detail::kProtocolVersion;

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
  json hardening = json::array();    // [{"name","active","detail"}, ...]
  std::optional<std::string> error;  // the worker could not start: why
};

// supervisor -> worker: run this. The policy was validated where it entered the supervisor.
struct Request {
  std::uint64_t id = 0;
  std::string code;
  json input_data = json::object();
  RunnerPolicy policy;
  std::string stdin_text;  // "stdin" on the wire, left out when empty
};

// worker -> supervisor: how request `id` ended. Everything in it is the run's own claim.
struct Reply {
  std::uint64_t id = 0;
  RunResult result;
};

// The messages below are declared for streaming, host functions, cancellation and sessions.
enum class Stream { out, err };

// worker -> supervisor: output of request `id` while it runs.
struct OutputChunk {
  std::uint64_t id = 0;
  Stream stream = Stream::out;
  std::string data;
};

// worker -> supervisor: the code of request `id` calls a function the host registered.
struct HostCall {
  std::uint64_t id = 0;
  std::uint64_t call = 0;  // numbers the calls of one request
  std::string name;
  json args = json::array();
};

// supervisor -> worker: the answer to HostCall `call` (a value, or an error message).
struct HostReturn {
  std::uint64_t id = 0;
  std::uint64_t call = 0;
  json value;
  std::optional<std::string> error;
};

// supervisor -> worker: stop request `id` as soon as possible.
struct Cancel {
  std::uint64_t id = 0;
};

// supervisor -> worker: start / end a session whose calls share one namespace.
struct SessionOpen {
  std::string session;
  RunnerPolicy policy;
};
struct SessionClose {
  std::string session;
};

using Message = std::variant<Hello, Request, Reply, OutputChunk, HostCall, HostReturn, Cancel, SessionOpen, SessionClose>;

// The wire name of each message type ("hello", "request", ...), as in the "type" field.
const char* type_name(const Message& m);

// JSON text of one frame. Never throws for text content: invalid UTF-8 is replaced.
std::string encode(const Message& m);
// Parses one frame's text. Throws ProtocolError for anything malformed (bad JSON, nesting deeper than
// detail::kMaxJsonDepth, unknown type, missing field, wrong type or range). A policy inside a message
// is checked for form only: its values are validated where a policy enters the supervisor.
Message decode(std::string_view text);

// Decodes and requires a message of type T; ProtocolError names what came instead.
template <class T>
T decode_as(std::string_view text) {
  Message m = decode(text);
  if (auto* v = std::get_if<T>(&m)) return std::move(*v);
  throw ProtocolError(std::string("expected a ") + type_name(Message{T{}}) + " message, got " + type_name(m));
}

}  // namespace spr::protocol
