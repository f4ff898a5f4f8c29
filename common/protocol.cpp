// Encode/decode of every protocol message: JSON objects with a "type" field, checked field by field.
#include "common/protocol.hpp"

#include "common/json_scan.hpp"
#include "common/run_files.hpp"

#include <cmath>

#include <climits>
#include <type_traits>
#include <utility>


namespace spr::protocol {

namespace {

template <class... Fs>
struct Overload : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overload(Fs...) -> Overload<Fs...>;

[[noreturn]] void bad(const std::string& what) { throw ProtocolError(what); }

const json& need(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) bad(std::string("missing field '") + name + "'");
  return *it;
}

std::uint64_t u64(const json& j, const char* name) {
  const json& v = need(j, name);
  if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
    bad(std::string("field '") + name + "' is not a non-negative integer");
  return v.get<std::uint64_t>();
}

std::string str(const json& j, const char* name) {
  const json& v = need(j, name);
  if (!v.is_string()) bad(std::string("field '") + name + "' is not a string");
  return v.get<std::string>();
}

std::optional<std::string> opt_str(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_string()) bad(std::string("field '") + name + "' is not a string");
  return it->get<std::string>();
}

RunnerPolicy policy(const json& j) {
  try {
    return policy_from_wire(need(j, "policy"));
  } catch (const PolicyError& e) {
    bad(std::string("bad policy: ") + e.what());
  }
}

double seconds(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return 0;
  if (!it->is_number() || !(it->get<double>() >= 0) || it->get<double>() > 1e9)
    bad(std::string("field '") + name + "' is not a number of seconds");
  return it->get<double>();
}

Isolation isolation(const json& j) {
  auto i = parse_isolation(str(j, "isolation"));
  if (!i) bad("unknown isolation '" + str(j, "isolation") + "'");
  return *i;
}

// Equal and of the same types all the way down: nlohmann's == takes 1 and 1.0 as equal, but a cached
// text must not hand one caller's 1.0 to another's 1 (extra_globals reach the run as given).
bool identical(const json& a, const json& b) {
  if (a.type() != b.type() || a.size() != b.size()) return false;
  if (a.is_object()) {
    for (auto x = a.begin(), y = b.begin(); x != a.end(); ++x, ++y)
      if (x.key() != y.key() || !identical(x.value(), y.value())) return false;
    return true;
  }
  if (a.is_array()) {
    for (std::size_t i = 0; i < a.size(); ++i)
      if (!identical(a[i], b[i])) return false;
    return true;
  }
  if (a.is_number_float()) return a.get<double>() == b.get<double>() && std::signbit(a.get<double>()) == std::signbit(b.get<double>());
  return a == b;
}

// The JSON text of a request's policy, kept per thread: callers send the same policy again and again,
// and the text costs more to make than to compare the policy.
const std::string& policy_text(const RunnerPolicy& p) {
  thread_local RunnerPolicy last;
  thread_local std::string text = detail::dump_json(last.to_json());
  if (!(p == last) || !identical(p.extra_globals, last.extra_globals)) {
    text = detail::dump_json(p.to_json());
    last = p;
  }
  return text;
}

// A request is written as text, piece by piece: its input is not copied into a JSON value first, and
// its policy's text is the cached one (the request is on every run's path).
std::string encode_request(const RequestRef& r) {
  // Reserved whole: a frame that grew by doubling would hold a large input twice over for a moment.
  const std::string& policy = policy_text(r.policy);
  std::string text;
  text.reserve(r.code.size() + r.stdin_text.size() + r.input_json.size() + policy.size() + 1024);
  text += "{\"code\":";
  text += detail::dump_json(json(r.code));
  if (!r.collect.empty()) {
    text += ",\"collect\":";
    text += detail::dump_json(json(r.collect));
  }
  if (!r.files.empty()) {
    text += ",\"files\":";
    text += detail::dump_json(detail::run_files::to_json(r.files));
  }
  if (!r.functions.empty()) {
    text += ",\"functions\":";
    text += detail::dump_json(json(r.functions));
  }
  text += ",\"id\":";
  text += std::to_string(r.id);
  text += ",\"input_data\":";
  if (r.input_json.empty()) text += detail::dump_json(r.input_data);
  else text += r.input_json;
  if (r.kill_after_seconds > 0) {
    text += ",\"kill_after_seconds\":";
    text += detail::dump_json(json(r.kill_after_seconds));
  }
  if (r.operator_policy) text += ",\"operator_policy\":true";
  text += ",\"policy\":";
  text += policy;
  if (r.want_repr) text += ",\"repr\":true";
  if (!r.stdin_text.empty()) {
    text += ",\"stdin\":";
    text += detail::dump_json(json(r.stdin_text));
  }
  text += ",\"type\":\"request\"}";
  return text;
}

}  // namespace

