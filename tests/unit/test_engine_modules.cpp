// Unit tests of the worker's engine modules, in this process with an initialised interpreter: the guard's
// import decisions, the audit hook's path test, the JSON codec, output capture, memory accounting and
// soft deadlines. (The black-box suites test the same modules through real workers.)
#include <doctest/doctest.h>

#include <limits.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>

#include "engine/audit.hpp"
#include "engine/trust.hpp"
#include "engine/capture.hpp"
#include "engine/codec.hpp"
#include "engine/deadline.hpp"
#include "engine/engine.hpp"
#include "engine/guard.hpp"
#include "engine/memory.hpp"
#include "engine/interp_state.hpp"
#include "engine/py.hpp"
#include "engine/run_scope.hpp"
#include "engine/subinterpreter_pool.hpp"

namespace embed = spr::embed;
using spr::json;

namespace {

void engine() {
  static const std::string error = [] {
    embed::EngineOptions o;
    o.preload = false;
    return embed::initialize(o);
  }();
  REQUIRE_MESSAGE(error.empty(), error);
}

// Runs `source` as a module body; returns the name of the exception it raised, or "" for none.
std::string exec(const char* source) {
  engine();
  spr::embed::py::Ref globals(PyDict_New());
  PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
  spr::embed::py::Ref value(PyRun_String(source, Py_file_input, globals.get(), globals.get()));
  if (value) return "";
  PyObject *type = nullptr, *val = nullptr, *tb = nullptr;
  PyErr_Fetch(&type, &val, &tb);
  std::string name = type ? reinterpret_cast<PyTypeObject*>(type)->tp_name : "?";
  Py_XDECREF(type);
  Py_XDECREF(val);
  Py_XDECREF(tb);
  return name;
}

json round_trip(const json& v, std::uint64_t max_bytes = 1 << 20) {
  engine();
  spr::embed::py::Ref obj(embed::codec::to_python(v));
  REQUIRE(obj);
  auto enc = embed::codec::from_python(obj.get(), max_bytes);
  REQUIRE(enc.status == embed::codec::Status::ok);
  return enc.value;
}

}  // namespace

TEST_CASE("guard: the default policy blocks the named roots and their C twins") {
  engine();
  embed::guard::set_policy(spr::RunnerPolicy{});
  CHECK(embed::guard::check("os") == "Import 'os' is blocked by policy");
  CHECK(embed::guard::check("os.path") == "Import 'os.path' is blocked by policy");
  CHECK_FALSE(embed::guard::check("posix").empty());
  CHECK_FALSE(embed::guard::check("_socket").empty());
  CHECK_FALSE(embed::guard::check("_posixsubprocess").empty());
  CHECK(embed::guard::check("math").empty());
  CHECK(embed::guard::check("json.decoder").empty());
  CHECK(embed::guard::check("osmosis").empty());  // a root name, not a prefix
}

TEST_CASE("guard: importlib and the engine's own module are blocked under every policy") {
  engine();
  spr::RunnerPolicy p;
  p.blocked_imports.clear();
  embed::guard::set_policy(p);
  CHECK_FALSE(embed::guard::check("importlib").empty());
  CHECK_FALSE(embed::guard::check("importlib.util").empty());
  CHECK_FALSE(embed::guard::check("_imp").empty());
  CHECK_FALSE(embed::guard::check("_spr").empty());
  CHECK(embed::guard::check("os").empty());
}

TEST_CASE("guard: allow mode admits only the allowed roots and pkg.* patterns") {
  engine();
  spr::RunnerPolicy p;
  p.mode = spr::Mode::allow;
  p.blocked_imports.clear();
  p.allowed_imports = {"math", "xml.*"};
  embed::guard::set_policy(p);
  CHECK(embed::guard::check("math").empty());
  CHECK(embed::guard::check("xml").empty());
  CHECK(embed::guard::check("xml.dom.minidom").empty());
  CHECK(embed::guard::check("re") == "Import 're' is not allowed by policy");
  embed::guard::set_policy(spr::RunnerPolicy{});
}

