// safe_py_runner._core: the C++ supervisor (spr::Runner) exposed to Python through pybind11.
// JSON crosses the boundary as text (Python's json module on one side, nlohmann on the other), so
// every value the original accepted converts the same way and nothing here walks Python objects.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <climits>
#include <cstdio>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/frame.hpp"
#include "detail/batch.hpp"
#include "detail/runner_access.hpp"
#include "spr/spr.hpp"

namespace py = pybind11;

namespace {

using spr::json;

std::string dump(const json& v) {
  return v.dump(-1, ' ', false, json::error_handler_t::replace);
}

json parse(const std::string& text, const char* what) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw spr::PolicyError(std::string("invalid JSON in ") + what + ": " + e.what());
  }
}

// input_data's JSON text (json.dumps made it), checked as parse() would refuse it and passed on as
// text: the run decodes it without a tree in between.
// Taken by value and moved on: a large input is not copied once more on its way.
std::string checked_input(std::string text) {
  if (std::string why = spr::detail::json_text_error(text); !why.empty())
    throw spr::PolicyError("invalid JSON in input_data: " + why);
  return text;
}

// Captured output is cut at a character boundary; decoding with "replace" keeps a broken byte from
// turning a finished run into an exception.
py::str text(const std::string& s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// A returned file: str when its bytes are valid UTF-8 (as in the JSON form), else bytes.
py::object file_content(const std::string& bytes) {
  PyObject* o = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()), "strict");
  if (o) return py::reinterpret_steal<py::object>(o);
  PyErr_Clear();
  return py::bytes(bytes);
}

py::tuple to_tuple(const spr::RunResult& r) {
  py::object error = r.error ? py::object(text(*r.error)) : py::object(py::none());
  py::dict files;
  for (const auto& [name, bytes] : r.files) files[text(name)] = file_content(bytes);
  py::list left_out;
  for (const auto& name : r.files_left_out) left_out.append(text(name));
  return py::make_tuple(r.ok, dump(r.result), text(r.stdout_text), text(r.stderr_text), r.timed_out,
                        r.resource_exceeded, error, r.exit_code, spr::to_string(r.error_kind),
                        static_cast<double>(r.duration.count()) / 1000.0, spr::to_string(r.isolation),
                        r.stdout_truncated, r.stderr_truncated,
                        r.repr ? py::object(text(*r.repr)) : py::object(py::none()), files, left_out,
                        static_cast<double>(r.queued.count()) / 1000.0, r.files_truncated);
}

// files= of a run: name (str) -> content (str, written as UTF-8, or bytes).
spr::Files input_files(const py::object& files) {
  spr::Files out;
  if (files.is_none()) return out;
  if (!py::isinstance<py::dict>(files)) throw py::type_error("'files' must be a dict of name -> str or bytes");
  for (auto item : py::reinterpret_borrow<py::dict>(files)) {
    if (!py::isinstance<py::str>(item.first)) throw py::type_error("'files' names must be str");
    const std::string name = item.first.cast<std::string>();
    if (py::isinstance<py::str>(item.second)) {
      out[name] = item.second.cast<std::string>();
    } else if (py::isinstance<py::bytes>(item.second) || py::isinstance<py::bytearray>(item.second)) {
      out[name] = py::isinstance<py::bytes>(item.second) ? std::string(item.second.cast<py::bytes>())
                                                         : item.second.cast<std::string>();
    } else {
      throw py::type_error("'files' content must be str or bytes: '" + name + "'");
    }
  }
  return out;
}

// A Python callable as the engine's output callback: called on the engine's thread with the GIL
// taken; an exception it raises is reported as unraisable and does not stop the run.
spr::OutputCallback output_callback(const py::object& fn) {
  if (fn.is_none()) return {};
  auto held = std::shared_ptr<py::object>(new py::object(fn), [](py::object* o) {
    py::gil_scoped_acquire gil;
    delete o;
  });
  return [held](spr::OutputStream s, const std::string& data) {
    py::gil_scoped_acquire gil;
    try {
      (*held)(spr::to_string(s), text(data));
    } catch (py::error_already_set& e) {
      e.discard_as_unraisable("safe_py_runner output callback");
    }
  };
}

