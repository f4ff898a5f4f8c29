// RAII and conversion helpers for CPython objects.
#include "py.hpp"

#if PY_VERSION_HEX < 0x030A0000
namespace {
// gc.isenabled, gc.disable and gc.enable as C functions (METH_NOARGS; each acts on the current interpreter's
// collector and ignores its module argument), so a sub-interpreter uses them too.
PyCFunction g_gc_isenabled = nullptr;
PyCFunction g_gc_disable = nullptr;
PyCFunction g_gc_enable = nullptr;

// Calls one of them; true when it answered True. A missing one (init_compat not run) does nothing.
bool gc_call(PyCFunction f) {
  if (!f) return false;
  spr::embed::py::Ref out(f(nullptr, nullptr));
  if (!out) {
    PyErr_Clear();
    return false;
  }
  return out.get() == Py_True;
}

// Swaps the collector to `on`; returns whether it was on before, as 3.10's PyGC_Enable/PyGC_Disable do.
int gc_set(bool on) {
  const bool was = gc_call(g_gc_isenabled);
  gc_call(on ? g_gc_enable : g_gc_disable);
  return was ? 1 : 0;
}
}  // namespace

int PyGC_Disable() { return gc_set(false); }
int PyGC_Enable() { return gc_set(true); }
#endif

namespace spr::embed::py {

bool init_compat() {
#if PY_VERSION_HEX < 0x030A0000
  if (g_gc_isenabled) return true;
  Ref gc(PyImport_ImportModule("gc"));
  if (!gc) return false;
  struct Want {
    const char* name;
    PyCFunction* into;
  };
  for (const Want& w : {Want{"isenabled", &g_gc_isenabled}, Want{"disable", &g_gc_disable}, Want{"enable", &g_gc_enable}}) {
    Ref fn(PyObject_GetAttrString(gc.get(), w.name));
    if (!fn) return false;
    if (!PyCFunction_Check(fn.get()) || !(PyCFunction_GetFlags(fn.get()) & METH_NOARGS)) {
      PyErr_Format(PyExc_SystemError, "gc.%s is not a built-in function without arguments", w.name);
      return false;
    }
    *w.into = PyCFunction_GetFunction(fn.get());
  }
#endif
  return true;
}

std::string utf8(PyObject* unicode) {
  Py_ssize_t n = 0;
  if (const char* s = PyUnicode_AsUTF8AndSize(unicode, &n)) return std::string(s, static_cast<size_t>(n));
  PyErr_Clear();  // lone surrogates: keep them visible as \udXXX instead of failing
  Ref b(PyUnicode_AsEncodedString(unicode, "utf-8", "backslashreplace"));
  if (!b) {
    PyErr_Clear();
    return {};
  }
  return std::string(PyBytes_AS_STRING(b.get()), static_cast<size_t>(PyBytes_GET_SIZE(b.get())));
}

std::string str(PyObject* obj) {
  if (!obj) return "<NULL>";
  Ref s(PyObject_Str(obj));
  if (!s) {
    PyErr_Clear();
    return "<unprintable " + std::string(Py_TYPE(obj)->tp_name) + " object>";
  }
  return utf8(s.get());
}

}  // namespace spr::embed::py