TEST_CASE("audit: path_under compares whole path components") {
  const std::vector<std::string> roots = {"/usr/lib/python3.11", "/opt/data/"};
  CHECK(embed::trust::path_under("/usr/lib/python3.11", roots));
  CHECK(embed::trust::path_under("/usr/lib/python3.11/json/__init__.py", roots));
  CHECK(embed::trust::path_under("/opt/data/x.csv", roots));
  CHECK_FALSE(embed::trust::path_under("/usr/lib/python3.110/x.py", roots));
  CHECK_FALSE(embed::trust::path_under("/usr/lib/python3", roots));
  CHECK_FALSE(embed::trust::path_under("/etc/passwd", roots));
  CHECK_FALSE(embed::trust::path_under("/etc/passwd", {""}));
}

TEST_CASE("trust: real_path keeps only a runtime directory's resolution, never a link's or another path's") {
  namespace fs = std::filesystem;
  const fs::path base = fs::temp_directory_path() / ("spr-realpath-" + std::to_string(getpid()));
  fs::remove_all(base);
  fs::create_directories(base / "rt" / "pkg");
  fs::create_directories(base / "rt" / "other");
  fs::create_directories(base / "scratch");
  std::ofstream(base / "rt" / "pkg" / "mod.py") << "x = 1\n";
  std::ofstream(base / "rt" / "other" / "mod.py") << "x = 2\n";
  fs::create_symlink(base / "scratch", base / "rt" / "pkg" / "link.py");
  char real_base[PATH_MAX];
  REQUIRE(::realpath(base.c_str(), real_base));
  const std::string rt = std::string(real_base) + "/rt", scratch = std::string(real_base) + "/scratch";
  const auto saved = embed::trust::runtime_roots();
  embed::trust::set_runtime_roots({rt});
  std::string r;
  for (int twice = 0; twice < 2; ++twice) {  // the second time from the kept directory
    REQUIRE(embed::trust::real_path(rt + "/pkg/mod.py", r));
    CHECK(r == rt + "/pkg/mod.py");
  }
  REQUIRE(embed::trust::real_path(rt + "/pkg/link.py", r));  // the last step is a link: resolved whole
  CHECK(r == scratch);
  CHECK_FALSE(embed::trust::real_path(rt + "/pkg/missing.py", r));
  // A directory a run could change (here: a link in its scratch directory into the runtime) is resolved
  // each time, though it resolves under the roots: re-pointed, it resolves to its new target.
  fs::create_directory_symlink(base / "rt" / "pkg", base / "scratch" / "into");
  REQUIRE(embed::trust::real_path(scratch + "/into/mod.py", r));
  CHECK(r == rt + "/pkg/mod.py");
  fs::remove(base / "scratch" / "into");
  fs::create_directory_symlink(base / "rt" / "other", base / "scratch" / "into");
  REQUIRE(embed::trust::real_path(scratch + "/into/mod.py", r));
  CHECK(r == rt + "/other/mod.py");
  // Nor a path that climbs out of the roots with "..".
  REQUIRE(embed::trust::real_path(rt + "/pkg/../other/mod.py", r));
  CHECK(r == rt + "/other/mod.py");
  embed::trust::set_runtime_roots(saved);
  fs::remove_all(base);
}

TEST_CASE("codec: JSON values survive the trip through Python") {
  const json v = {{"i", 1}, {"big", 18446744073709551615ULL}, {"f", 2.5}, {"s", "h\xC3\xA9"},
                  {"l", {1, nullptr, true}}, {"o", {{"k", json::array()}}}};
  CHECK(round_trip(v) == v);
}

TEST_CASE("codec: tuples become lists, values JSON cannot hold become str(value)") {
  engine();
  spr::embed::py::Ref globals(PyDict_New());
  PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
  spr::embed::py::Ref v(PyRun_String("((1, 2), {3}, 2**70)", Py_eval_input, globals.get(), globals.get()));
  REQUIRE(v);
  auto enc = embed::codec::from_python(v.get(), 1 << 20);
  REQUIRE(enc.status == embed::codec::Status::ok);
  CHECK(enc.value == json::array({json::array({1, 2}), "{3}", "1180591620717411303424"}));
}

