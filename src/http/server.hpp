// `safe-py-runner http`: the HTTP service's listener and connections (Boost.Beast), auth, limits, drain.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "http/api.hpp"
#include "spr/runner.hpp"

namespace spr::http {

struct ServerOptions {
  std::string address = "127.0.0.1";
  unsigned short port = 8080;  // 0: any free port (the "listening" log line names it)
  // Accepted bearer tokens; empty: no authentication, and only a loopback address may be listened on.
  std::vector<std::string> tokens;
  std::size_t max_body_bytes = 16u << 20;
  std::size_t max_header_bytes = 16u << 10;
  std::size_t max_connections = 512;
  double read_timeout_seconds = 10;   // a request's header and body must arrive within this (Slowloris)
  double write_timeout_seconds = 30;  // a response must be taken within this
  double grace_seconds = 10;          // SIGTERM: runs in flight may finish within this
  std::size_t threads = 2;            // threads serving connections
  ApiOptions api;
};

// True for 127.0.0.0/8 and ::1 (and ::ffff:127.x.y.z).
bool is_loopback(const std::string& address);

// Serves until SIGTERM or SIGINT, then drains and returns 0. Access log lines (JSON) go to stderr.
// Throws std::runtime_error when it cannot listen.
int serve(Runner& runner, const RunnerPolicy& base, const ServerOptions& options);

}  // namespace spr::http
