// The in-process engine: initialises the embedded interpreter and runs one request in it.
// The worker's main loop calls it; a C++ program that accepts in-process risk may call it directly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spr/policy.hpp"
#include "spr/result.hpp"

namespace spr::embed {

struct EngineOptions {
  int capture_fd = -1;  // the shared output memfd; -1: a private buffer
  bool preload = true;  // import bootstrap_py/preload.txt so runs find those modules cached
};

struct Request {
  std::uint64_t id = 0;
  std::string code;
  json input_data = json::object();
  RunnerPolicy policy;
};

// Initialises CPython once per process. Returns "" or the reason it failed (never exits).
std::string initialize(const EngineOptions& options);
// Runs `req` in this process, in a fresh namespace. Outcomes are data; never throws.
RunResult run(const Request& req);
// Like run() but without preparing the capture buffer (the fork child's parent already did).
RunResult run_prepared(const Request& req);
bool prepare_capture(const Request& req);

// Sets up the guard, bootstrap and streams in the interpreter now current (a fresh sub-interpreter,
// after use_state() pointed at its state). Returns "" or the reason.
std::string init_current_interpreter();

std::string python_version();
// Directories the runtime reads from (stdlib, lib-dynload, prefix): Landlock's read-only set.
std::vector<std::string> runtime_paths();

}  // namespace spr::embed
