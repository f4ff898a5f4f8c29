// One spr-worker process as the supervisor sees it: spawn, request/reply, kill and reap.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <memory>
#include <string>

#include "common/fd.hpp"
#include "common/frame.hpp"
#include "spr/runner.hpp"

namespace spr::detail {

struct SpawnOptions {
  std::filesystem::path worker_path;
  Isolation isolation = Isolation::fork;
  bool once = false;  // process mode: one request, then exit
  std::size_t subinterpreter_pool = 2;  // subinterpreter mode: ready interpreters per worker
  bool inherit_stderr = false;  // else the worker's fd 2 is /dev/null
  bool allow_network = false;  // harden the worker without the network namespace and socket refusal
  double grace_seconds = 0.25;
  double start_timeout_seconds = 10;
  std::string python;                   // the python3 whose sys.path the worker takes ("" = its own)
  std::vector<std::string> sys_path;    // that python3's sys.path
  std::vector<std::string> preload;     // RunnerOptions::preload
  std::vector<std::string> read_paths;  // allowed_read_paths every run of this worker may read
};

class WorkerProcess {
 public:
  // Starts a worker and waits for its hello. Throws WorkerError when it cannot be started or says no hello.
  static std::unique_ptr<WorkerProcess> spawn(const SpawnOptions& options);
  ~WorkerProcess();  // kills and reaps
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  // Sends one request and waits for its reply until `hard_deadline`. Never throws for what the worker does:
  // a dead, silent or lying worker gives a failed RunResult and alive() == false afterwards.
  RunResult run(std::uint64_t id, const std::string& code, const json& input_data, const RunnerPolicy& policy,
                Clock::time_point hard_deadline,
                const std::string& stdin_text = {});
  bool alive() const { return alive_; }
  pid_t pid() const { return pid_; }
  const json& hello() const { return hello_; }
  void kill_and_reap();

 private:
  WorkerProcess() = default;
  RunResult lost(std::uint64_t id, IoStatus status, const RunnerPolicy& policy, bool timed_out);
  void read_capture(std::uint64_t id, std::uint64_t cap, RunResult& r) const;

  pid_t pid_ = -1;
  Fd sock_;
  Fd capture_;
  Fd pidfd_;  // readable once the worker has exited
  json hello_;
  bool alive_ = false;
  bool reaped_ = false;
  int wait_status_ = 0;
  std::string scratch_;
  Isolation isolation_ = Isolation::fork;
};

std::filesystem::path find_worker(const std::filesystem::path& configured);

}  // namespace spr::detail
