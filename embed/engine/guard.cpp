// The `_spr` module: guarded __import__, the run's import policy, the restricted `sys` view.
#include "guard.hpp"

#include <limits.h>
#include <stdlib.h>

#include <algorithm>
#include <string_view>
#include <utility>

#include "audit.hpp"
#include "trust.hpp"
#include "capture.hpp"
#include "host_call.hpp"
#include "interp_state.hpp"
#include "run_local.hpp"

namespace spr::embed::guard {

namespace {

std::string root_of(const std::string& name) { return name.substr(0, name.find('.')); }

struct ImportPolicy {
  Mode mode = Mode::restrict;
  std::vector<std::string> blocked;  // module roots (and dotted prefixes), aliases included
  std::vector<std::string> allowed;  // allow mode: roots, dotted prefixes, or "pkg.*"
};

// Importing one of these hands out the same power under another name.
const std::vector<std::pair<std::string, std::vector<std::string>>> kAliases = {
    {"os", {"posix", "nt", "posixpath", "_os"}},
    {"subprocess", {"_posixsubprocess", "_subprocess"}},
    {"socket", {"_socket"}},
    // cffi's backend reaches raw memory and native calls as ctypes does, without one audit event.
    {"ctypes", {"_ctypes", "_cffi_backend", "cffi"}},
    {"importlib", {"_imp", "_frozen_importlib", "_frozen_importlib_external"}},
    {"io", {"_io"}},
    {"signal", {"_signal"}},
    {"threading", {"_thread"}},
    {"pickle", {"_pickle"}},
    {"shutil", {"_shutil"}},
};
// Never importable by user code, whatever the policy says: the engine's own module, the import
// machinery, and CPython's test and interpreter-internal modules (raw memory, allocator failure
// injection, new interpreters).
const std::vector<std::string> kAlwaysBlocked = {
    "_spr", "importlib", "_imp", "_frozen_importlib", "_frozen_importlib_external",
    "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic", "_testimportmultiple",
    "_testmultiphase", "_testsinglephase", "_testlimitedcapi", "_testexternalinspection", "_ctypes_test",
    "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "_interpreters", "_interpchannels",
    "_interpqueues", "xxlimited", "xxlimited_35", "xxsubtype", "_xxlimited"};

// Never loaded in a worker, by anyone, armed or not (so not reachable through any module's
// attributes either): ctypes' Union and pointer types read and write any address without one audit
// event, and cffi's backend does the same.
const std::vector<std::string> kNeverLoaded = {"ctypes", "_ctypes", "cffi", "_cffi_backend"};
// Extension modules (by the name their init function carries) never loaded either: the above, and
// CPython's test and interpreter-internal modules; `_imp` because a second one would come without
// this file's gates.
const std::vector<std::string> kNeverLoadedExtensions = {
    "_ctypes", "_cffi_backend", "_imp", "_testcapi", "_testinternalcapi", "_testbuffer", "_testclinic",
    "_testimportmultiple", "_testmultiphase", "_testsinglephase", "_testlimitedcapi", "_testexternalinspection",
    "_ctypes_test", "_xxsubinterpreters", "_xxinterpchannels", "_xxtestfuzz", "_interpreters", "_interpchannels",
    "_interpqueues", "xxlimited", "xxlimited_35", "xxsubtype", "_xxlimited"};
// Runtime modules that import ctypes unconditionally yet use it only on other systems (pandas'
// WinError, its interchange protocol's raw buffers): they get an inert stand-in. Everyone else gets
// the ImportError, which numpy (core._internal, ctypeslib) expects when ctypes is missing.
const std::vector<std::string> kCtypesStandInFor = {"pandas.errors", "pandas.core.interchange.from_dataframe"};

std::string never_loaded_message(const std::string& name) {
  return "Import '" + name + "' is refused: " + root_of(name) +
         " reaches raw memory and native code, which no run may use";
}

// The run's policy, which the threads it starts follow too; each own-GIL run thread has its own run's.
struct RunImports {
  ImportPolicy policy;
  bool blocked_raised = false;
};
RunLocal<RunImports> g_imports;
// Depth of imports the standard library (or an installed package) started itself: asyncio loading
// socket, pathlib loading os. The policy is the snippet's; inside such an import the meta-path finder
// and the "import" audit rule let the module load, and the audit hook and the OS bound what it does.
thread_local int t_runtime_import_depth = 0;

struct RuntimeImport {
  RuntimeImport() { ++t_runtime_import_depth; }
  ~RuntimeImport() { --t_runtime_import_depth; }
  RuntimeImport(const RuntimeImport&) = delete;
  RuntimeImport& operator=(const RuntimeImport&) = delete;
};

bool matches(const std::string& name, const std::string& entry) {
  if (entry.size() > 2 && entry.compare(entry.size() - 2, 2, ".*") == 0) {
    const std::string base = entry.substr(0, entry.size() - 2);
    // "pkg.*" allows pkg, its submodules, and the parent packages needed to reach it.
    return name == base || name.rfind(base + ".", 0) == 0 || base.rfind(name + ".", 0) == 0;
  }
  if (entry.find('.') != std::string::npos)
    return name == entry || name.rfind(entry + ".", 0) == 0 || entry.rfind(name + ".", 0) == 0;
  return root_of(name) == entry;
}

bool any_match(const std::string& name, const std::vector<std::string>& entries) {
  return std::any_of(entries.begin(), entries.end(), [&](const std::string& e) { return matches(name, e); });
}

std::string blocked_message(const std::string& name) { return "Import '" + name + "' is blocked by policy"; }

PyObject* raise_blocked(const std::string& msg, PyObject* name) {
  g_imports().blocked_raised = true;
  py::Ref m(PyUnicode_FromString(msg.c_str()));
  if (!m) return nullptr;
  PyErr_SetImportError(m.get(), name, nullptr);
  return nullptr;
}

PyObject* sys_proxy() {
  InterpState& st = state();
  if (st.sys_proxy) return Py_NewRef(st.sys_proxy);
  if (!st.make_sys_proxy) {
    PyErr_SetString(PyExc_ImportError, "sys is not available");
    return nullptr;
  }
  st.sys_proxy = PyObject_CallNoArgs(st.make_sys_proxy);
  return st.sys_proxy ? Py_NewRef(st.sys_proxy) : nullptr;
}

// What importlib would resolve a relative import to; the package's own name when it cannot.
std::string absolute_name(const std::string& name, PyObject* globals, int level) {
  std::string package;
  if (globals && PyDict_Check(globals)) {
    PyObject* pkg = PyDict_GetItemString(globals, "__package__");
    if (pkg && PyUnicode_Check(pkg)) {
      package = py::utf8(pkg);
    } else if (PyObject* mod = PyDict_GetItemString(globals, "__name__"); mod && PyUnicode_Check(mod)) {
      package = py::utf8(mod);
      if (!PyDict_GetItemString(globals, "__path__")) {
        const std::size_t dot = package.rfind('.');
        package.resize(dot == std::string::npos ? 0 : dot);
      }
    }
  }
  for (int i = 1; i < level && !package.empty(); ++i) {
    auto dot = package.rfind('.');
    package = dot == std::string::npos ? std::string() : package.substr(0, dot);
  }
  if (package.empty()) return name;  // importlib raises its own error for this
  return name.empty() ? package : package + "." + name;
}

bool is_never_loaded(const std::string& name) {
  return std::find(kNeverLoaded.begin(), kNeverLoaded.end(), root_of(name)) != kNeverLoaded.end();
}

PyObject* ctypes_stand_in_getattr(PyObject*, PyObject* attr) {
  PyErr_Format(PyExc_AttributeError, "ctypes is not available in the sandbox (no ctypes.%S): it reaches raw memory",
               attr);
  return nullptr;
}

PyMethodDef kStandInGetattr = {"__getattr__", ctypes_stand_in_getattr, METH_O, nullptr};

// A module named ctypes with nothing in it: every attribute is an AttributeError naming why.
PyObject* ctypes_stand_in() {
  py::Ref m(PyModule_New("ctypes"));
  py::Ref fn(m ? PyCFunction_New(&kStandInGetattr, nullptr) : nullptr);
  if (!fn || PyObject_SetAttrString(m.get(), "__getattr__", fn.get()) < 0) return nullptr;
  return m.release();
}

// Package functions that hand out raw memory get the bootstrap's checked versions, once per
// interpreter, as soon as their module is loaded (numpy's as_strided).
void patch_loaded_packages() {
  InterpState& st = state();
  if (st.packages_patched || !st.bootstrap) return;
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  if (!modules || !PyDict_GetItemString(modules, "numpy.lib.stride_tricks")) return;
  // Armed if the run is: the bootstrap's code reads the package's attributes, which a run may have set.
  py::Ref r(PyObject_CallMethod(st.bootstrap, "patch_numpy", nullptr));
  if (!r) PyErr_Clear();
  st.packages_patched = r.get() == Py_True;
}

// __import__(name, globals=None, locals=None, fromlist=(), level=0)
PyObject* guarded_import(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* kw[] = {"name", "globals", "locals", "fromlist", "level", nullptr};
  PyObject *name = nullptr, *globals = nullptr, *locals = nullptr, *fromlist = nullptr;
  int level = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "U|OOOi:__import__", const_cast<char**>(kw), &name, &globals,
                                   &locals, &fromlist, &level))
    return nullptr;
  if (level == 0) {
    const std::string n = py::utf8(name);
    if (is_never_loaded(n)) {
      if (n == "ctypes" && globals && PyDict_Check(globals)) {
        PyObject* importer = PyDict_GetItemString(globals, "__name__");  // borrowed
        if (importer && PyUnicode_Check(importer) &&
            std::find(kCtypesStandInFor.begin(), kCtypesStandInFor.end(), py::utf8(importer)) != kCtypesStandInFor.end())
          return ctypes_stand_in();
      }
      return raise_blocked(never_loaded_message(n), name);
    }
  }
  if (!trust::armed()) {
    py::Ref m(PyObject_Call(state().original_import, args, kwargs));
    if (m) patch_loaded_packages();
    return m.release();
  }
  if (!audit::caller_is_user()) {
    RuntimeImport scope;
    py::Ref m(PyObject_Call(state().original_import, args, kwargs));
    if (m) patch_loaded_packages();
    return m.release();
  }
  {
    std::string n = py::utf8(name);
    // A relative import names its package through the globals it is given, which user code chooses:
    // `__import__('', {'__package__': 'posix'}, None, (), 1)` must be checked as `posix`.
    if (level > 0) n = absolute_name(n, globals, level);
    std::string msg = check(n);
    if (!msg.empty()) return raise_blocked(msg, name);
    if (level == 0 && n == "sys") return sys_proxy();
  }
  py::Ref m(PyObject_Call(state().original_import, args, kwargs));
  if (m) patch_loaded_packages();
  return m.release();
}

