// The C audit hook: one table row per audit event (or event prefix) and the rule that decides it.
#include "audit.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <string_view>

#include "trust.hpp"

namespace spr::embed::audit {

namespace {

enum class Rule {
  deny,               // never during a run
  deny_from_user,     // denied when user code raised it directly; the runtime's own modules may
  network,            // allowed by allow_network
  threads,            // allowed by the isolation mode (fork, process)
  exec,               // exec/eval recovered by user code
  compile,            // compile recovered by user code
  open_file,          // open(): reads under readable roots, writes under the scratch dir
  read_path,          // every path argument must be readable
  write_path,         // every path argument must be inside the scratch dir
  frame_attr,         // object.__getattr__ on frame/code attributes, from user code
  import_module,      // new imports: the import policy
  sqlite_connect,     // only ":memory:"
};

struct Row {
  const char* event;  // exact name, or a prefix when it ends with '.' or '_'
  Rule rule;
  const char* why;  // shown to the user: what would allow it
};

// Order does not matter; exact names and prefixes are both scanned.
constexpr Row kRows[] = {
    // process creation: never (the OS layer also refuses execve and fork)
    {"os.system", Rule::deny, "process creation is never allowed"},
    {"os.exec", Rule::deny, "process creation is never allowed"},
    {"os.posix_spawn", Rule::deny, "process creation is never allowed"},
    {"os.spawn", Rule::deny, "process creation is never allowed"},
    {"os.fork", Rule::deny, "process creation is never allowed"},
    {"os.forkpty", Rule::deny, "process creation is never allowed"},
    {"os.startfile", Rule::deny, "process creation is never allowed"},
    {"subprocess.Popen", Rule::deny, "process creation is never allowed"},
    {"pty.spawn", Rule::deny, "process creation is never allowed"},
    {"webbrowser.open", Rule::deny, "process creation is never allowed"},
    {"os.kill", Rule::deny, "signalling processes is never allowed"},
    {"os.killpg", Rule::deny, "signalling processes is never allowed"},
    {"signal.pthread_kill", Rule::deny, "signalling threads is never allowed"},
    // native code and raw memory
    {"ctypes.", Rule::deny, "ctypes is never allowed"},
    {"mmap.__new__", Rule::deny, "mmap is never allowed"},
    {"cpython.run_", Rule::deny, "running new top-level code is never allowed"},
    {"cpython.PyInterpreterState_", Rule::deny, "creating interpreters is never allowed"},
    {"cpython._PySys_ClearAuditHooks", Rule::deny, "clearing audit hooks is never allowed"},
    {"sys.addaudithook", Rule::deny, "adding audit hooks is never allowed"},
    // The standard library rebuilds its own code objects (types.coroutine changes a flag); user code may not.
    {"code.__new__", Rule::deny_from_user, "building code objects is never allowed"},
    {"function.__new__", Rule::deny, "building functions from code objects is never allowed"},
    // Refused to everyone once armed: the engine unmarshals the runtime's own bytecode itself
    // (trust.cpp), and standard-library code can be made to unmarshal bytes a run chose.
    {"marshal.load", Rule::deny, "unmarshalling is never allowed"},
    {"marshal.loads", Rule::deny, "unmarshalling is never allowed"},
    {"resource.setrlimit", Rule::deny, "changing resource limits is never allowed"},
    {"resource.prlimit", Rule::deny, "changing resource limits is never allowed"},
    {"fcntl.ioctl", Rule::deny, "ioctl is never allowed"},
    {"syslog.", Rule::deny, "syslog is never allowed"},
    // introspection that walks out of the sandbox
    {"gc.get_objects", Rule::deny, "walking the heap is never allowed"},
    {"gc.get_referrers", Rule::deny, "walking the heap is never allowed"},
    {"gc.get_referents", Rule::deny, "walking the heap is never allowed"},
    {"sys._getframe", Rule::deny_from_user, "frame access is never allowed"},
    {"sys._getframemodulename", Rule::deny_from_user, "frame access is never allowed"},
    {"sys._current_frames", Rule::deny, "frame access is never allowed"},
    {"sys._current_exceptions", Rule::deny, "frame access is never allowed"},
    {"sys.settrace", Rule::deny, "tracing is never allowed"},
    {"sys.setprofile", Rule::deny, "profiling hooks are never allowed"},
    {"sys._settraceallthreads", Rule::deny, "tracing is never allowed"},
    {"sys._setprofileallthreads", Rule::deny, "profiling hooks are never allowed"},
    {"sys.monitoring.register_callback", Rule::deny, "monitoring hooks are never allowed"},
    {"object.__getattr__", Rule::frame_attr, "frame and code attributes are never allowed"},
    // threads
    {"_thread.start_new_thread", Rule::threads, "threads need the 'fork' or 'process' isolation mode"},
    {"_thread.start_joinable_thread", Rule::threads, "threads need the 'fork' or 'process' isolation mode"},
    // dynamic code
    {"exec", Rule::exec, "allowed when 'exec' and 'eval' are not in blocked_builtins"},
    {"compile", Rule::compile, "allowed when the run has 'compile', 'eval' or 'exec'"},
    {"import", Rule::import_module, "the import policy"},
    // network
    {"socket.", Rule::network, "allowed by 'allow_network'"},
    {"urllib.Request", Rule::network, "allowed by 'allow_network'"},
    {"http.client.", Rule::network, "allowed by 'allow_network'"},
    {"ftplib.", Rule::network, "allowed by 'allow_network'"},
    {"smtplib.", Rule::network, "allowed by 'allow_network'"},
    {"poplib.", Rule::network, "allowed by 'allow_network'"},
    {"imaplib.", Rule::network, "allowed by 'allow_network'"},
    {"nntplib.", Rule::network, "allowed by 'allow_network'"},
    {"telnetlib.", Rule::network, "allowed by 'allow_network'"},
    // files
    {"open", Rule::open_file, "reads: 'allowed_read_paths'; writes: 'scratch_dir'"},
    {"os.listdir", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"os.scandir", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"glob.glob", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"os.getxattr", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"os.listxattr", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"os.chdir", Rule::read_path, "allowed by 'allowed_read_paths'"},
    {"os.remove", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.rename", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.rmdir", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.mkdir", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.chmod", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.chown", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.chflags", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.link", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.symlink", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.truncate", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.utime", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.setxattr", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.removexattr", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.mkfifo", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"os.mknod", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"shutil.", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"tempfile.", Rule::write_path, "allowed inside the run directory by 'scratch_dir'"},
    {"sqlite3.connect", Rule::sqlite_connect, "only ':memory:' databases are allowed"},
    {"sqlite3.enable_load_extension", Rule::deny, "sqlite extensions are never allowed"},
    {"sqlite3.load_extension", Rule::deny, "sqlite extensions are never allowed"},
};

constexpr const char* kFrameAttrs[] = {"tb_frame", "gi_frame", "gi_code", "cr_frame", "cr_code", "ag_frame",
                                       "ag_code",  "f_code",   "f_back",  "__code__", "__globals__", "f_globals"};

bool g_armed = false;
RunRules g_rules;
std::vector<std::string> g_runtime_roots;
std::vector<std::string> g_support_roots;
int g_denials = 0;
ImportCheck g_import_check = nullptr;

const Row* find_row(std::string_view ev) {
  for (const auto& row : kRows) {
    std::string_view name(row.event);
    const char last = name.back();
    if (last == '.' || last == '_') {
      if (ev.substr(0, name.size()) == name) return &row;
    } else if (ev == name) {
      return &row;
    }
  }
  return nullptr;
}

// Path of a str/bytes/PathLike argument; false when the argument is not a path (e.g. an fd).
bool arg_path(PyObject* arg, std::string& out) {
  if (PyUnicode_Check(arg)) {
    out = py::utf8(arg);
    return true;
  }
  if (PyBytes_Check(arg)) {
    out.assign(PyBytes_AS_STRING(arg), static_cast<size_t>(PyBytes_GET_SIZE(arg)));
    return true;
  }
  if (PyObject_HasAttrString(arg, "__fspath__")) {
    py::Ref p(PyOS_FSPath(arg));
    if (!p) {
      PyErr_Clear();
      return false;
    }
    return arg_path(p.get(), out);
  }
  return false;
}

std::string resolve(const std::string& path) {
  std::string abs = path;
  if (abs.empty() || abs[0] != '/') {
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) return {};
    abs = std::string(cwd) + "/" + path;
  }
  char buf[PATH_MAX];
  if (realpath(abs.c_str(), buf)) return buf;
  // A file that does not exist yet: resolve its directory, keep the name.
  auto slash = abs.find_last_of('/');
  std::string dir = slash == 0 ? "/" : abs.substr(0, slash);
  std::string name = abs.substr(slash + 1);
  if (name == ".." || name == ".") return {};
  if (!realpath(dir.c_str(), buf)) return {};
  std::string r = buf;
  if (r.back() != '/') r += '/';
  return r + name;
}

bool readable(const std::string& path) {
  static const std::vector<std::string> kDevices = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"};
  return path_under(path, g_runtime_roots) || path_under(path, g_support_roots) || path_under(path, g_rules.read_roots) ||
         (!g_rules.scratch.empty() && path_under(path, {g_rules.scratch})) ||
         std::find(kDevices.begin(), kDevices.end(), path) != kDevices.end();
}

bool writable(const std::string& path) { return !g_rules.scratch.empty() && path_under(path, {g_rules.scratch}); }

bool open_is_write(PyObject* mode, PyObject* flags) {
  if (mode && PyUnicode_Check(mode)) {
    std::string m = py::utf8(mode);
    if (m.find_first_of("wax+") != std::string::npos) return true;
  }
  if (flags && PyLong_Check(flags)) {
    long f = PyLong_AsLong(flags);
    if (f == -1 && PyErr_Occurred()) PyErr_Clear();
    if ((f & (O_WRONLY | O_RDWR | O_CREAT | O_TRUNC | O_APPEND)) != 0) return true;
  }
  return false;
}

int deny(const char* event, const char* why) {
  ++g_denials;
  PyErr_Format(PyExc_PermissionError, "blocked by policy: audit event '%s' (%s)", event, why);
  return -1;
}

bool all_paths(PyObject* args, bool (*ok)(const std::string&), bool& saw_path) {
  saw_path = false;
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  for (Py_ssize_t i = 0; i < n; ++i) {
    std::string p;
    if (!arg_path(PyTuple_GET_ITEM(args, i), p)) continue;
    saw_path = true;
    std::string r = resolve(p);
    if (r.empty() || !ok(r)) return false;
  }
  return true;
}

int hook(const char* event, PyObject* args, void*) {
  if (!g_armed) return 0;
  const Row* row = find_row(event);
  if (!row) return 0;
  switch (row->rule) {
    case Rule::deny:
      return deny(event, row->why);
    case Rule::deny_from_user:
      return caller_is_user() ? deny(event, row->why) : 0;
    case Rule::network:
      // A local AF_UNIX pair (asyncio's self-pipe, socket.socketpair) reaches nothing; the seccomp filter
      // refuses socket(AF_UNIX) without 'allow_unix_sockets' (this event cannot tell a new socket from a
      // socketpair() end being wrapped), so only socketpair() can create one.
      if (!g_rules.allow_network && std::strcmp(event, "socket.__new__") == 0 && PyTuple_GET_SIZE(args) >= 2 &&
          PyLong_Check(PyTuple_GET_ITEM(args, 1)) && PyLong_AsLong(PyTuple_GET_ITEM(args, 1)) == AF_UNIX)
        return 0;
      return g_rules.allow_network ? 0 : deny(event, row->why);
    case Rule::threads:
      return g_rules.allow_threads ? 0 : deny(event, row->why);
    case Rule::exec:
      return g_rules.block_exec && caller_is_user() ? deny(event, row->why) : 0;
    case Rule::compile:
      return g_rules.block_compile && caller_is_user() ? deny(event, row->why) : 0;
    case Rule::frame_attr: {
      if (PyTuple_GET_SIZE(args) < 2 || !caller_is_user()) return 0;
      std::string name = py::utf8(PyTuple_GET_ITEM(args, 1));
      for (const char* a : kFrameAttrs)
        if (name == a) return deny(event, row->why);
      return 0;
    }
    case Rule::import_module: {
      if (!g_import_check || PyTuple_GET_SIZE(args) < 1) return 0;
      std::string msg = g_import_check(py::utf8(PyTuple_GET_ITEM(args, 0)));
      if (msg.empty()) return 0;
      ++g_denials;
      PyErr_SetString(PyExc_ImportError, msg.c_str());
      return -1;
    }
    case Rule::sqlite_connect: {
      if (PyTuple_GET_SIZE(args) >= 1) {
        std::string p;
        if (arg_path(PyTuple_GET_ITEM(args, 0), p) && p == ":memory:") return 0;
      }
      return deny(event, row->why);
    }
    case Rule::open_file: {
      if (PyTuple_GET_SIZE(args) < 1) return 0;
      PyObject* target = PyTuple_GET_ITEM(args, 0);
      std::string p;
      // An integer is an fd: reopening descriptors the sandbox did not give out is refused.
      if (!arg_path(target, p)) return target == Py_None ? 0 : deny(event, "opening file descriptors is never allowed");
      PyObject* mode = PyTuple_GET_SIZE(args) > 1 ? PyTuple_GET_ITEM(args, 1) : nullptr;
      PyObject* flags = PyTuple_GET_SIZE(args) > 2 ? PyTuple_GET_ITEM(args, 2) : nullptr;
      std::string r = resolve(p);
      if (open_is_write(mode, flags)) {
        return !r.empty() && writable(r) ? 0 : deny(event, "writes are allowed only inside the run directory with 'scratch_dir'");
      }
      return !r.empty() && readable(r) ? 0 : deny(event, "reads are allowed only under 'allowed_read_paths'");
    }
    case Rule::read_path: {
      bool saw = false;
      return all_paths(args, readable, saw) ? 0 : deny(event, row->why);
    }
    case Rule::write_path: {
      bool saw = false;
      bool ok = all_paths(args, writable, saw);
      return ok && saw ? 0 : deny(event, row->why);
    }
  }
  return 0;
}

}  // namespace

void install() { PySys_AddAuditHook(hook, nullptr); }
void set_runtime_roots(std::vector<std::string> roots) { g_runtime_roots = std::move(roots); }
const std::vector<std::string>& runtime_roots() { return g_runtime_roots; }
void set_support_roots(std::vector<std::string> roots) { g_support_roots = std::move(roots); }
void set_rules(RunRules rules) { g_rules = std::move(rules); }
void arm(bool on) { g_armed = on; }
bool armed() { return g_armed; }
int denials() { return g_denials; }
void reset_denials() {
  g_denials = 0;
}
void set_import_check(ImportCheck check) { g_import_check = check; }

bool path_under(const std::string& path, const std::vector<std::string>& roots) {
  for (const auto& root : roots) {
    if (root.empty()) continue;
    if (path.compare(0, root.size(), root) != 0) continue;
    if (path.size() == root.size() || path[root.size()] == '/' || root.back() == '/') return true;
  }
  return false;
}

bool caller_is_user() {
  PyFrameObject* frame = PyEval_GetFrame();  // borrowed
  if (!frame) return false;                  // called from C with no Python frame: the engine itself
  // By identity, never by name: co_filename is whatever compile() was given.
  py::Ref code(reinterpret_cast<PyObject*>(PyFrame_GetCode(frame)));
  return !trust::is_trusted(code.get());
}

}  // namespace spr::embed::audit
