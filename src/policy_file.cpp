// RunnerPolicy from TOML policy files (the original's format): supervisor side only, the worker links no TOML.
#include <fstream>
#include <sstream>

#include <toml++/toml.h>

#include "spr/policy.hpp"

namespace spr {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw PolicyError(msg); }

json toml_to_json(const toml::node& node) {
  if (auto t = node.as_table()) {
    json out = json::object();
    for (auto&& [k, v] : *t) out[std::string(k.str())] = toml_to_json(v);
    return out;
  }
  if (auto a = node.as_array()) {
    json out = json::array();
    for (auto&& v : *a) out.push_back(toml_to_json(v));
    return out;
  }
  if (auto s = node.as_string()) return s->get();
  if (auto i = node.as_integer()) return i->get();
  if (auto f = node.as_floating_point()) return f->get();
  if (auto b = node.as_boolean()) return b->get();
  std::ostringstream os;  // dates and times: their TOML spelling
  if (auto d = node.as_date()) os << d->get();
  else if (auto t = node.as_time()) os << t->get();
  else if (auto dt = node.as_date_time()) os << dt->get();
  return os.str();
}

RunnerPolicy from_toml_table(const toml::table& doc) {
  const toml::table* tbl = &doc;
  if (auto p = doc.get("policy")) {
    if (!p->is_table()) fail("'policy' must be a TOML table");
    tbl = p->as_table();
    for (auto&& [k, v] : doc)
      if (k.str() != "policy") fail("unknown policy field '" + std::string(k.str()) + "' (outside [policy])");
  }
  if (auto eg = tbl->get("extra_globals"); eg && !eg->is_table()) fail("'extra_globals' must be a TOML table");
  // The file states the whole policy, as in the original: a list it leaves out is empty.
  RunnerPolicy base;
  base.blocked_imports.clear();
  base.blocked_builtins.clear();
  return RunnerPolicy::from_json(toml_to_json(*tbl), base);
}

}  // namespace

RunnerPolicy RunnerPolicy::from_toml(std::string_view text) {
  try {
    return from_toml_table(toml::parse(text));
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "invalid TOML: " << e.description() << " (line " << e.source().begin.line << ")";
    fail(os.str());
  }
}

RunnerPolicy RunnerPolicy::from_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read policy file '" + path.string() + "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  try {
    return from_toml(ss.str());
  } catch (const PolicyError& e) {
    fail(path.string() + ": " + e.what());
  }
}

}  // namespace spr