// The bootstrap's meta-path finder asks here: None when allowed, else the message.
PyObject* import_denied(PyObject*, PyObject* arg) {
  if (PyUnicode_Check(arg) && is_never_loaded(py::utf8(arg))) {
    g_imports().blocked_raised = true;
    return PyUnicode_FromString(never_loaded_message(py::utf8(arg)).c_str());
  }
  if (!trust::armed() || !PyUnicode_Check(arg) || t_runtime_import_depth > 0) Py_RETURN_NONE;
  std::string msg = check(py::utf8(arg));
  if (msg.empty()) Py_RETURN_NONE;
  g_imports().blocked_raised = true;
  return PyUnicode_FromString(msg.c_str());
}

PyObject* set_sys_proxy_factory(PyObject*, PyObject* f) {
  if (trust::armed()) {
    PyErr_SetString(PyExc_PermissionError, "not available");
    return nullptr;
  }
  Py_XSETREF(state().make_sys_proxy, Py_NewRef(f));
  Py_RETURN_NONE;
}

PyObject* stream(PyObject*, PyObject* arg) {
  long i = PyLong_AsLong(arg);
  if (i == -1 && PyErr_Occurred()) return nullptr;
  return capture::make_stream(i == 0 ? 0 : 1);
}

// --- compiled modules: _imp.create_dynamic and _imp.create_builtin behind a gate -------------