TEST_CASE("codec: the byte budget and the depth limit are errors, not truncation") {
  engine();
  spr::embed::py::Ref big(embed::codec::to_python(json(std::string(5000, 'x'))));
  CHECK(embed::codec::from_python(big.get(), 1000).status == embed::codec::Status::too_large);
  CHECK(embed::codec::from_python(big.get(), 10000).status == embed::codec::Status::ok);
  json deep = json::array();
  for (int i = 0; i < 20; ++i) deep = json::array({deep});
  spr::embed::py::Ref nested(embed::codec::to_python(deep));
  CHECK(embed::codec::from_python(nested.get(), 1 << 20, 10).status == embed::codec::Status::too_deep);
  CHECK(embed::codec::from_python(nested.get(), 1 << 20, 30).status == embed::codec::Status::ok);
}

TEST_CASE("codec: a value that contains itself is reported as cyclic, not as too deep") {
  engine();
  spr::embed::py::Ref globals(PyDict_New());
  PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
  spr::embed::py::Ref v(PyRun_String("[1, 2]", Py_eval_input, globals.get(), globals.get()));
  REQUIRE(v);
  REQUIRE(PyList_Append(v.get(), v.get()) == 0);
  const auto enc = embed::codec::from_python(v.get(), 1 << 20);
  CHECK(enc.status == embed::codec::Status::cyclic);
  CHECK(enc.value.is_null());
  PyList_SetSlice(v.get(), 0, PyList_GET_SIZE(v.get()), nullptr);  // break the cycle
}

TEST_CASE("capture: output is capped in bytes, cut at a character boundary, and flagged") {
  engine();
  REQUIRE(embed::capture::begin(1, 10));
  const std::string hello = "hello world!";
  embed::capture::append(0, hello.data(), hello.size());
  CHECK(embed::capture::text(0) == "hello worl");
  CHECK(embed::capture::truncated(0));
  CHECK(embed::capture::text(1).empty());
  CHECK_FALSE(embed::capture::truncated(1));

  REQUIRE(embed::capture::begin(2, 5));
  const std::string euro = "aaaa\xE2\x82\xAC";  // "aaaa€": the cap falls inside the euro sign
  embed::capture::append(1, euro.data(), euro.size());
  CHECK(embed::capture::text(1) == "aaaa");
  CHECK(embed::capture::truncated(1));

  REQUIRE(embed::capture::begin(3, 64));  // a new run starts empty
  CHECK(embed::capture::text(1).empty());
  CHECK_FALSE(embed::capture::truncated(1));
}

TEST_CASE("memory: allocations past the run's limit fail, and only during the run") {
  engine();
  embed::memory::begin_run(16u << 20);
  CHECK(exec("b = bytearray(64 * 1024 * 1024)") == "MemoryError");
  CHECK(embed::memory::refused());
  embed::memory::end_run();
  CHECK(exec("b = bytearray(64 * 1024 * 1024)").empty());
  embed::memory::begin_run(64u << 20);
  CHECK(exec("b = bytearray(1024 * 1024)").empty());
  CHECK_FALSE(embed::memory::refused());
  embed::memory::end_run();
}

// ThreadSanitizer holds a signal back until the thread next calls a function it intercepts, and
// CPython's eval loop running `pass` calls none: under TSan the loop sleeps for no time instead, so
// the timers' signals get through (the worker has SIGKILL behind them; this in-process test has not).
#if defined(__SANITIZE_THREAD__)
constexpr const char* kSpin = "import time\nwhile True: time.sleep(0)";
#else
constexpr const char* kSpin = "while True: pass";
#endif

TEST_CASE("deadline: the wall-clock timer interrupts a Python loop with TimeoutError") {
  engine();
  embed::deadline::arm(0.05, 0);
  CHECK(exec(kSpin) == "TimeoutError");
  embed::deadline::disarm();
  CHECK(embed::deadline::wall_fired());
  CHECK_FALSE(embed::deadline::cpu_fired());
}

