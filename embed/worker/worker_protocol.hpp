// The worker's side of the protocol: one function decodes every request frame, one encodes every reply.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "common/protocol.hpp"
#include "engine/engine.hpp"

namespace spr::embed {

// What a request may ask of this worker, fixed when it started.
struct WorkerScope {
  Isolation isolation = Isolation::fork;
  bool allow_network = false;  // the worker's network namespace decides; a request can only narrow it
  bool allow_unix_sockets = false;  // the worker's seccomp filter decides; a request can only narrow it
};

// One request frame, decoded: the protocol's request as the engine runs it.
struct Incoming {
  enum class Kind { run, list_variables, bad };
  Kind kind = Kind::bad;
  std::uint64_t id = 0;   // 0 when the frame carries no usable id
  protocol::Request run;  // kind == run: the policy narrowed to this worker's scope
  RunResult refusal;      // kind == bad: the bad_input answer
};

// The last policy a runner decoded, by its text: a request whose policy text is the same byte for byte
// (callers send one policy again and again) gets its decoded form without a parse. A policy with
// extra_globals (a caller's data, handed to its runs) is never kept: the fork parent holds no run's data.
struct PolicyText {
  std::string text;     // the policy's JSON text as the request spelled it
  RunnerPolicy policy;  // its decoded form (protocol::policy_from_wire)
  bool set = false;
  // Keeps `wire`'s decoded form, or nothing (malformed, or has extra_globals: the run decodes it then).
  void remember(std::string_view wire);
  void forget();
};

// Used by worker_main's runners, the fork child and the session loop alike. The policy is the one
// the supervisor validated: only its form is checked here (protocol::decode), never its values again.
// `last` (nullptr: decode every policy): a request with its policy text gets a copy of its policy; another
// policy is decoded, and kept there in its place unless it has extra_globals.
Incoming decode_request(std::string_view frame, const WorkerScope& scope, PolicyText* last);
// The same for a frame the caller no longer needs: input_data's text is cut out of `frame` in place and
// moved into the request instead of copied (a large input is most of the frame; a copy would fault in
// as many fresh pages again). `frame` is left empty.
// `prebuilt`, when its text is the request's policy text, gives the request its policy (moved out of it:
// for a fork child, which runs one request) instead of a decode; it never keeps another.
Incoming decode_request_owned(std::string&& frame, const WorkerScope& scope, PolicyText* prebuilt = nullptr);

// The reply frame for request `id`.
std::string encode_reply(std::uint64_t id, RunResult result, bool retire = false);

}  // namespace spr::embed