bool main_interpreter() { return PyInterpreterState_Get() == PyInterpreterState_Main(); }

// The standard library's compiled modules: the sys.path entries named lib-dynload.
bool in_stdlib_dynload(const std::string& path) {
  for (const auto& root : trust::runtime_roots()) {
    static constexpr std::string_view kDynload = "/lib-dynload";
    if (root.size() >= kDynload.size() && root.compare(root.size() - kDynload.size(), kDynload.size(), kDynload) == 0 &&
        trust::path_under(path, {root}))
      return true;
  }
  return false;
}

PyObject* refuse_extension(const std::string& msg, PyObject* name, PyObject* path) {
  py::Ref m(PyUnicode_FromString(msg.c_str()));
  if (m) PyErr_SetImportError(m.get(), name, path);
  return nullptr;
}

// spec.<attr> read once, as an exact str: a spec's attributes are a run's objects, and a property
// could answer the check one name and the loader another.
py::Ref spec_str(PyObject* spec, const char* attr) {
  py::Ref v(PyObject_GetAttrString(spec, attr));
  if (!v) return v;
  if (!PyUnicode_Check(v.get())) {
    PyErr_Format(PyExc_ImportError, "module spec %s is not a str", attr);
    return py::Ref();
  }
  return py::Ref(PyUnicode_FromString(py::utf8(v.get()).c_str()));
}

