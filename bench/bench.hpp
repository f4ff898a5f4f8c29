// spr-bench's shared vocabulary: options, samples, the measured figures, and /proc helpers.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

namespace spr_bench {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The quick-start snippet: what every mode, the engine and the baseline run.
extern const char* const kSnippet;
extern const json kInput;
bool expected_result(const json& r);

constexpr double kPacedGapMs = 50;  // the "agent thinks between runs" arrival pattern

struct Options {
  bool quick = false;
  std::string json_path, plot_path;
  std::string readme_path, markdown_path;  // --readme: the marked block to rewrite; --markdown: the block alone
  std::vector<std::string> modes{"namespace", "subinterpreter", "fork", "process"};
  std::string worker_path;
  std::string cli_path = SPR_BENCH_CLI;
  std::string baseline_python = "/usr/bin/python3";
  std::string baseline_script = SPR_BENCH_BASELINE_SCRIPT;
  bool engine = true, baseline = true, serve = true, floors = true;
  bool pandas = true, only_pandas = false;  // the pandas case (pandas_case.cpp)
  bool sessions = true, sessions_only = false;  // the session section (session_bench.cpp)
  bool host = true, host_only = false;          // host function round trips (host_bench.cpp)
  bool layers = true, layers_only = false;      // the OS layers on and off per mode (layers_bench.cpp)
  // Sizes; filled from --quick unless given explicitly.
  int seq_runs = -1, paced_runs = -1, process_runs = -1, baseline_runs = -1, cold_starts = -1, engine_runs = -1,
      floor_runs = -1;
  double tput_seconds = -1;
};
Options parse_options(int argc, char** argv);

// p50/p99 of a sample, in microseconds.
struct Stats {
  int n = 0;
  double p50 = 0, p99 = 0;
};
Stats stats(std::vector<double> us);
double us_since(Clock::time_point t0);

// One arrival pattern of one mode.
struct Pattern {
  Stats lat;
  long failures = 0;
  std::optional<double> cpu_us_per_run;  // bench + every process under the workers (run children included)
  std::optional<double> faults_per_run;  // fork mode: minor faults of the run children (fork_faults())
  std::optional<double> parent_faults_per_run;  // fork mode: of the warm worker itself
};

struct ModeResult {
  std::string name;
  bool available = false;
  std::string error, first_failure;
  Pattern b2b, paced;
  double runs_per_s = 0;  // 2 workers fed by 4 threads
  long tput_failures = 0;
  std::optional<double> cold_start_ms;
  std::optional<double> idle_rss_mb, idle_pss_mb;
};

// Costs measured beside the modes, in the same run: what each mode is compared with.
struct Floors {
  std::optional<Stats> pipe_same_cpu, pipe_cross_cpu;  // round trip of 4 bytes between two processes
  // The same after kPacedGapMs of idle on both sides: what a paced caller meets (cold caches, idle CPUs waking).
  std::optional<Stats> pipe_paced_same_cpu, pipe_paced_cross_cpu;
  // Two bare forks (fork + _exit + waitpid of a C process): one of a small C program's size (the
  // floor a paced fork-mode run is held to) and one as resident as the idle fork-mode worker.
  double small_fork_rss_mb = 15;
  std::optional<Stats> small_fork;
  std::optional<double> small_fork_cpu_us;
  double fork_rss_mb = 0;                              // resident size of the worker-sized one
  std::optional<Stats> bare_fork;                      // the worker-sized bare fork
  std::optional<double> bare_fork_cpu_us;              // CPU of parent and child per bare fork
  std::optional<double> cow_us_per_page;               // extra cost per page a child writes
  std::optional<Stats> subinterp;                      // Py_NewInterpreter + Py_EndInterpreter
  std::optional<Stats> python_pass;                    // fresh `python3 -c pass`
};

// The engine in a forked child of the bench: a run in this process, and a run in a forked child of
// the warm engine (minor faults counted in that child with getrusage).
struct EngineResult {
  bool available = false;
  std::string error, python;
  Stats lat;
  long failures = 0;
  std::optional<double> cpu_us_per_run;
  std::optional<Stats> fork_run;
  std::optional<double> fork_run_faults;
  double fork_run_cpu_us = 0;  // parent and child per forked run
  // The same with the default policy's builtins and the streams built in the parent (as the fork worker does).
  std::optional<Stats> fork_run_prebuilt;
  double fork_run_prebuilt_faults = 0, fork_run_prebuilt_cpu_us = 0;
  // Minor faults per phase of that forked run: after_fork_hooks, run, exit.
  std::map<std::string, double> fork_run_phase_faults;
  // The floor of a fork-mode run: the warm engine (preload list imported, gc.freeze() done) forking a
  // child that runs CPython's after-fork hooks and exits (os.fork() + os._exit + waitpid), and its CPU.
  std::optional<Stats> warm_fork;
  std::optional<double> warm_fork_cpu_us;
  std::optional<double> after_fork_child_cpu_us;  // the child's CPU inside PyOS_AfterFork_Child
  // The same process forking with no Python hook (fork + _exit + waitpid): the kernel's share.
  std::optional<Stats> warm_fork_raw;
  std::optional<double> warm_fork_raw_cpu_us;
};

struct BaselineResult {
  bool available = false;
  std::string error;
  Stats lat;
  long failures = 0;
  std::optional<double> cpu_us_per_run;
};

struct ServeResult {
  bool available = false;
  std::string error;
  Pattern b2b, paced;
};

struct Report {
  std::vector<ModeResult> modes;
  Floors floors;
  EngineResult engine;
  BaselineResult baseline;
  ServeResult serve;  // namespace mode through `safe-py-runner serve`
  bool engine_run = false, baseline_run = false, serve_run = false;
  std::string python, load_start, load_end;
  double seconds = 0;
};

// Measurements (floors.cpp: outside the Runner; modes.cpp: through it and through serve).
Floors measure_floors(const Options& o, double rss_mb);
EngineResult measure_engine(const Options& o);
BaselineResult measure_baseline(const Options& o);
ModeResult measure_mode(const Options& o, const std::string& mode, std::string& python_version);
ServeResult measure_serve(const Options& o);

// Report (report.cpp): the table, the JSON with targets, the SVG.
void print_report(const Report& r);
json to_json(const Report& r);
void write_plot(const Report& r, const std::string& path);
// The README's performance block: floors, modes, a forked run's faults per phase, ratios with targets.
std::string markdown(const Report& r);
// Replaces what lies between `<!-- spr-bench:begin -->` and `<!-- spr-bench:end -->` in `path` with `body`.
bool replace_marked_block(const std::string& path, const std::string& body, std::string& error);

// /proc and rusage helpers (common.cpp).
std::string loadavg();
double rusage_seconds(int who);
// Our workers' processes (under our direct children named spr-worker), found through /proc (host PIDs reach into their PID namespaces).
struct WorkerTree {
  std::vector<pid_t> started;       // the processes the supervisor started (the keeper under the PID layer)
  std::vector<pid_t> warm;          // the warm worker of each (PID 2 of its namespace under the PID layer)
  std::vector<pid_t> run_children;  // the live children of the warm workers (fork mode: runs, a spare)
  std::vector<pid_t> all;           // every live process under the started ones, those included
};
WorkerTree worker_tree();
// This process, its reaped children, and every live process under our workers with the children it reaped.
double cpu_seconds_all();
// Minor faults in fork mode: of the run children (reaped ones through the warm worker's cminflt, live ones
// read directly) and of the warm worker itself.
struct ForkFaults {
  double children = 0, parent = 0;
};
ForkFaults fork_faults();
std::map<std::string, double> kb_fields(const std::string& path);
// Reads `fd` to end of stream, closes it, and reaps `pid` (its exit status goes to `status`).
std::string drain_and_reap(int fd, pid_t pid, int& status);
bool write_all(int fd, const std::string& text);
// Round trips of 4 bytes between this process (on CPU 0) and a child echoing them on `child_cpu`.
// `gap_ms` > 0: each round trip after that long idle on both sides (the paced floor).
std::optional<Stats> pipe_round_trip(int runs, int child_cpu, double gap_ms = 0);

}  // namespace spr_bench