// The package's host function adapters (safe_py_runner/host.py: name -> callable taking the args'
// and kwargs' JSON text, returning the answer's) as the engine's host functions. Each call takes the
// GIL on the run's helper thread; a Python exception becomes the run's HostFunctionError.
spr::HostFunctions host_functions(const py::object& functions) {
  spr::HostFunctions out;
  if (functions.is_none()) return out;
  for (auto item : py::reinterpret_borrow<py::dict>(functions)) {
    const std::string name = py::str(item.first);
    auto held = std::shared_ptr<py::object>(new py::object(py::reinterpret_borrow<py::object>(item.second)),
                                            [](py::object* o) {
                                              py::gil_scoped_acquire gil;
                                              delete o;
                                            });
    out[name] = [held](const spr::HostCall& c) -> json {
      std::string answer;
      {
        py::gil_scoped_acquire gil;
        try {
          answer = (*held)(dump(c.args), dump(c.kwargs)).cast<std::string>();
        } catch (py::error_already_set& e) {
          std::string message = py::str(e.value());
          if (message.empty()) message = py::str(e.type().attr("__name__"));
          throw std::runtime_error(message);
        }
      }
      try {
        return json::parse(answer);
      } catch (const json::exception& e) {
        throw std::runtime_error(std::string("the host function's answer is not JSON: ") + e.what());
      }
    };
  }
  return out;
}

// Options of one call: streaming, the cancel token, host functions, and (sessions) the per-call limits.
spr::RunOptions run_options(const py::object& on_output, const spr::CancelToken* token,
                            const py::object& functions = py::none()) {
  spr::RunOptions o;
  o.on_output = output_callback(on_output);
  if (token) o.cancel = *token;
  o.functions = host_functions(functions);
  return o;
}

// Parsing and validating a policy costs more than the rest of the call; a caller usually sends the
// same policy again, so each thread keeps its last one.
const spr::RunnerPolicy& policy_of(const std::string& policy_json) {
  thread_local std::string last_text;
  thread_local spr::RunnerPolicy last;
  if (policy_json != last_text || last_text.empty()) {
    spr::RunnerPolicy p = spr::RunnerPolicy::from_json(parse(policy_json, "policy"));
    last = std::move(p);
    last_text = policy_json;
  }
  return last;
}

// What a _core.Runner is built from: two equal ones build the same Runner.
struct RunnerArgs {
  spr::RunnerOptions o;

  auto tied() const {
    return std::tie(o.workers, o.worker_path, o.kill_grace_seconds, o.start_timeout_seconds, o.worker_stderr,
                    o.preload, o.max_sessions, o.session_idle_seconds, o.subinterpreter_threads);
  }
  bool operator==(const RunnerArgs& other) const {
    return tied() == other.tied() && o.policy.to_json() == other.o.policy.to_json();
  }
};

// What of this process a worker takes over when it starts: its identity, priority and scheduling, limits,
// directory, environment (PYTHONPATH decides what the worker mounts), cgroups, namespaces and its own
// seccomp, no_new_privs and capabilities. A worker started at import serves a Runner built later only if none
// of it changed in between (red teams rounds 16 and 17: a program that lowered its priority, went SCHED_IDLE,
// dropped root or narrowed PYTHONPATH after the import got a worker started with the old ones).
struct HostState {
  uid_t uid = 0, euid = 0;
  gid_t gid = 0, egid = 0;
  std::vector<gid_t> groups;
  int nice = 0;
  int sched_policy = 0, sched_priority = 0;
  long io_priority = 0;
  std::array<rlimit, RLIM_NLIMITS> limits{};
  std::string cwd;
  std::vector<std::string> environment;
  std::string cgroups, namespaces, status;  // /proc/self/cgroup; ns links; Seccomp, NoNewPrivs, Cap* lines