// A spec of our own carrying only what was checked, for the original function.
py::Ref fresh_spec(PyObject* name, PyObject* origin) {
  PyObject* cls = state().module_spec;  // borrowed; taken before arming (no import, no guard)
  py::Ref args(cls ? PyTuple_Pack(2, name, Py_None) : nullptr);
  py::Ref kw(args ? PyDict_New() : nullptr);
  if (!kw || (origin && PyDict_SetItemString(kw.get(), "origin", origin) < 0)) return py::Ref();
  return py::Ref(PyObject_Call(cls, args.get(), kw.get()));
}

// create_dynamic(spec, file=None): loads a shared library and runs its init function, so only the
// runtime's own libraries (never one a run wrote), under the name their file carries (dlsym would
// otherwise find PyInit_<any name> in libpython), never one of kNeverLoadedExtensions, and in a
// sub-interpreter only the standard library's.
PyObject* gated_create_dynamic(PyObject*, PyObject* args) {
  PyObject *spec = nullptr, *file = nullptr;
  if (!PyArg_ParseTuple(args, "O|O:create_dynamic", &spec, &file)) return nullptr;
  py::Ref name_obj(spec_str(spec, "name"));
  py::Ref origin_obj(name_obj ? spec_str(spec, "origin") : py::Ref());
  if (!origin_obj) return nullptr;
  const std::string name = py::utf8(name_obj.get());
  const std::string origin = py::utf8(origin_obj.get());
  const std::string last = name.substr(name.rfind('.') + 1);
  if (std::find(kNeverLoadedExtensions.begin(), kNeverLoadedExtensions.end(), last) != kNeverLoadedExtensions.end())
    return refuse_extension("compiled module '" + name + "' is never loaded in the sandbox", name_obj.get(),
                            origin_obj.get());
  const std::string file_name = origin.substr(origin.rfind('/') + 1);
  if (file_name.substr(0, file_name.find('.')) != last)
    return refuse_extension("compiled module '" + name + "' does not match its file " + origin, name_obj.get(),
                            origin_obj.get());
  std::string resolved;
  if (!trust::real_path(origin, resolved) || !trust::path_under(resolved, trust::runtime_roots()))
    return refuse_extension("compiled module '" + name + "' is outside the Python runtime's directories (" + origin +
                                "): only installed extension modules are loaded",
                            name_obj.get(), origin_obj.get());
  if (!main_interpreter() && !in_stdlib_dynload(resolved))
    return refuse_extension("cannot import '" + name + "' in isolation mode 'subinterpreter': compiled packages (" +
                                root_of(name) +
                                ") keep process-wide state that sub-interpreters cannot share; use isolation mode "
                                "'fork' or 'namespace'",
                            name_obj.get(), origin_obj.get());
  py::Ref path(PyUnicode_DecodeFSDefault(resolved.c_str()));
  py::Ref own(path ? fresh_spec(name_obj.get(), path.get()) : py::Ref());
  if (!own || !state().create_dynamic) return nullptr;
  return file ? PyObject_CallFunctionObjArgs(state().create_dynamic, own.get(), file, nullptr)
              : PyObject_CallFunctionObjArgs(state().create_dynamic, own.get(), nullptr);
}

