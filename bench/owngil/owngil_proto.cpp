// Own-GIL sub-interpreters in parallel (issue 21, item 4), measured on CPython 3.12+: runs/s of N threads
// that each build a fresh interpreter with its own GIL per run (what `subinterpreter` mode does, one
// run at a time today), against one such thread and against N processes that each run in a fresh
// namespace of their main interpreter (N `namespace` workers). Plain CPython: the engine's run state
// (audit rules, capture buffer, deadline timers, allocator accounting) is process-wide today, so
// this is the ceiling, not the product. `--check`: a short correctness run (the ctest entry).
#include <Python.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#ifndef SPR_OWNGIL_HOME
#define SPR_OWNGIL_HOME ""
#endif
#if PY_VERSION_HEX < 0x030C0000
#error "own-GIL sub-interpreters need CPython 3.12 or newer"
#endif

namespace {

using Clock = std::chrono::steady_clock;

const char* const kSnippet = "import math\nresult = math.sqrt(input_data['x'])";

// The snippet in a fresh namespace of the current interpreter: true if it computed 9.
bool run_snippet() {
  PyObject* globals = PyDict_New();
  if (!globals) return false;
  bool ok = false;
  PyObject* input = Py_BuildValue("{s:i}", "x", 81);
  if (input && PyDict_SetItemString(globals, "__builtins__", PyEval_GetBuiltins()) == 0 &&
      PyDict_SetItemString(globals, "input_data", input) == 0) {
    PyObject* r = PyRun_String(kSnippet, Py_file_input, globals, globals);
    if (r) {
      PyObject* v = PyDict_GetItemString(globals, "result");  // borrowed
      ok = v && PyFloat_Check(v) && PyFloat_AsDouble(v) == 9.0;
      Py_DECREF(r);
    }
  }
  if (PyErr_Occurred()) PyErr_Clear();
  Py_XDECREF(input);
  Py_DECREF(globals);
  return ok;
}

PyInterpreterConfig own_gil_config() {
  PyInterpreterConfig cfg = {};
  cfg.use_main_obmalloc = 0;
  cfg.allow_fork = 0;
  cfg.allow_exec = 0;
  cfg.allow_threads = 1;
  cfg.allow_daemon_threads = 0;
  cfg.check_multi_interp_extensions = 1;
  cfg.gil = PyInterpreterConfig_OWN_GIL;
  return cfg;
}

struct Counts {
  std::atomic<long> runs{0}, wrong{0};
};

// One thread, created while the process is still single-threaded elsewhere: each run builds an
// interpreter with its own GIL, runs the snippet in it and ends it. Its thread state of the main
// interpreter is only held while an interpreter is being created (the main GIL, briefly).
void interpreter_thread(PyInterpreterState* main, std::atomic<bool>& stop, long max_runs, bool keep, Counts& c) {
  PyThreadState* home = PyThreadState_New(main);
  if (!home) {
    ++c.wrong;
    return;
  }
  PyEval_RestoreThread(home);  // takes the main GIL
  const PyInterpreterConfig cfg = own_gil_config();
  if (keep) {
    // One interpreter for the thread's life, a fresh namespace per run (namespace mode, per thread).
    PyThreadState* ts = nullptr;
    PyStatus st = Py_NewInterpreterFromConfig(&ts, &cfg);
    if (PyStatus_Exception(st) || !ts) {
      ++c.wrong;
    } else {
      for (long i = 0; !stop.load(std::memory_order_relaxed) && (max_runs < 0 || i < max_runs); ++i) {
        if (run_snippet())
          ++c.runs;
        else
          ++c.wrong;
      }
      Py_EndInterpreter(ts);
      PyEval_RestoreThread(home);
    }
  }
  for (long i = 0; !keep && !stop.load(std::memory_order_relaxed) && (max_runs < 0 || i < max_runs); ++i) {
    PyThreadState* ts = nullptr;
    PyStatus st = Py_NewInterpreterFromConfig(&ts, &cfg);  // releases the main GIL, holds the new one
    if (PyStatus_Exception(st) || !ts) {
      ++c.wrong;
      break;
    }
    if (run_snippet())
      ++c.runs;
    else
      ++c.wrong;
    Py_EndInterpreter(ts);  // no thread state current afterwards
    PyEval_RestoreThread(home);
  }
  PyThreadState_Clear(home);
  PyThreadState_DeleteCurrent();
}

double cpu_seconds(int who) {
  rusage u{};
  getrusage(who, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}

// N threads with own-GIL interpreters for `seconds` (or `max_runs` each). Returns runs/s.
double g_parallel = 0;  // the last case's CPU seconds per wall second: how many CPUs it kept busy

double threads_case(int n, bool keep, double seconds, long max_runs, long& wrong, double& cpu_per_run_us) {
  PyInterpreterState* main = PyInterpreterState_Main();
  Counts c;
  std::atomic<bool> stop{false};
  const double cpu0 = cpu_seconds(RUSAGE_SELF);
  PyThreadState* saved = PyEval_SaveThread();  // the workers need the main GIL to create interpreters
  const auto t0 = Clock::now();
  std::vector<std::thread> ts;
  for (int i = 0; i < n; ++i) ts.emplace_back(interpreter_thread, main, std::ref(stop), max_runs, keep, std::ref(c));
  if (max_runs < 0) {
    std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
    stop = true;
  }
  for (auto& t : ts) t.join();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  PyEval_RestoreThread(saved);
  wrong = c.wrong;
  g_parallel = (cpu_seconds(RUSAGE_SELF) - cpu0) / s;
  cpu_per_run_us = c.runs ? (cpu_seconds(RUSAGE_SELF) - cpu0) * 1e6 / static_cast<double>(c.runs) : 0;
  return static_cast<double>(c.runs) / s;
}

// N forked processes, each running the snippet in fresh namespaces of its main interpreter.
double processes_case(int n, double seconds, long& wrong, double& cpu_per_run_us) {
  std::vector<pid_t> pids;
  std::vector<int> reads;
  const double cpu0 = cpu_seconds(RUSAGE_CHILDREN);
  const auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    int p[2];
    if (pipe(p) != 0) return 0;
    PyOS_BeforeFork();
    const pid_t pid = fork();
    if (pid == 0) {
      PyOS_AfterFork_Child();
      close(p[0]);
      long counts[2] = {0, 0};
      const auto start = Clock::now();
      while (std::chrono::duration<double>(Clock::now() - start).count() < seconds) ++counts[run_snippet() ? 0 : 1];
      ssize_t w = write(p[1], counts, sizeof counts);
      (void)w;
      _exit(0);
    }
    PyOS_AfterFork_Parent();
    close(p[1]);
    pids.push_back(pid);
    reads.push_back(p[0]);
  }
  long runs = 0;
  wrong = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    long counts[2] = {0, 0};
    if (read(reads[i], counts, sizeof counts) == static_cast<ssize_t>(sizeof counts)) {
      runs += counts[0];
      wrong += counts[1];
    }
    close(reads[i]);
    waitpid(pids[i], nullptr, 0);
  }
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  g_parallel = (cpu_seconds(RUSAGE_CHILDREN) - cpu0) / s;
  cpu_per_run_us = runs ? (cpu_seconds(RUSAGE_CHILDREN) - cpu0) * 1e6 / static_cast<double>(runs) : 0;
  return static_cast<double>(runs) / s;
}

