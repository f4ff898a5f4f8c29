// Decoding of request frames and encoding of replies for every runner of the worker.
#include "worker_protocol.hpp"

#include <charconv>
#include <optional>
#include <utility>

#include "common/json_scan.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

namespace {
// input_data's text goes to the run as it is (the engine decodes it straight into Python objects with
// CPython's scanner, whatever its size: one decoder, so a value never decodes one way small and another
// way large), and only the rest of the frame is parsed here. Nothing when the frame has no such member
// (or is not an object): the whole frame is parsed as usual.
struct InputSplit {
  std::string rest;        // the frame with input_data's value replaced by null
  std::string_view input;  // that value's text
};
std::optional<InputSplit> split_input(std::string_view frame) {
  const std::optional<std::string_view> v = json_scan::member(frame, "input_data");
  if (!v) return std::nullopt;
  const std::size_t at = static_cast<std::size_t>(v->data() - frame.data());
  InputSplit s;
  s.rest.reserve(frame.size() - v->size() + 4);
  s.rest.append(frame.substr(0, at)).append("null").append(frame.substr(at + v->size()));
  s.input = *v;
  return s;
}

// The request's id read in place, before anything can refuse the frame: a refusal then answers that
// request (a reply with id 0 would be taken for a stale one and the run waited out).
std::uint64_t id_in_place(std::string_view frame) {
  const std::optional<std::string_view> v = json_scan::member(frame, "id");
  std::uint64_t id = 0;
  if (v) std::from_chars(v->data(), v->data() + v->size(), id);
  return id;
}
}  // namespace

Incoming decode_request(std::string_view frame, const WorkerScope& scope, protocol::PolicyCache* policies) {
  Incoming in;
  in.id = id_in_place(frame);
  try {
    std::optional<InputSplit> split = split_input(frame);
    protocol::Message m = protocol::decode(split ? std::string_view(split->rest) : frame, policies);
    if (auto* l = std::get_if<protocol::ListVariables>(&m)) {
      in.kind = Incoming::Kind::list_variables;
      in.id = l->id;
      return in;
    }
    auto* rq = std::get_if<protocol::Request>(&m);
    if (!rq) throw protocol::ProtocolError(std::string("expected a request message, got ") + protocol::type_name(m));
    in.id = rq->id;
    in.run.id = rq->id;
    in.run.code = std::move(rq->code);
    in.run.input_data = std::move(rq->input_data);
    if (split) in.run.input_json.assign(split->input);
    in.run.stdin_text = std::move(rq->stdin_text);
    in.run.want_repr = rq->want_repr;
    in.run.functions = std::move(rq->functions);
    in.run.files = std::move(rq->files);
    in.run.collect = std::move(rq->collect);
    in.run.policy = std::move(rq->policy);
    in.run.policy.isolation = scope.isolation;
    in.run.policy.allow_network = in.run.policy.allow_network && scope.allow_network;
    in.run.policy.allow_unix_sockets = in.run.policy.allow_unix_sockets && scope.allow_unix_sockets;
    in.kill_after_seconds = rq->kill_after_seconds;
    in.kind = Incoming::Kind::run;
  } catch (const std::exception& e) {
    in.kind = Incoming::Kind::bad;
    in.refusal = outcome::bad_request(e.what());
  }
  return in;
}

std::string encode_reply(std::uint64_t id, RunResult result) {
  return protocol::encode(protocol::Reply{id, std::move(result)});
}

}  // namespace spr::embed