// create_builtin(spec): a built-in module by name; a second `_imp` would come without these gates.
PyObject* gated_create_builtin(PyObject*, PyObject* spec) {
  py::Ref name_obj(spec_str(spec, "name"));
  if (!name_obj) return nullptr;
  const std::string name = py::utf8(name_obj.get());
  if (std::find(kNeverLoadedExtensions.begin(), kNeverLoadedExtensions.end(), name) != kNeverLoadedExtensions.end())
    return refuse_extension("built-in module '" + name + "' is never loaded again in the sandbox", name_obj.get(),
                            nullptr);
  py::Ref own(fresh_spec(name_obj.get(), nullptr));
  if (!own || !state().create_builtin) return nullptr;
  return PyObject_CallOneArg(state().create_builtin, own.get());
}

PyMethodDef kCreateDynamic = {"create_dynamic", gated_create_dynamic, METH_VARARGS,
                              "Load an extension module from the Python runtime's directories."};
PyMethodDef kCreateBuiltin = {"create_builtin", gated_create_builtin, METH_O, "Create a built-in module."};

PyMethodDef kMethods[] = {
    {"__import__", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(guarded_import)),
     METH_VARARGS | METH_KEYWORDS, "Import a module, subject to the run's import policy."},
    {"import_denied", import_denied, METH_O, nullptr},
    {"set_sys_proxy_factory", set_sys_proxy_factory, METH_O, nullptr},
    {"stream", stream, METH_O, nullptr},
    {nullptr, nullptr, 0, nullptr}};

int exec_module(PyObject* m) { return capture::add_type(m); }

// Multi-phase initialisation: every (sub-)interpreter gets its own module and Stream type.
PyModuleDef_Slot kSlots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(exec_module)},
#if PY_VERSION_HEX >= 0x030C0000
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_spr", "safe-py-runner internals.", 0, kMethods,
                       kSlots, nullptr, nullptr, nullptr};

PyObject* init_module() { return PyModuleDef_Init(&kModule); }

std::string audit_import_check(const std::string& module) {
  if (t_runtime_import_depth > 0) return {};
  std::string msg = check(module);
  if (!msg.empty()) g_imports().blocked_raised = true;
  return msg;
}

}  // namespace

void register_module() {
  PyImport_AppendInittab("_spr", init_module);
  audit::set_import_check(audit_import_check);
}

void set_policy(const RunnerPolicy& p) {
  ImportPolicy ip;
  ip.mode = p.mode;
  if (p.mode == Mode::restrict) {
    // In allow mode only the allowed lists decide, as in the original: blocked_imports is ignored.
    ip.blocked = p.blocked_imports;
    for (const auto& [name, aliases] : kAliases)
      if (std::find(p.blocked_imports.begin(), p.blocked_imports.end(), name) != p.blocked_imports.end())
        ip.blocked.insert(ip.blocked.end(), aliases.begin(), aliases.end());
    // `import builtins` would hand back every builtin the policy removed.
    if (!p.blocked_builtins.empty()) ip.blocked.push_back("builtins");
  }
  ip.allowed = p.allowed_imports;
  g_imports().policy = std::move(ip);
}