const char* type_name(const Message& m) {
  static constexpr const char* kNames[] = {"hello",       "request",        "reply",    "host_call",
                                           "host_return", "list_variables", "variables"};
  static_assert(std::size(kNames) == std::variant_size_v<Message>);
  return kNames[m.index()];
}

std::string encode(const RequestRef& r) { return encode_request(r); }

std::string encode(const Message& m) {
  if (const auto* r = std::get_if<Request>(&m)) {
    static const json kNoValue;  // unused: the text is spliced in
    return encode_request(RequestRef{r->id, r->code, kNoValue, r->policy, r->stdin_text, r->want_repr,
                                     r->kill_after_seconds, r->functions, r->files, r->collect,
                                     r->input_text().empty() ? std::string_view("{}") : r->input_text(),
                                     r->operator_policy});
  }
  json j = std::visit(
      Overload{
          [](const Hello& h) {
            json o = {{"protocol", h.protocol},     {"pid", h.pid},
                      {"isolation", to_string(h.isolation)}, {"python", h.python},
                      {"hardening", h.hardening}};
            if (!h.build.empty()) o["build"] = h.build;
            if (h.error) o["error"] = *h.error;
            return o;
          },
          [](const Request&) { return json(); },  // written as text: encode_request
          [](const Reply& r) {
            json o = reply_from_result(r.result);
            o["id"] = r.id;
            if (r.retire) o["retire"] = true;
            return o;
          },
          [](const HostCall& c) {
            return json{{"id", c.id}, {"call", c.call}, {"name", c.name}, {"args", c.args}, {"kwargs", c.kwargs}};
          },
          [](const HostReturn& r) {
            json o = {{"id", r.id}, {"call", r.call}, {"value", r.value}};
            if (r.error) o["error"] = *r.error;
            if (r.limit) o["limit"] = true;
            return o;
          },
          [](const ListVariables& l) { return json{{"id", l.id}}; },
          [](const Variables& v) { return json{{"id", v.id}, {"variables", v.variables}}; },
      },
      m);
  j["type"] = type_name(m);
  return detail::dump_json(j);
}

std::string encode_reply_head(const Reply& r) {
  json o = reply_from_result(r.result);
  for (const char* k : {"stdout", "stderr", "stdout_truncated", "stderr_truncated"}) o.erase(k);
  o["id"] = r.id;
  if (r.retire) o["retire"] = true;
  o["type"] = type_name(Message{Reply{}});
  std::string text = detail::dump_json(o);
  text.pop_back();  // the closing brace: the output fields follow
  return text;
}