TEST_CASE("deadline: the CPU timer fires on CPU time") {
  engine();
  embed::deadline::arm(0, 0.05);
  CHECK(exec(kSpin) == "TimeoutError");
  embed::deadline::disarm();
  CHECK(embed::deadline::cpu_fired());
}

namespace {

std::string cwd() {
  char buf[PATH_MAX];
  return getcwd(buf, sizeof buf) ? buf : "";
}

PyObject* main_module() { return PyDict_GetItemString(PyImport_GetModuleDict(), "__main__"); }  // borrowed

}  // namespace

TEST_CASE("run scope: an exception ends the limits, puts __main__ back and removes the scratch directory") {
  engine();
  spr::RunnerPolicy p;
  p.scratch_dir = true;
  p.memory_limit_mb = 16;
  p.timeout_seconds = 0.3;
  spr::protocol::Request req;
  req.id = 4242;
  req.policy = p;
  const std::string home = cwd();
  PyObject* before = main_module();
  spr::embed::py::Ref module(PyModule_New("__main__"));
  std::string scratch;
  try {
    embed::RunScope scope(req, embed::audit::RunRules{});
    REQUIRE(scope.error().empty());
    scratch = cwd();
    CHECK(scratch != home);  // the run works in its own directory
    scope.begin_main(module.get());
    CHECK(main_module() == module.get());
    scope.arm_limits();
    CHECK(exec("b = bytearray(64 * 1024 * 1024)") == "MemoryError");  // the limit is on
    throw std::runtime_error("a run's step failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(cwd() == home);
  CHECK(access(scratch.c_str(), F_OK) != 0);  // removed with the scope
  CHECK(main_module() == before);
  CHECK(exec("b = bytearray(64 * 1024 * 1024)").empty());  // the memory limit ended
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  CHECK_FALSE(embed::deadline::wall_fired());  // the 0.3 s timer was disarmed, not left to fire
}

TEST_CASE("run scope: an early return ends the run state, and end_limits is idempotent") {
  engine();
  spr::protocol::Request req;
  req.policy.memory_limit_mb = 16;
  {
    embed::RunScope scope(req, embed::audit::RunRules{});
    REQUIRE(scope.error().empty());
    scope.arm_limits();
    scope.end_limits();
    CHECK(exec("b = bytearray(64 * 1024 * 1024)").empty());
    scope.end_limits();
  }
  {
    embed::RunScope scope(req, embed::audit::RunRules{});
    scope.arm_limits();
  }  // left without end_limits
  CHECK(exec("b = bytearray(64 * 1024 * 1024)").empty());
}

TEST_CASE("subinterpreter: the handle ends its interpreter when destroyed; a moved-from handle owns none") {
  engine();
  PyThreadState* main = PyThreadState_Get();
  auto interpreters = [] {
    int n = 0;
    for (PyInterpreterState* i = PyInterpreterState_Head(); i != nullptr; i = PyInterpreterState_Next(i)) ++n;
    return n;
  };
  const int before = interpreters();
  {
    std::string error;
    embed::Subinterpreter made = embed::Subinterpreter::create(main, error);
    REQUIRE(error.empty());
    REQUIRE(made);
    CHECK(interpreters() == before + 1);
    embed::Subinterpreter kept = std::move(made);
    CHECK_FALSE(made);
    CHECK(interpreters() == before + 1);  // moving hands the interpreter over, it does not end it
    {
      embed::ActiveInterpreter active(kept.thread_state(), kept.state());
      CHECK(PyThreadState_Get() == kept.thread_state());
    }
    CHECK(PyThreadState_Get() == main);
  }
  CHECK(interpreters() == before);
  CHECK(PyThreadState_Get() == main);
}

TEST_CASE("active interpreter: a sub-interpreter is current inside the scope, the previous state after it") {
  engine();
  PyThreadState* main = PyThreadState_Get();
  embed::InterpState* main_state = &embed::state();
  PyThreadState* sub = nullptr;
  {
    embed::trust::Trusted trusted;  // creating interpreters is the engine's, not a run's
    sub = Py_NewInterpreter();
  }
  REQUIRE(sub != nullptr);
  PyThreadState_Swap(main);
  embed::InterpState sub_state;
  {
    embed::ActiveInterpreter active(sub, &sub_state);
    CHECK(PyThreadState_Get() == sub);
    CHECK(&embed::state() == &sub_state);
  }
  CHECK(PyThreadState_Get() == main);
  CHECK(&embed::state() == main_state);
  try {
    embed::ActiveInterpreter active(sub, &sub_state);
    throw std::runtime_error("the run failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(PyThreadState_Get() == main);
  CHECK(&embed::state() == main_state);
  embed::trust::Trusted trusted;
  PyThreadState_Swap(sub);
  Py_EndInterpreter(sub);
  PyThreadState_Swap(main);
}

namespace {

// One run of `code` in this process (namespace mode: the unit tests have no worker to fork from).
spr::RunResult run_here(const std::string& code, spr::RunnerPolicy p = {}, const std::string& stdin_text = "") {
  engine();
  static std::uint64_t id = 9000;
  spr::protocol::Request req;
  req.id = ++id;
  req.code = code;
  p.isolation = spr::Isolation::namespace_;
  req.policy = p;
  req.stdin_text = stdin_text;
  return embed::run(req);
}

}  // namespace

TEST_CASE("imports in a run load the runtime's bytecode files: the engine's unmarshalling is not refused") {
  // 3.11 raises "marshal.loads" for the engine's own read of a .pyc, which a run may never pass: each
  // module a run imported was compiled from its source again (3x the CPU of python3 for pandas).
  const spr::RunResult r = run_here("import fractions, statistics\nresult = fractions.Fraction(1, 3).denominator");
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json(3));
  CHECK(embed::audit::denials() == 0);  // no step of the imports was refused
}

TEST_CASE("prebuilt objects: a run takes them once; another policy's or stdin's run builds its own") {
  engine();
  REQUIRE(embed::prebuild_run_objects(spr::RunnerPolicy{}, true));
  REQUIRE(embed::state().prebuilt_builtins != nullptr);
  // A policy with other builtins never gets the default's module (the prebuilt one is dropped too).
  spr::RunnerPolicy p;
  p.blocked_builtins.push_back("len");
  spr::RunResult r = run_here("result = hasattr(__builtins__, 'len')", p);
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json(false));
  CHECK(embed::state().prebuilt_builtins == nullptr);
  // A run with stdin reads its own text, not the prebuilt empty stdin.
  REQUIRE(embed::prebuild_run_objects(spr::RunnerPolicy{}, true));
  r = run_here("result = input()", {}, "7\n");
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json("7"));
  CHECK_FALSE(embed::state().prebuilt_streams);
  // The default policy's run takes the module: default builtins, and none left for a next run.
  REQUIRE(embed::prebuild_run_objects(spr::RunnerPolicy{}, true));
  r = run_here("print('x')\nresult = [hasattr(__builtins__, 'len'), hasattr(__builtins__, 'eval')]");
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json({true, false}));
  CHECK(r.stdout_text == "x\n");
  CHECK(embed::state().prebuilt_builtins == nullptr);
  // Built for a policy that blocks `len` (a namespace worker builds them for its last run's policy): taken by
  // a run of that policy, with its builtins; not by a run of the default policy.
  REQUIRE(embed::prebuild_run_objects(p, false));
  REQUIRE(embed::prebuilt_run_objects());
  r = run_here("result = hasattr(__builtins__, 'len')", p);
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json(false));
  CHECK(embed::state().prebuilt_builtins == nullptr);
  CHECK_FALSE(embed::prebuilt_run_objects());
  REQUIRE(embed::prebuild_run_objects(p, false));
  r = run_here("result = hasattr(__builtins__, 'len')");
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json(true));
}
