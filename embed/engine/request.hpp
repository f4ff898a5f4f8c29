// One run as the engine takes it: code, input, policy, and what a session or the host adds.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spr/policy.hpp"
#include "spr/result.hpp"  // Files

struct _object;  // PyObject, without Python.h

namespace spr::embed {

struct Request {
  std::uint64_t id = 0;
  std::string code;
  json input_data = json::object();
  // input_data's JSON text (the supervisor checked it); when set, it is what the run gets, decoded by
  // CPython's own JSON scanner without a tree in between, and input_data is ignored.
  std::string input_json;
  RunnerPolicy policy;
  std::string stdin_text;  // what sys.stdin and input() read; empty: EOF at once
  // Sessions: the __main__ module whose namespace is kept between calls (borrowed; null = a fresh one,
  // cleared after the run), and whether to report repr() of a trailing expression in RunResult::repr.
  ::_object* session_main = nullptr;
  bool want_repr = false;
  std::vector<std::string> functions;  // host functions the run may call (host_call.hpp)
  Files files;                         // written into the run directory before the code starts
  std::vector<std::string> collect;    // patterns of the files that come back (run_files.hpp)
};

}  // namespace spr::embed