double loadavg() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  // Measuring N threads against N processes: threads are made here, before any sandbox; the worker
  // would have to make them before its seccomp filter closes (it refuses threads a snippet starts).
  bool check = false;
  double seconds = 3;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--check")) {
      check = true;
    } else if (!std::strcmp(argv[i], "--seconds") && i + 1 < argc) {
      seconds = std::atof(argv[++i]);
    } else {
      std::fprintf(stderr, "usage: %s [--check] [--seconds S]\n", argv[0]);
      return 2;
    }
  }
  // The build's own prefix: this program is not next to that Python's standard library.
  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;
  PyStatus st = PyStatus_Ok();
  if (SPR_OWNGIL_HOME[0]) st = PyConfig_SetBytesString(&config, &config.home, SPR_OWNGIL_HOME);
  if (!PyStatus_Exception(st)) st = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(st)) {
    std::fprintf(stderr, "initialising CPython failed: %s\n", st.err_msg ? st.err_msg : "?");
    return 1;
  }
  if (check) {
    // Two threads, 20 interpreters each, then one interpreter each for 200 runs: every run computes
    // its result and nothing crashes.
    long wrong = 0, wrong2 = 0;
    double cpu = 0;
    threads_case(2, false, 0, 20, wrong, cpu);
    threads_case(2, true, 0, 200, wrong2, cpu);
    std::printf("own-GIL check on %s: %ld wrong or failed runs of 440\n", Py_GetVersion(), wrong + wrong2);
    return wrong + wrong2 == 0 ? 0 : 1;
  }
  std::printf("own-GIL sub-interpreters on CPython %.6s, %u CPUs, load average %.2f at start, %.1f s per case\n",
              Py_GetVersion(), std::thread::hardware_concurrency(), loadavg(), seconds);
  struct Row {
    const char* name;
    double rate, cpu, parallel;
    long wrong;
  } rows[6];
  rows[0].name = "1 thread, new own-GIL interpreter per run";
  rows[0].rate = threads_case(1, false, seconds, -1, rows[0].wrong, rows[0].cpu);
  rows[0].parallel = g_parallel;
  rows[1].name = "2 threads, new own-GIL interpreter per run";
  rows[1].rate = threads_case(2, false, seconds, -1, rows[1].wrong, rows[1].cpu);
  rows[1].parallel = g_parallel;
  rows[2].name = "1 thread, one own-GIL interpreter, fresh namespace per run";
  rows[2].rate = threads_case(1, true, seconds, -1, rows[2].wrong, rows[2].cpu);
  rows[2].parallel = g_parallel;
  rows[3].name = "2 threads, one own-GIL interpreter each, fresh namespace per run";
  rows[3].rate = threads_case(2, true, seconds, -1, rows[3].wrong, rows[3].cpu);
  rows[3].parallel = g_parallel;
  rows[4].name = "1 process, fresh namespace per run";
  rows[4].rate = processes_case(1, seconds, rows[4].wrong, rows[4].cpu);
  rows[4].parallel = g_parallel;
  rows[5].name = "2 processes, fresh namespace per run";
  rows[5].rate = processes_case(2, seconds, rows[5].wrong, rows[5].cpu);
  rows[5].parallel = g_parallel;
  for (const Row& r : rows)
    std::printf("  %-66s %9.0f runs/s  %8.1f us CPU/run  %.2f CPUs busy  %ld wrong\n", r.name, r.rate, r.cpu,
                r.parallel, r.wrong);
  std::printf("  new interpreter per run, 2 threads / 1 thread: %.2f\n", rows[1].rate / rows[0].rate);
  std::printf("  one interpreter per thread, 2 threads / 1 thread: %.2f; / 2 processes: %.2f\n",
              rows[3].rate / rows[2].rate, rows[3].rate / rows[5].rate);
  std::printf("load average %.2f at end\n", loadavg());
  Py_FinalizeEx();
  return 0;
}