Message decode(std::string_view text) {
  json j;
  try {
    j = detail::parse_json(text);
  } catch (const std::exception& e) {
    bad(std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) bad("a message must be a JSON object");
  // Checks made on the raw text (json_scan::member: the result's size, a frame's type in the fork parent) must
  // see what this parser sees: it decodes escaped names and keeps the last of two.
  if (!json_scan::plain_members(text)) bad("a message's member names must be unique and written without escapes");
  const std::string type = str(j, "type");
  if (type == "hello") {
    Hello h;
    const json& p = need(j, "protocol");
    if (!p.is_number_integer() || p.get<std::int64_t>() < 0 || p.get<std::int64_t>() > INT_MAX)
      bad("field 'protocol' is not a version number");
    h.protocol = p.get<int>();
    h.error = opt_str(j, "error");
    if (h.error) return h;  // a worker that failed to start may know nothing else
    h.pid = static_cast<std::int64_t>(u64(j, "pid"));
    h.isolation = isolation(j);
    h.python = str(j, "python");
    if (auto b = opt_str(j, "build")) h.build = *b;
    h.hardening = need(j, "hardening");
    if (!h.hardening.is_array()) bad("field 'hardening' is not a list");
    return h;
  }
  if (type == "request") {
    Request r;
    r.id = u64(j, "id");
    r.code = str(j, "code");
    // The worker cuts input_data's text out of the frame before it comes here (worker_protocol.cpp): this
    // finds null, and the worker puts the text it cut in its place. A whole frame's value is written as text.
    if (auto it = j.find("input_data"); it != j.end()) r.input_json = detail::dump_json(*it);
    if (auto in = opt_str(j, "stdin")) r.stdin_text = *in;
    if (auto it = j.find("repr"); it != j.end()) {
      if (!it->is_boolean()) bad("field 'repr' is not a boolean");
      r.want_repr = it->get<bool>();
    }
    if (auto it = j.find("operator_policy"); it != j.end()) {
      if (!it->is_boolean()) bad("field 'operator_policy' is not a boolean");
      r.operator_policy = it->get<bool>();
    }
    r.kill_after_seconds = seconds(j, "kill_after_seconds");
    if (auto it = j.find("functions"); it != j.end()) {
      if (!it->is_array()) bad("field 'functions' is not a list");
      for (const auto& f : *it) {
        if (!f.is_string()) bad("field 'functions' must hold strings");
        r.functions.push_back(f.get<std::string>());
      }
    }
    if (auto it = j.find("files"); it != j.end()) {
      try {
        r.files = detail::run_files::from_json(*it, "files");
      } catch (const std::invalid_argument& e) {
        bad(e.what());
      }
    }
    if (auto it = j.find("collect"); it != j.end()) {
      if (!it->is_array() || it->size() > detail::run_files::kMaxPatterns) bad("field 'collect' is not a list of patterns");
      for (const auto& f : *it) {
        if (!f.is_string() || !detail::run_files::check_pattern(f.get_ref<const std::string&>()).empty())
          bad("field 'collect' must hold relative glob patterns");
        r.collect.push_back(f.get<std::string>());
      }
    }
    r.policy = policy(j);
    return r;
  }
  if (type == "reply") {
    Reply r;
    r.id = u64(j, "id");
    try {
      r.result = result_from_reply(j);
    } catch (const std::exception& e) {
      bad(e.what());
    }
    if (auto it = j.find("retire"); it != j.end()) {
      if (!it->is_boolean()) bad("field 'retire' is not true or false");
      r.retire = it->get<bool>();
    }
    return r;
  }
  if (type == "host_call") {
    HostCall c;
    c.id = u64(j, "id");
    c.call = u64(j, "call");
    c.name = str(j, "name");
    c.args = need(j, "args");
    if (!c.args.is_array()) bad("field 'args' is not a list");
    if (auto it = j.find("kwargs"); it != j.end()) {
      if (!it->is_object()) bad("field 'kwargs' is not an object");
      c.kwargs = std::move(*it);
    }
    return c;
  }
  if (type == "host_return") {
    HostReturn r;
    r.id = u64(j, "id");
    r.call = u64(j, "call");
    if (auto it = j.find("value"); it != j.end()) r.value = *it;
    r.error = opt_str(j, "error");
    if (auto it = j.find("limit"); it != j.end()) {
      if (!it->is_boolean()) bad("field 'limit' is not a boolean");
      r.limit = it->get<bool>();
    }
    return r;
  }
  if (type == "list_variables") return ListVariables{u64(j, "id")};
  if (type == "variables") {
    Variables v{u64(j, "id"), need(j, "variables")};
    if (!v.variables.is_object()) bad("field 'variables' is not an object");
    return v;
  }
  bad("unknown message type '" + type + "'");
}

}  // namespace spr::protocol
