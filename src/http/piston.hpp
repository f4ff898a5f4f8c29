// Piston's v2 API (POST /api/v2/execute, GET /api/v2/runtimes) translated to and from a run.
#pragma once

#include <stdexcept>
#include <string>

#include "spr/policy.hpp"
#include "spr/result.hpp"

namespace spr::http::piston {

// A body Piston would refuse with 400; what() is the `message` of the answer.
class BadRequest : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Execute {
  std::string code;  // files[0].content, after a line setting sys.argv[1:] when there are args and it names argv
  std::string stdin_text;
  Files files;  // files[1..]: written into the run directory beside the program
  RunnerPolicy policy;  // `base` with run_timeout and run_memory_limit applied
};

// The one runtime: [{"language": "python", "version": <python_version>, "aliases": [...], "runtime": ...}].
json runtimes(const std::string& python_version);

// Throws BadRequest for anything Piston would refuse, or that this server cannot do as Piston would.
Execute parse_execute(const json& body, const RunnerPolicy& base, const std::string& python_version);

// Piston's answer: {"language", "version", "run": {"stdout", "stderr", "output", "code", "signal", ...}}.
// `output` is stdout and stderr interleaved as the chunks came (empty: stdout then stderr).
json execute_answer(const RunResult& r, const std::string& output, const std::string& python_version);

}  // namespace spr::http::piston
