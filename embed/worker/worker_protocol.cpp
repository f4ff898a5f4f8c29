// Decoding of request frames and encoding of replies for every runner of the worker.
#include "worker_protocol.hpp"

#include <optional>
#include <utility>

#include "common/frame.hpp"
#include "common/json_scan.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

namespace {
// input_data's text goes to the run as it is (the engine decodes it straight into Python objects with
// CPython's scanner, whatever its size: one decoder, so a value never decodes one way small and another
// way large), and only the rest of the frame is parsed here. The id is read in place too, before
// anything can refuse the frame: a refusal then answers that request (a reply with id 0 would be taken
// for a stale one and the run waited out). One pass over the members: input_data can be most of it.
struct InPlace {
  std::uint64_t id = 0;
  std::optional<std::string> rest;  // the frame with input_data's value replaced by null (and a prebuilt
                                    // policy's by {}), when it has either
  std::string_view input;           // input_data's text
  std::string_view policy;          // the policy's text
  bool policy_prebuilt = false;     // the policy's text is the prebuilt one's
};
InPlace read_in_place(std::string_view frame, const PolicyText* prebuilt) {
  InPlace p;
  std::optional<std::string_view> id, input, policy;
  json_scan::for_each_member(frame, [&](std::string_view key, std::string_view value) {
    if (key == "id") id = value;
    else if (key == "input_data") input = value;  // the last one, as the parser would take it
    else if (key == "policy") policy = value;
  });
  if (id) p.id = json_scan::id_number(*id).value_or(0);
  if (policy) p.policy = *policy;
  p.policy_prebuilt = prebuilt && prebuilt->set && policy && *policy == prebuilt->text;
  // Up to two cuts, in the frame's order: each value's text becomes a constant.
  struct Cut {
    std::string_view value;
    const char* with;
  };
  Cut cuts[2];
  int n = 0;
  if (input) cuts[n++] = {*input, "null"};
  if (p.policy_prebuilt) cuts[n++] = {*policy, "{}"};  // decodes to the defaults, replaced after
  if (n == 0) return p;
  if (n == 2 && cuts[1].value.data() < cuts[0].value.data()) std::swap(cuts[0], cuts[1]);
  p.rest.emplace();
  p.rest->reserve(frame.size() + 4);
  std::size_t at = 0;
  for (int i = 0; i < n; ++i) {
    const auto start = static_cast<std::size_t>(cuts[i].value.data() - frame.data());
    p.rest->append(frame.substr(at, start - at)).append(cuts[i].with);
    at = start + cuts[i].value.size();
  }
  p.rest->append(frame.substr(at));
  if (input) p.input = *input;
  return p;
}
}  // namespace

namespace {

// `owner`, when given, holds `frame`'s bytes and may be consumed: input_data's text is moved out of it, and
// a prebuilt policy moved out of `prebuilt` (which keeps no other). Without an owner, `prebuilt` gives a copy
// and keeps the request's policy when it is another.
Incoming decode(std::string_view frame, std::string* owner, const WorkerScope& scope, PolicyText* prebuilt) {
  Incoming in;
  const InPlace p = read_in_place(frame, prebuilt);
  in.id = p.id;
  try {
    protocol::Message m = protocol::decode(p.rest ? std::string_view(*p.rest) : frame);
    if (auto* l = std::get_if<protocol::ListVariables>(&m)) {
      in.kind = Incoming::Kind::list_variables;
      in.id = l->id;
      return in;
    }
    auto* rq = std::get_if<protocol::Request>(&m);
    if (!rq) throw protocol::ProtocolError(std::string("expected a request message, got ") + protocol::type_name(m));
    in.id = rq->id;
    in.run = std::move(*rq);
    if (p.policy_prebuilt && owner) {
      in.run.policy = std::move(prebuilt->policy);
    } else if (p.policy_prebuilt) {
      in.run.policy = prebuilt->policy;
    } else if (prebuilt && !owner && p.policy.data() && in.run.policy.extra_globals.empty()) {
      prebuilt->text.assign(p.policy);
      prebuilt->policy = in.run.policy;
      prebuilt->set = true;
    }
    if (p.input.data() && owner) {
      // The value stays where it is (input_at): moving it to the front would write every page of it, and a fork
      // child's pages of a large request are still its parent's until written (each write a copy).
      const std::size_t at = static_cast<std::size_t>(p.input.data() - owner->data());
      owner->resize(at + p.input.size());
      in.run.input_json = std::move(*owner);
      in.run.input_at = at;
      owner->clear();
    } else if (p.input.data()) {
      in.run.input_json.assign(p.input);
    }
    in.run.policy.isolation = scope.isolation;
    in.run.policy.allow_network = in.run.policy.allow_network && scope.allow_network;
    in.run.policy.allow_unix_sockets = in.run.policy.allow_unix_sockets && scope.allow_unix_sockets;
    in.kind = Incoming::Kind::run;
  } catch (const std::exception& e) {
    in.kind = Incoming::Kind::bad;
    in.refusal = outcome::bad_request(e.what());
  }
  return in;
}

}  // namespace

Incoming decode_request(std::string_view frame, const WorkerScope& scope, PolicyText* last) {
  return decode(frame, nullptr, scope, last);
}

Incoming decode_request_owned(std::string&& frame, const WorkerScope& scope, PolicyText* prebuilt) {
  return decode(frame, &frame, scope, prebuilt);
}

void PolicyText::remember(std::string_view wire) {
  forget();
  // Checked on the text first: a caller's data is not even parsed here (its freed copies would stay).
  if (const auto globals = json_scan::member(wire, "extra_globals"); globals && *globals != "{}") return;
  try {
    RunnerPolicy p = protocol::policy_from_wire(detail::parse_json(wire));
    if (!p.extra_globals.empty()) return;
    policy = std::move(p);
    text.assign(wire);
    set = true;
  } catch (const std::exception&) {
    // Malformed: the run's own decode refuses it, with the reason.
  }
}

void PolicyText::forget() {
  set = false;
  text.clear();
  policy = RunnerPolicy{};
}

std::string encode_reply(std::uint64_t id, RunResult result, bool retire) {
  return protocol::encode(protocol::Reply{id, std::move(result), retire});
}

}  // namespace spr::embed
