// Decoding of request frames and encoding of replies for every runner of the worker.
#include "worker_protocol.hpp"

#include <utility>

#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

Incoming decode_request(std::string_view frame, const WorkerScope& scope, protocol::PolicyCache* policies) {
  Incoming in;
  try {
    protocol::Message m = protocol::decode(frame, policies);
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
