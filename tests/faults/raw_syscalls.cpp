// Test-only built-in module _spr_raw (spr-worker-faulty): a run makes raw system calls, as a run that owns its
// process's memory could, so that tests judge the OS layers with the Python layers out of the way.
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace {

// Names a test may call; a table, not a free number, so a typo fails loudly instead of calling something else.
struct Call { const char* name; long nr; };
constexpr Call kCalls[] = {
    {"chmod", SYS_chmod}, {"fchmod", SYS_fchmod}, {"fchmodat", SYS_fchmodat}, {"chown", SYS_chown},
    {"fchown", SYS_fchown}, {"fchownat", SYS_fchownat}, {"utime", SYS_utime}, {"utimes", SYS_utimes},
    {"utimensat", SYS_utimensat}, {"futimesat", SYS_futimesat}, {"setxattr", SYS_setxattr},
    {"lsetxattr", SYS_lsetxattr}, {"fsetxattr", SYS_fsetxattr}, {"removexattr", SYS_removexattr},
    {"inotify_init1", SYS_inotify_init1}, {"inotify_add_watch", SYS_inotify_add_watch},
    {"fanotify_init", SYS_fanotify_init}, {"fanotify_mark", SYS_fanotify_mark}, {"socket", SYS_socket},
    {"connect", SYS_connect}, {"ptrace", SYS_ptrace}, {"process_vm_readv", SYS_process_vm_readv},
    {"process_vm_writev", SYS_process_vm_writev}, {"mmap", SYS_mmap}, {"munmap", SYS_munmap},
    {"userfaultfd", SYS_userfaultfd}, {"io_uring_setup", SYS_io_uring_setup}, {"bpf", SYS_bpf},
    {"mount", SYS_mount}, {"setns", SYS_setns}, {"unshare", SYS_unshare}, {"ioctl", SYS_ioctl},
    {"fcntl", SYS_fcntl}, {"prctl", SYS_prctl}, {"openat", SYS_openat}, {"open", SYS_open},
    {"pipe2", SYS_pipe2}, {"read", SYS_read}, {"write", SYS_write}, {"close", SYS_close},
    {"getpid", SYS_getpid}, {"kill", SYS_kill}, {"flock", SYS_flock}, {"socketpair", SYS_socketpair},
    {"sendto", SYS_sendto}, {"ftruncate", SYS_ftruncate}, {"pwrite64", SYS_pwrite64},
    {"exit_group", SYS_exit_group},
};

// A Python value as a syscall argument: int as is, None as 0, str as a NUL-terminated UTF-8 pointer and bytes or
// bytearray as a pointer to their buffer (kept alive by the argument tuple for the call's duration).
bool argument(PyObject* v, long& out) {
  if (v == Py_None) {
    out = 0;
  } else if (PyLong_Check(v)) {
    out = static_cast<long>(PyLong_AsUnsignedLongMask(v));
  } else if (PyUnicode_Check(v)) {
    const char* s = PyUnicode_AsUTF8(v);
    if (s == nullptr) return false;
    out = reinterpret_cast<long>(s);
  } else if (PyBytes_Check(v)) {
    out = reinterpret_cast<long>(PyBytes_AS_STRING(v));
  } else if (PyByteArray_Check(v)) {
    out = reinterpret_cast<long>(PyByteArray_AS_STRING(v));
  } else {
    PyErr_SetString(PyExc_TypeError, "_spr_raw.call: arguments are int, None, str, bytes or bytearray");
    return false;
  }
  return !PyErr_Occurred();
}

// call(name, *args) -> (result, errno): the raw system call, no audit event, no Python-level check.
PyObject* call(PyObject*, PyObject* args) {
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  if (n < 1 || n > 7 || !PyUnicode_Check(PyTuple_GET_ITEM(args, 0))) {
    PyErr_SetString(PyExc_TypeError, "_spr_raw.call(name, *up_to_six_args)");
    return nullptr;
  }
  const char* name = PyUnicode_AsUTF8(PyTuple_GET_ITEM(args, 0));
  long nr = -1;
  for (const Call& c : kCalls)
    if (name != nullptr && std::strcmp(c.name, name) == 0) nr = c.nr;
  if (nr < 0) {
    PyErr_Format(PyExc_ValueError, "_spr_raw.call: unknown system call '%s'", name ? name : "?");
    return nullptr;
  }
  long a[6] = {};
  for (Py_ssize_t i = 1; i < n; ++i)
    if (!argument(PyTuple_GET_ITEM(args, i), a[i - 1])) return nullptr;
  errno = 0;
  const long rc = ::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]);
  const int err = rc < 0 ? errno : 0;
  return Py_BuildValue("(li)", rc, err);
}

// address(buffer) -> int: where a bytearray's bytes are, to build structs that point at it (iovec, sockaddr).
PyObject* address(PyObject*, PyObject* arg) {
  if (!PyByteArray_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "_spr_raw.address(bytearray)");
    return nullptr;
  }
  return PyLong_FromVoidPtr(PyByteArray_AS_STRING(arg));
}

PyMethodDef kMethods[] = {
    {"call", call, METH_VARARGS, "call(name, *args) -> (result, errno)"},
    {"address", address, METH_O, "address(bytearray) -> int"},
    {nullptr, nullptr, 0, nullptr},
};

// Multi-phase initialisation: importable in sub-interpreters too (subinterpreter mode), with their own GIL on 3.12+.
PyModuleDef_Slot kSlots[] = {
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, nullptr},
};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_spr_raw", "Raw system calls (test worker only).", 0, kMethods,
                       kSlots, nullptr, nullptr, nullptr};

PyObject* init_module() { return PyModuleDef_Init(&kModule); }

}  // namespace

// Called by spr-worker-faulty before the interpreter starts.
void spr_register_raw_syscalls() { PyImport_AppendInittab("_spr_raw", &init_module); }
