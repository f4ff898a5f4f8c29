// Namespace and sub-interpreter runners: decode the request, run it here, encode the reply.
#include "interp_runners.hpp"

#include <string.h>

#include <utility>

#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

namespace {

// The decoded request run by `run_one`, or the refusal of a frame that is not a run request.
template <class F>
std::string answer(std::string_view frame, const WorkerScope& scope, protocol::PolicyCache& policies, F&& run_one) {
  Incoming in = decode_request(frame, scope, &policies);
  if (in.kind == Incoming::Kind::run) return encode_reply(in.id, run_one(in.run));
  if (in.kind == Incoming::Kind::bad) return encode_reply(in.id, std::move(in.refusal));
  return encode_reply(in.id, outcome::bad_request("not a run request"));
}

}  // namespace

void wipe(std::string& s) {
  if (!s.empty()) explicit_bzero(s.data(), s.size());
  s.clear();
}

void NamespaceRunner::handle(std::string& frame, std::string& reply) {
  reply = answer(frame, scope_, policies_, [](const protocol::Request& rq) { return run(rq); });
}

void SubinterpreterRunner::while_idle(int fd) {
  pool_.work_while_idle(fd);
  // Every used interpreter has ended, so no object owns a descriptor a run left open: close them.
  if (!pool_.has_retired()) state_.restore(true);
}

void SubinterpreterRunner::handle(std::string& frame, std::string& reply) {
  if (pool_.has_retired() && state_.descriptors_left()) {
    // Back to back after a run that left descriptors open: end its interpreter now so they can be closed.
    pool_.end_retired();
    state_.restore(true);
  }
  reply = answer(frame, scope_, policies_, [this](const protocol::Request& rq) { return pool_.run(rq); });
}

void SubinterpreterRunner::after_reply() {
  pool_.retire();
  state_.restore(false);  // descriptors wait until the run's interpreter has ended (while_idle)
}

}  // namespace spr::embed
