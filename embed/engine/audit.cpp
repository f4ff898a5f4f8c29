// The C audit hook: one table row per audit event (or event prefix) and the rule that decides it.
#include "audit.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string_view>

#include "common/fd.hpp"
#include "interp_state.hpp"
#include "run_local.hpp"
#include "trust.hpp"

namespace spr::embed::audit {

namespace {

enum class Rule {
  deny,               // never during a run
  deny_from_user,     // denied when user code raised it directly; the runtime's own modules may
  code_new,           // building a code object: only a renaming copy (install_code_replace_gate) or one without bytecode
  set_code,           // function.__code__ = code: never code without bytecode
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
    // Refused whoever is on the stack: a trusted frame can be made to build one for a run (the
    // red team's heapq.nlargest(1, itertools.starmap(types.CodeType, ...))), and so can a thread
    // whose every frame is the standard library's, the engine itself when it calls a run's
    // __repr__, or a trusted function calling what a run put in its module. Renaming copies
    // (numpy's dispatchers, types.coroutine's flag) pass through the code.replace gate below.
    {"code.__new__", Rule::code_new, "building code objects is never allowed"},
    {"function.__new__", Rule::deny, "building functions from code objects is never allowed"},
    {"object.__setattr__", Rule::set_code, "code without bytecode cannot run"},
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

// A run's rules and denials, shared with the threads it starts; each own-GIL run thread has its own
// run's (a worker with run threads runs several at once). The support roots and the import check are
// set once, before any run.
struct Rules {
  RunRules rules;
  int denials = 0;
};
RunLocal<Rules> g_run;
std::vector<std::string> g_support_roots;
// Open only inside the engine's own code.replace call, on the thread making it: never for another
// thread of the run, which may run while that call lets the interpreter's lock go.
thread_local bool t_code_new_allowed = false;
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

// Which argument of an event is the dir_fd a path argument is relative to (CPython's audit
// signatures, the same from 3.9 to 3.13): {event, path index, dir_fd index}.
struct DirFdArg {
  const char* event;
  int path;
  int dir_fd;
};
constexpr DirFdArg kDirFdArgs[] = {
    {"os.chmod", 0, 2},  {"os.chown", 0, 3},  {"os.mkdir", 0, 2},  {"os.mkfifo", 0, 2},      {"os.mknod", 0, 3},
    {"os.remove", 0, 1}, {"os.rmdir", 0, 1},  {"os.utime", 0, 3},  {"os.link", 0, 2},        {"os.link", 1, 3},
    {"os.rename", 0, 2}, {"os.rename", 1, 3}, {"os.symlink", 1, 2}, {"shutil.rmtree", 0, 1},
};

// The dir_fd of argument `index`, or -1 (none, or AT_FDCWD: relative to the working directory).
int dir_fd_of(const char* event, PyObject* args, Py_ssize_t index) {
  for (const auto& d : kDirFdArgs) {
    if (d.path != index || std::strcmp(d.event, event) != 0 || d.dir_fd >= PyTuple_GET_SIZE(args)) continue;
    PyObject* v = PyTuple_GET_ITEM(args, d.dir_fd);
    if (!PyLong_Check(v)) return -1;
    const long fd = PyLong_AsLong(v);
    if (fd == -1 && PyErr_Occurred()) PyErr_Clear();
    return fd >= 0 && fd <= INT_MAX ? static_cast<int>(fd) : -1;
  }
  return -1;
}

// The directory `fd` names now, found without /proc (the sandbox mounts none): from fd up through ".." to the
// run directory, each step's name looked up by device and inode in its parent. Only a directory inside the run
// directory has a name here (only there does a run get directory descriptors); "" for any other.
constexpr int kMaxDirDepth = 256;  // far deeper than a run directory is made

std::string fd_directory(int fd) {
  const std::string& top = g_run().rules.scratch;
  struct stat here {}, anchor {};
  if (top.empty() || fstat(fd, &here) != 0 || !S_ISDIR(here.st_mode) || stat(top.c_str(), &anchor) != 0) return {};
  detail::Fd cur(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  std::string below;  // the path from the run directory down to fd's directory
  for (int depth = 0; cur && depth < kMaxDirDepth; ++depth) {
    if (here.st_dev == anchor.st_dev && here.st_ino == anchor.st_ino) return top + below;
    detail::Fd parent(openat(cur.get(), "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    DIR* listing = parent ? fdopendir(fcntl(parent.get(), F_DUPFD_CLOEXEC, 0)) : nullptr;
    if (!listing) return {};
    std::string name;
    while (const dirent* e = readdir(listing)) {
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      struct stat st {};
      if (fstatat(parent.get(), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && st.st_dev == here.st_dev &&
          st.st_ino == here.st_ino) {
        name = e->d_name;
        break;
      }
    }
    closedir(listing);
    if (name.empty() || fstat(parent.get(), &here) != 0) return {};  // removed meanwhile
    below = "/" + name + below;
    cur = std::move(parent);
  }
  return {};
}

// `path` made absolute against `base` (the working directory when empty) and resolved; "" when
// its directory does not resolve.
std::string resolve_from(const std::string& path, const std::string& base) {
  std::string abs = path;
  if (abs.empty() || abs[0] != '/') {
    std::string dir = base;
    if (dir.empty()) {
      char cwd[PATH_MAX];
      if (!getcwd(cwd, sizeof cwd)) return {};
      dir = cwd;
    }
    abs = dir + "/" + path;
  }
  std::string r;
  if (trust::real_path(abs, r)) return r;
  // A file that does not exist yet: resolve its directory, keep the name.
  auto slash = abs.find_last_of('/');
  std::string dir = slash == 0 ? "/" : abs.substr(0, slash);
  std::string name = abs.substr(slash + 1);
  if (name == ".." || name == ".") return {};
  if (!trust::real_path(dir, r)) return {};
  if (r.back() != '/') r += '/';
  return r + name;
}

std::string resolve(const std::string& path) { return resolve_from(path, {}); }

// Relative to dir_fd when one is given (os.chmod(name, mode, dir_fd=fd) touches fd's directory,
// not the working directory's).
std::string resolve_at(const std::string& path, int dir_fd) {
  if (dir_fd < 0 || (!path.empty() && path[0] == '/')) return resolve(path);
  const std::string base = fd_directory(dir_fd);
  return base.empty() ? std::string() : resolve_from(path, base);
}

// True when a relative path climbs with "..": os.open(name, flags, dir_fd=fd) raises "open" without
// its dir_fd, so the hook checks such a name against the working directory; a name that climbs
// reaches a different place from a directory at another depth.
bool climbs(const std::string& path) {
  if (path.empty() || path[0] == '/') return false;
  std::size_t start = 0;
  while (start <= path.size()) {
    const std::size_t end = std::min(path.find('/', start), path.size());
    if (path.compare(start, end - start, "..") == 0 && end - start == 2) return true;
    start = end + 1;
  }
  return false;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool readable(const std::string& path) {
  static const std::vector<std::string> kDevices = {"/dev/null", "/dev/urandom", "/dev/random", "/dev/zero"};
  return trust::path_under(path, trust::runtime_roots()) || trust::path_under(path, g_support_roots) ||
         trust::path_under(path, g_run().rules.read_roots) || (!g_run().rules.scratch.empty() && trust::path_under(path, {g_run().rules.scratch})) ||
         std::find(kDevices.begin(), kDevices.end(), path) != kDevices.end();
}

bool writable(const std::string& path) { return !g_run().rules.scratch.empty() && trust::path_under(path, {g_run().rules.scratch}); }

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

// Cython builds its functions' code objects with no bytecode at all (code.replace(co_code=b'', ...),
// hundreds while numpy and pandas import): such an object says where a function is, and can never
// run (exec and __code__ refuse it below), so building one is harmless whoever asks.
bool empty_code_arg(PyObject* args) {
  if (PyTuple_GET_SIZE(args) < 1) return false;
  PyObject* code = PyTuple_GET_ITEM(args, 0);
  return PyBytes_Check(code) && PyBytes_GET_SIZE(code) == 0;
}

bool has_no_bytecode(PyObject* obj) {
  if (!PyCode_Check(obj)) return false;
#if PY_VERSION_HEX >= 0x030B0000
  py::Ref bytes(PyCode_GetCode(reinterpret_cast<PyCodeObject*>(obj)));
#else
  py::Ref bytes = py::Ref::borrow(reinterpret_cast<PyCodeObject*>(obj)->co_code);
#endif
  if (!bytes) {
    PyErr_Clear();
    return true;  // unknown: refuse
  }
  return !PyBytes_Check(bytes.get()) || PyBytes_GET_SIZE(bytes.get()) == 0;
}

int deny(const char* event, const char* why) {
  ++g_run().denials;
  PyErr_Format(PyExc_PermissionError, "blocked by policy: audit event '%s' (%s)", event, why);
  return -1;
}

bool all_paths(const char* event, PyObject* args, bool (*ok)(const std::string&), bool& saw_path) {
  saw_path = false;
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  const bool symlink = std::strcmp(event, "os.symlink") == 0;
  for (Py_ssize_t i = 0; i < n; ++i) {
    std::string p;
    if (!arg_path(PyTuple_GET_ITEM(args, i), p)) continue;
    saw_path = true;
    std::string r;
    if (symlink && i == 0 && !p.empty() && p[0] != '/') {
      // A symlink's relative target is read from the link's own directory, not from ours.
      std::string link;
      if (n < 2 || !arg_path(PyTuple_GET_ITEM(args, 1), link)) return false;
      const std::string at = resolve_at(link, dir_fd_of(event, args, 1));
      const std::size_t slash = at.find_last_of('/');
      if (at.empty() || slash == std::string::npos) return false;
      r = resolve_from(p, slash == 0 ? "/" : at.substr(0, slash));
    } else {
      r = resolve_at(p, dir_fd_of(event, args, i));
    }
    if (r.empty() || !ok(r)) return false;
  }
  return true;
}

int hook(const char* event, PyObject* args, void*) {
  if (!trust::armed()) return 0;
  const Row* row = find_row(event);
  if (!row) return 0;
  switch (row->rule) {
    case Rule::deny:
      return deny(event, row->why);
    case Rule::deny_from_user:
      return caller_is_user() ? deny(event, row->why) : 0;
    case Rule::code_new:
      return t_code_new_allowed || empty_code_arg(args) ? 0 : deny(event, row->why);
    case Rule::network:
      // A local AF_UNIX pair (asyncio's self-pipe, socket.socketpair) reaches nothing; the seccomp filter
      // refuses socket(AF_UNIX) without 'allow_unix_sockets' (this event cannot tell a new socket from a
      // socketpair() end being wrapped), so only socketpair() can create one.
      if (!g_run().rules.allow_network && std::strcmp(event, "socket.__new__") == 0 && PyTuple_GET_SIZE(args) >= 2 &&
          PyLong_Check(PyTuple_GET_ITEM(args, 1)) && PyLong_AsLong(PyTuple_GET_ITEM(args, 1)) == AF_UNIX)
        return 0;
      return g_run().rules.allow_network ? 0 : deny(event, row->why);
    case Rule::threads:
      return g_run().rules.allow_threads ? 0 : deny(event, row->why);
    case Rule::exec:
      if (PyTuple_GET_SIZE(args) >= 1 && has_no_bytecode(PyTuple_GET_ITEM(args, 0)))
        return deny(event, "code without bytecode cannot run");
      return g_run().rules.block_exec && caller_is_user() ? deny(event, row->why) : 0;
    case Rule::set_code:
      // A function may take a code object only if it has bytecode (see empty_code_arg).
      if (PyTuple_GET_SIZE(args) >= 3 && PyUnicode_Check(PyTuple_GET_ITEM(args, 1)) &&
          PyUnicode_CompareWithASCIIString(PyTuple_GET_ITEM(args, 1), "__code__") == 0 &&
          has_no_bytecode(PyTuple_GET_ITEM(args, 2)))
        return deny(event, "code without bytecode cannot run");
      return 0;
    case Rule::compile:
      return g_run().rules.block_compile && caller_is_user() ? deny(event, row->why) : 0;
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
      ++g_run().denials;
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
      if (climbs(p)) return deny(event, "a relative path may not climb with '..': use an absolute path");
      std::string r = resolve(p);
      if (open_is_write(mode, flags)) {
        return !r.empty() && writable(r) ? 0 : deny(event, "writes are allowed only inside the run directory with 'scratch_dir'");
      }
      if (r.empty() || !readable(r)) return deny(event, "reads are allowed only under 'allowed_read_paths'");
      // A directory descriptor would anchor later dir_fd calls (os.open(name, dir_fd=fd) raises
      // "open" without its dir_fd): only the run's own directory hands them out.
      if (!writable(r) && is_directory(r)) return deny(event, "opening a directory is allowed only inside the run directory");
      return 0;
    }
    case Rule::read_path: {
      bool saw = false;
      return all_paths(event, args, readable, saw) ? 0 : deny(event, row->why);
    }
    case Rule::write_path: {
      bool saw = false;
      bool ok = all_paths(event, args, writable, saw);
      return ok && saw ? 0 : deny(event, row->why);
    }
  }
  return 0;
}

}  // namespace

void install() { PySys_AddAuditHook(hook, nullptr); }
void set_support_roots(std::vector<std::string> roots) { g_support_roots = std::move(roots); }
void set_rules(RunRules rules) { g_run().rules = std::move(rules); }
int denials() { return g_run().denials; }
void reset_denials() {
  g_run().denials = 0;
}
void set_import_check(ImportCheck check) { g_import_check = check; }

namespace {

PyObject* g_first_replace = nullptr;  // 3.11: one code type dict for every interpreter

PyObject* original_replace() { return state().code_replace ? state().code_replace : g_first_replace; }

bool is_name(PyObject* key, const char* name) { return PyUnicode_CompareWithASCIIString(key, name) == 0; }

// Only keywords, only these fields, exact str and int values (no run's object is touched while
// the rule is open), and co_flags at most gaining or losing CO_ITERABLE_COROUTINE.
bool harmless_change(PyObject* self, PyObject* args, PyObject* kwargs) {
  if (!PyCode_Check(self) || PyTuple_GET_SIZE(args) != 0 || !kwargs || !PyDict_CheckExact(kwargs)) return false;
  const long flags = reinterpret_cast<PyCodeObject*>(self)->co_flags;
  PyObject *k, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(kwargs, &pos, &k, &v)) {
    if (!PyUnicode_CheckExact(k)) return false;
    if (is_name(k, "co_name") || is_name(k, "co_qualname") || is_name(k, "co_filename")) {
      if (!PyUnicode_CheckExact(v)) return false;
    } else if (is_name(k, "co_firstlineno")) {
      if (!PyLong_CheckExact(v)) return false;
    } else if (is_name(k, "co_flags")) {
      if (!PyLong_CheckExact(v)) return false;
      const long f = PyLong_AsLong(v);
      if (f == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return false;
      }
      if ((f ^ flags) & ~static_cast<long>(CO_ITERABLE_COROUTINE)) return false;
    } else {
      return false;
    }
  }
  return true;
}

PyObject* gated_code_replace(PyObject* self, PyObject* args, PyObject* kwargs) {
  PyObject* original = original_replace();
  if (!original) {
    PyErr_SetString(PyExc_SystemError, "code.replace is not available");
    return nullptr;
  }
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  py::Ref full(PyTuple_New(n + 1));
  if (!full) return nullptr;
  PyTuple_SET_ITEM(full.get(), 0, Py_NewRef(self));
  for (Py_ssize_t i = 0; i < n; ++i) PyTuple_SET_ITEM(full.get(), i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
  if (!harmless_change(self, args, kwargs)) return PyObject_Call(original, full.get(), kwargs);
  // The collector stays off while the rule is open: no finalizer a run wrote may run inside it.
  const int gc_was = PyGC_Disable();
  t_code_new_allowed = true;
  PyObject* out = PyObject_Call(original, full.get(), kwargs);
  t_code_new_allowed = false;
  if (gc_was) PyGC_Enable();
  return out;
}

PyMethodDef kCodeReplace = {"replace", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(gated_code_replace)),
                            METH_VARARGS | METH_KEYWORDS, "Return a copy of the code object with new values for the specified fields."};

}  // namespace

bool install_code_replace_gate() {
#if PY_VERSION_HEX >= 0x030C0000
  py::Ref dict(PyType_GetDict(&PyCode_Type));  // per interpreter since 3.12
#else
  py::Ref dict = py::Ref::borrow(PyCode_Type.tp_dict);
#endif
  if (!dict) return false;
  PyObject* current = PyDict_GetItemString(dict.get(), "replace");  // borrowed
  if (!current) return false;
  if (Py_IS_TYPE(current, &PyMethodDescr_Type) &&
      reinterpret_cast<PyMethodDescrObject*>(current)->d_method == &kCodeReplace)
    return g_first_replace != nullptr;  // 3.11: the main interpreter already put the gate in the shared dict
  state().code_replace = Py_NewRef(current);
  if (!g_first_replace) g_first_replace = Py_NewRef(current);
  py::Ref gate(PyDescr_NewMethod(&PyCode_Type, &kCodeReplace));
  if (!gate || PyDict_SetItemString(dict.get(), "replace", gate.get()) < 0) return false;
  PyType_Modified(&PyCode_Type);
  return true;
}

bool caller_is_user() {
  PyFrameObject* frame = PyEval_GetFrame();  // borrowed
  if (!frame) return false;                  // called from C with no Python frame: the engine itself
  // By identity, never by name: co_filename is whatever compile() was given.
  py::Ref code(reinterpret_cast<PyObject*>(PyFrame_GetCode(frame)));
  return !trust::is_trusted(code.get());
}

}  // namespace spr::embed::audit
