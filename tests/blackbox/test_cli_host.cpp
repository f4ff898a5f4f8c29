// `serve` with host functions, driven through its pipes as a client would: call lines out, answers in.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "helpers.hpp"

using nlohmann::json;

namespace {

// A running `serve`: lines written to its stdin, lines read from its stdout.
class Serve {
 public:
  explicit Serve(const std::string& mode) {
    int in[2], out[2];
    REQUIRE(pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    std::vector<std::string> args = {SPR_TEST_CLI, "serve", "--workers", "2", "--isolation", mode};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::string worker = std::string("SPR_WORKER=") + SPR_TEST_WORKER;
    char* envp[] = {worker.data(), nullptr};
    REQUIRE(posix_spawn(&pid_, args[0].c_str(), &fa, nullptr, argv.data(), envp) == 0);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    in_ = in[1];
    out_ = fdopen(out[0], "r");
  }
  ~Serve() {
    end_input();
    if (out_) fclose(out_);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  void send(const json& j) {
    const std::string line = j.dump() + "\n";
    REQUIRE(write(in_, line.data(), line.size()) == static_cast<ssize_t>(line.size()));
  }
  // The next line, or null at the end of output.
  json next() {
    char* buf = nullptr;
    std::size_t cap = 0;
    const ssize_t n = getline(&buf, &cap, out_);
    json j = n > 0 ? json::parse(std::string(buf, static_cast<std::size_t>(n))) : json();
    free(buf);
    return j;
  }
  void end_input() {
    if (in_ >= 0) close(in_);
    in_ = -1;
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  FILE* out_ = nullptr;
};

}  // namespace

TEST_CASE("serve: host function calls of two concurrent requests interleave; answers by id and call_id") {
  for (const std::string mode : {"fork", "namespace"}) {
    CAPTURE(mode);
    Serve s(mode);
    s.send({{"id", "a"}, {"code", "result = [ask('a1'), ask('a2', n=2)]"}, {"functions", {"ask"}}});
    s.send({{"id", "b"}, {"code", "result = ask('b1')"}, {"functions", {"ask"}}});
    // An answer for a call nobody waits for: bad_input (id null), and nothing changes.
    s.send({{"call_result", {{"id", "a"}, {"call_id", 99}, {"value", 1}}}});
    std::map<std::string, json> results;
    std::vector<json> held;  // calls are answered only once both requests have one waiting
    std::map<std::string, bool> seen;
    bool bad_seen = false;
    int answered = 0;
    auto answer = [&](const json& line) {
      const json& c = line["call"];
      json value = c["args"][0].get<std::string>() + "@" + line["id"].get<std::string>();
      if (!c["kwargs"].empty()) value = value.get<std::string>() + "+n";
      s.send({{"call_result", {{"id", line["id"]}, {"call_id", c["call_id"]}, {"value", value}}}});
      ++answered;
    };
    while (results.size() < 2 || !bad_seen) {
      const json line = s.next();
      REQUIRE(!line.is_null());
      if (line.contains("call")) {
        CHECK(line["call"]["name"] == "ask");
        seen[line["id"].get<std::string>()] = true;
        held.push_back(line);
        if (seen.size() < 2) continue;
        for (const auto& h : held) answer(h);
        held.clear();
        continue;
      }
      if (line["id"].is_null()) {
        CHECK(line["error_kind"] == "bad_input");
        bad_seen = true;
        continue;
      }
      results[line["id"].get<std::string>()] = line;
    }
    const bool b_seen = seen.count("b") > 0;
    CHECK(b_seen);
    CHECK(answered == 3);
    CHECK_MESSAGE(results["a"]["result"] == json::array({"a1@a", "a2@a+n"}), results["a"].dump());
    CHECK_MESSAGE(results["b"]["result"] == json("b1@b"), results["b"].dump());
    // A call_error is the run's HostFunctionError.
    s.send({{"id", 3}, {"code", "try:\n    ask('x')\nexcept RuntimeError as e:\n    result = str(e)"}, {"functions", {"ask"}}});
    json line = s.next();
    REQUIRE(line.contains("call"));
    s.send({{"call_error", {{"id", 3}, {"call_id", line["call"]["call_id"]}, {"message", "no such thing"}}}});
    for (line = s.next(); !line.is_null() && (line.contains("call") || line["id"].is_null()); line = s.next()) {
    }
    CHECK(line["result"] == "no such thing");
    s.end_input();
  }
}

TEST_CASE("serve: a function name that is not an identifier is bad_input") {
  Serve s("fork");
  s.send({{"id", 1}, {"code", "result = 1"}, {"functions", {"no good"}}});
  const json line = s.next();
  CHECK(line["error_kind"] == "bad_input");
  s.send({{"id", 2}, {"code", "result = 1"}, {"functions", "ask"}});
  CHECK(s.next()["error_kind"] == "bad_input");
}