  static std::string read_small(const char* path) {
    std::string out;
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return out;
    char buf[4096];
    for (ssize_t n; out.size() < (1u << 16) && (n = ::read(fd, buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return out;
  }

  static HostState now() {
    HostState s;
    s.uid = getuid();
    s.euid = geteuid();
    s.gid = getgid();
    s.egid = getegid();
    const int n = getgroups(0, nullptr);
    if (n > 0) {
      s.groups.resize(static_cast<std::size_t>(n));
      s.groups.resize(static_cast<std::size_t>(std::max(getgroups(n, s.groups.data()), 0)));
    }
    errno = 0;
    s.nice = getpriority(PRIO_PROCESS, 0);
    s.sched_policy = sched_getscheduler(0);
    sched_param sp{};
    if (sched_getparam(0, &sp) == 0) s.sched_priority = sp.sched_priority;
    s.io_priority = syscall(SYS_ioprio_get, 1 /* IOPRIO_WHO_PROCESS */, 0);
    s.cgroups = read_small("/proc/self/cgroup");
    for (const char* ns : {"cgroup", "ipc", "mnt", "net", "pid", "user", "uts"}) {
      char link[64], target[128];
      std::snprintf(link, sizeof link, "/proc/self/ns/%s", ns);
      const ssize_t len = readlink(link, target, sizeof target);
      s.namespaces += std::string(ns) + "=" + (len > 0 ? std::string(target, static_cast<std::size_t>(len)) : "?") + ";";
    }
    const std::string status = read_small("/proc/self/status");
    for (std::size_t at = 0; at < status.size();) {
      const std::size_t nl = std::min(status.find('\n', at), status.size());
      const std::string line = status.substr(at, nl - at);
      for (const char* key : {"Seccomp:", "Seccomp_filters:", "NoNewPrivs:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:"})
        if (line.rfind(key, 0) == 0) s.status += line + "\n";
      at = nl + 1;
    }
    for (int r = 0; r < RLIM_NLIMITS; ++r) getrlimit(r, &s.limits[static_cast<std::size_t>(r)]);
    char dir[PATH_MAX];
    if (getcwd(dir, sizeof dir)) s.cwd = dir;
    for (char** e = environ; e && *e; ++e) s.environment.emplace_back(*e);
    return s;
  }
  bool operator==(const HostState& o) const {
    for (std::size_t r = 0; r < limits.size(); ++r)
      if (limits[r].rlim_cur != o.limits[r].rlim_cur || limits[r].rlim_max != o.limits[r].rlim_max) return false;
    return std::tie(uid, euid, gid, egid, groups, nice, sched_policy, sched_priority, io_priority, cwd, environment,
                    cgroups, namespaces, status) ==
           std::tie(o.uid, o.euid, o.gid, o.egid, o.groups, o.nice, o.sched_policy, o.sched_priority, o.io_priority,
                    o.cwd, o.environment, o.cgroups, o.namespaces, o.status);
  }
};

// The default Runner that importing the package starts (safe_py_runner/__init__.py): its first worker comes
// up while the rest of the package and the program load, instead of after the first run_code asked for it.
// The first _core.Runner built takes it over when built with the same arguments and this process is as it was
// at the start (HostState), else stops it; so do exit and configure(). Only the GIL guards it. In a forked
// child (of any generation: a pid can come back) it is another process's: left alone, unused.
struct Prestarted {
  pid_t pid = 0;
  RunnerArgs args;
  HostState host;
  std::shared_ptr<spr::Runner> runner;
  static inline bool forked = false;  // set in every child forked after the start (pthread_atfork)

  static Prestarted& get() {
    static auto* p = new Prestarted;  // never destroyed: exit may come before the atexit hook that stops it
    return *p;
  }
  // This process started it (not a forked child's copy).
  bool mine() const { return !forked && pid == getpid(); }
  // The runner, if this process started it; a forked child's copy is dropped without being stopped (its
  // threads are not in the child) and never used.
  std::shared_ptr<spr::Runner> take() {
    if (!runner) return {};
    if (!mine()) {
      new std::shared_ptr<spr::Runner>(std::move(runner));  // NOLINT: left as it is, deliberately
      return {};
    }
    return std::move(runner);
  }
};

class PyRunner {
 public:
  PyRunner(std::size_t workers, const std::string& policy_json, const std::string& worker_path,
           double kill_grace_seconds, double start_timeout_seconds, bool worker_stderr,
           const std::vector<std::string>& preload, std::size_t max_sessions, double session_idle_seconds,
           std::size_t subinterpreter_threads) {
    RunnerArgs a;
    spr::RunnerOptions& o = a.o;
    o.subinterpreter_threads = subinterpreter_threads;
    o.max_sessions = max_sessions;
    o.session_idle_seconds = session_idle_seconds;
    o.workers = workers;
    o.policy = spr::RunnerPolicy::from_json(parse(policy_json, "policy"));
    o.worker_path = worker_path;
    o.kill_grace_seconds = kill_grace_seconds;
    o.start_timeout_seconds = start_timeout_seconds;
    o.worker_stderr = worker_stderr;
    o.preload = preload;
    std::shared_ptr<spr::Runner> prestarted = Prestarted::get().take();
    if (prestarted && Prestarted::get().args == a && Prestarted::get().host == HostState::now()) {
      runner_ = std::move(prestarted);
      return;
    }
    py::gil_scoped_release nogil;  // starting workers takes tens of milliseconds
    prestarted.reset();  // started for the defaults, which this Runner does not use: stopped
    runner_ = std::make_shared<spr::Runner>(std::move(o));
  }

  py::tuple run(const std::string& code, std::string input_json, const std::string& policy_json,
                const py::object& on_output, const spr::CancelToken* token, const std::string& stdin_text,
                const py::object& functions, const py::object& files, const std::vector<std::string>& collect) {
    std::shared_ptr<spr::Runner> runner = live();
    spr::RunResult r;
    spr::RunOptions o = run_options(on_output, token, functions);
    o.stdin_text = stdin_text;
    o.files = input_files(files);
    o.collect = collect;
    {
      // The arguments are C++ copies by now: checking the input needs no Python either.
      py::gil_scoped_release nogil;
      o.input_json = checked_input(std::move(input_json));
      r = spr::detail::RunnerAccess::run_checked_input(*runner, code, policy_of(policy_json), o);
    }
    return to_tuple(r);
  }

  std::shared_ptr<spr::Session> open_session(const std::string& policy_json) {
    std::shared_ptr<spr::Runner> runner = live();
    spr::RunnerPolicy p = spr::RunnerPolicy::from_json(parse(policy_json, "policy"));
    py::gil_scoped_release nogil;  // a cold open starts a process
    return std::make_shared<spr::Session>(runner->open_session(p));
  }

  std::string hardening(const std::string& isolation) {
    spr::Isolation iso = spr::RunnerPolicy::from_json(json{{"isolation", isolation}}).isolation;
    std::shared_ptr<spr::Runner> runner = live();
    py::gil_scoped_release nogil;
    return dump(runner->hardening(iso));
  }

  std::size_t runs_at_once() { return spr::detail::RunnerAccess::runs_at_once(*live()); }

  std::string python_version() {
    std::shared_ptr<spr::Runner> runner = live();
    py::gil_scoped_release nogil;
    return runner->python_version();
  }

  void shutdown() {
    std::shared_ptr<spr::Runner> r;
    {
      std::lock_guard<std::mutex> lk(mu_);
      r = std::move(runner_);
    }
    if (!r) return;
    py::gil_scoped_release nogil;  // runs in flight are answered worker_unavailable
    r->shutdown();
    r.reset();  // the last run still holding it frees it
  }

  ~PyRunner() {
    // Python may be finalizing: never touch the GIL here, just stop the workers.
    if (runner_) runner_->shutdown();
  }

 private:
  std::shared_ptr<spr::Runner> live() {
    std::lock_guard<std::mutex> lk(mu_);
    if (!runner_) throw std::logic_error("the Runner is closed");
    return runner_;
  }

  std::mutex mu_;
  std::shared_ptr<spr::Runner> runner_;
};

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "safe-py-runner's C++ engine (internal; use the safe_py_runner package).";
  static py::exception<spr::WorkerError> worker_error(m, "WorkerError", PyExc_RuntimeError);
  static py::exception<spr::SessionLimitError> session_limit_error(m, "SessionLimitError", PyExc_RuntimeError);
  // pybind11 wants a plain function pointer taking std::exception_ptr by value.
  py::register_exception_translator([](std::exception_ptr p) {  // NOLINT(performance-unnecessary-value-param)
    try {
      if (p) std::rethrow_exception(p);
    } catch (const spr::PolicyError& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const spr::WorkerError& e) {
      worker_error(e.what());
    } catch (const spr::SessionLimitError& e) {
      session_limit_error(e.what());
    }
  });

  m.def("version", [] { return std::string(spr::version()); });
  m.def(
      "normalize_policy",
      [](const std::string& policy_json) {
        return dump(spr::RunnerPolicy::from_json(parse(policy_json, "policy")).to_json());
      },
      "Validate a policy (JSON text of fields) and return every field as JSON text.");
  m.def(
      "policy_loosens",
      [](const std::string& policy_json, const std::string& ceiling_json) {
        return spr::RunnerPolicy::from_json(parse(policy_json, "policy"))
            .looser_than(spr::RunnerPolicy::from_json(parse(ceiling_json, "policy")));
      },
      "\"\" when the policy is at least as tight as the ceiling in every field, else which field loosens it.");
  m.def("stdout_matches", &spr::detail::stdout_matches, py::arg("actual"), py::arg("expected"),
        "Whether stdout equals the expected text, ignoring trailing whitespace on each line and trailing blank "
        "lines (batch evaluation's rule).");
  m.def(
      "policy_from_file", [](const std::string& path) { return dump(spr::RunnerPolicy::from_file(path).to_json()); },
      "Read a TOML policy file; every field as JSON text.");

  m.def(
      "prestart",
      [](const std::string& worker_path) {
        Prestarted& p = Prestarted::get();
        if (p.runner) return;
        RunnerArgs a;  // a Runner() with every argument at its default (safe_py_runner/runner.py)
        a.o.worker_path = worker_path;
        std::shared_ptr<spr::Runner> started;
        try {
          py::gil_scoped_release nogil;  // builds the pool and queues one start; the start runs on its thread
          started = std::make_shared<spr::Runner>(a.o);
        } catch (const std::exception&) {
          return;  // the first run meets the same error and reports it
        }
        if (p.runner) return;  // another thread's, while this one let the GIL go (this one stops with `started`)
        static const bool registered = pthread_atfork(nullptr, nullptr, [] { Prestarted::forked = true; }) == 0;
        if (!registered) return;  // a child could not tell the runner is not its own: `started` stops now
        p.pid = getpid();
        p.host = HostState::now();
        p.args = std::move(a);
        p.runner = std::move(started);  // published last, under the GIL, with its pid and arguments
      },
      py::arg("worker_path"), "Start the default Runner's first worker now (see safe_py_runner/__init__.py).");
  m.def(
      "drop_prestart",
      [] {
        std::shared_ptr<spr::Runner> r = Prestarted::get().take();
        if (!r) return;
        py::gil_scoped_release nogil;
        r.reset();  // stops its worker, started or starting
      },
      "Stop the prestarted Runner if nothing took it over.");
  m.def("prestart_pending", [] {
    const Prestarted& p = Prestarted::get();
    return p.runner != nullptr && p.mine();
  });

  py::class_<PyRunner>(m, "Runner")
      .def(py::init<std::size_t, const std::string&, const std::string&, double, double, bool,
                    const std::vector<std::string>&, std::size_t, double, std::size_t>(),
           py::arg("workers"), py::arg("policy_json"), py::arg("worker_path"), py::arg("kill_grace_seconds"),
           py::arg("start_timeout_seconds"), py::arg("worker_stderr"), py::arg("preload"),
           py::arg("max_sessions") = spr::RunnerOptions{}.max_sessions,
           py::arg("session_idle_seconds") = spr::RunnerOptions{}.session_idle_seconds,
           py::arg("subinterpreter_threads") = spr::RunnerOptions{}.subinterpreter_threads)
      .def("run", &PyRunner::run, py::arg("code"), py::arg("input_json"), py::arg("policy_json"),
           py::arg("on_output") = py::none(), py::arg("token") = nullptr, py::arg("stdin") = std::string(),
           py::arg("functions") = py::none(), py::arg("files") = py::none(),
           py::arg("collect") = std::vector<std::string>())
      .def("open_session", &PyRunner::open_session, py::arg("policy_json"))
      .def("hardening", &PyRunner::hardening, py::arg("isolation"))
      .def("python_version", &PyRunner::python_version)
      .def("runs_at_once", &PyRunner::runs_at_once)
      .def("shutdown", &PyRunner::shutdown);

  py::class_<spr::CancelToken>(m, "CancelToken")
      .def(py::init<>())
      .def("cancel", &spr::CancelToken::cancel, py::call_guard<py::gil_scoped_release>())
      .def("cancelled", &spr::CancelToken::cancelled);

  py::class_<spr::Session, std::shared_ptr<spr::Session>>(m, "Session")
      .def(
          "run",
          [](spr::Session& s, const std::string& code, std::string input_json, const py::object& on_output,
             const spr::CancelToken* token, bool want_repr, std::optional<double> timeout_seconds,
             std::optional<std::int64_t> max_output_kb, std::optional<std::int64_t> max_result_kb,
             const py::object& functions, const std::string& stdin_text) {
            spr::RunOptions o = run_options(on_output, token, functions);
            o.stdin_text = stdin_text;
            o.want_repr = want_repr;
            o.timeout_seconds = timeout_seconds;
            o.max_output_kb = max_output_kb;
            o.max_result_kb = max_result_kb;
            spr::RunResult r;
            {
              py::gil_scoped_release nogil;
              o.input_json = checked_input(std::move(input_json));
              r = s.run(code, json::object(), o);
            }
            return to_tuple(r);
          },
          py::arg("code"), py::arg("input_json"), py::arg("on_output") = py::none(), py::arg("token") = nullptr,
          py::arg("want_repr") = false, py::arg("timeout_seconds") = py::none(), py::arg("max_output_kb") = py::none(),
          py::arg("max_result_kb") = py::none(), py::arg("functions") = py::none(), py::arg("stdin") = std::string())
      .def("variables",
           [](spr::Session& s) {
             json v;
             {
               py::gil_scoped_release nogil;
               v = s.variables();
             }
             return dump(v);
           })
      .def("close", &spr::Session::close, py::call_guard<py::gil_scoped_release>())
      .def("alive", &spr::Session::alive)
      .def("pid", &spr::Session::pid);
}