std::string check(const std::string& name) {
  for (const auto& b : kAlwaysBlocked)
    if (matches(name, b)) return blocked_message(name);
  if (g_imports().policy.mode == Mode::allow) {
    // `builtins` would hand back every builtin allowed_builtins left out, whatever the list says.
    // `host` is the engine's module of the run's host functions, never a file (host_call.cpp).
    if (name == "sys" || (name == "host" && host_call::active()) || (root_of(name) != "builtins" && any_match(name, g_imports().policy.allowed))) return {};
    return "Import '" + name + "' is not allowed by policy";
  }
  if (any_match(name, g_imports().policy.blocked)) return blocked_message(name);
  return {};
}

bool blocked_import_raised() { return g_imports().blocked_raised; }

void reset_run_state() {
  g_imports().blocked_raised = false;
  Py_CLEAR(state().sys_proxy);
}

bool install_import_hook() {
  py::Ref builtins(PyImport_ImportModule("builtins"));
  py::Ref spr(PyImport_ImportModule("_spr"));
  if (!builtins || !spr) return false;
  InterpState& st = state();
  st.original_import = PyObject_GetAttrString(builtins.get(), "__import__");
  py::Ref guarded(PyObject_GetAttrString(spr.get(), "__import__"));
  if (!st.original_import || !guarded) return false;
  if (PyObject_SetAttrString(builtins.get(), "__import__", guarded.get()) != 0) return false;
  // The loaders call _imp's functions through the module's attributes: the gates replace them there.
  py::Ref imp(PyImport_ImportModule("_imp"));
  py::Ref boot(imp ? PyImport_ImportModule("_frozen_importlib") : nullptr);
  if (!boot) return false;
  st.module_spec = PyObject_GetAttrString(boot.get(), "ModuleSpec");
  if (!st.module_spec) return false;
  st.create_dynamic = PyObject_GetAttrString(imp.get(), "create_dynamic");
  st.create_builtin = PyObject_GetAttrString(imp.get(), "create_builtin");
  py::Ref dyn(st.create_dynamic ? PyCFunction_New(&kCreateDynamic, nullptr) : nullptr);
  py::Ref bi(st.create_builtin && dyn ? PyCFunction_New(&kCreateBuiltin, nullptr) : nullptr);
  return bi && PyObject_SetAttrString(imp.get(), "create_dynamic", dyn.get()) == 0 &&
         PyObject_SetAttrString(imp.get(), "create_builtin", bi.get()) == 0;
}

PyObject* make_run_builtins(const RunnerPolicy& p) {
  PyObject* real = PyEval_GetBuiltins();  // borrowed: the interpreter's builtins dict
  py::Ref out(PyDict_New());
  if (!out) return nullptr;
  // The language itself needs these even in allow mode with an empty allow list.
  static const char* kEssential[] = {"__import__", "__build_class__", "__name__", "__doc__", "__spec__",
                                     "__loader__", "__package__"};
  if (p.mode == Mode::allow) {
    // Only allowed_builtins decide (blocked_builtins is ignored in allow mode, as in the original).
    for (const char* k : kEssential)
      if (PyObject* v = PyDict_GetItemString(real, k)) PyDict_SetItemString(out.get(), k, v);
    for (const auto& name : p.allowed_builtins)
      if (PyObject* v = PyDict_GetItemString(real, name.c_str())) PyDict_SetItemString(out.get(), name.c_str(), v);
    return out.release();
  }
  if (PyDict_Update(out.get(), real) < 0) return nullptr;
  for (const auto& name : p.blocked_builtins) {
    if (PyDict_DelItemString(out.get(), name.c_str()) < 0) PyErr_Clear();
  }
  return out.release();
}

}  // namespace spr::embed::guard
