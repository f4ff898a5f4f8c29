// Small RAII helpers around CPython references and the error indicator.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string>
#include <utility>

// CPython 3.9 lacks four calls the engine uses, all added in 3.10. These are their 3.9 equivalents, with
// CPython's names so that every call site reads the same on each version; on 3.10+ this block is empty.
#if PY_VERSION_HEX < 0x030A0000
// A new strong reference to `o` (never NULL), returned for chaining.
inline PyObject* Py_NewRef(PyObject* o) {
  Py_INCREF(o);
  return o;
}
// Adds `value` to `module` under `name` without stealing the caller's reference (3.9's
// PyModule_AddObject steals it only on success).
inline int PyModule_AddObjectRef(PyObject* module, const char* name, PyObject* value) {
  if (!value) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "PyModule_AddObjectRef: value is NULL");
    return -1;
  }
  Py_INCREF(value);
  if (PyModule_AddObject(module, name, value) < 0) {
    Py_DECREF(value);
    return -1;
  }
  return 0;
}
// Turn the current interpreter's cyclic collector off / on; each returns whether it was on before.
// 3.9 has no C call for this: py.cpp calls gc's own C functions, taken once by py::init_compat() before any
// run's code exists (a run may rebind gc.disable, never the C function behind it).
int PyGC_Disable();
int PyGC_Enable();
#endif

namespace spr::embed::py {

// Takes what the compatibility calls above need from the runtime (3.9: gc's C functions). Called once,
// right after Py_Initialize and before any code of a run; false (with a Python error) if they are missing.
bool init_compat();

// Owns one strong reference. Move-only; never crosses interpreters.
class Ref {
 public:
  Ref() = default;
  explicit Ref(PyObject* owned) noexcept : p_(owned) {}
  static Ref borrow(PyObject* p) noexcept {
    Py_XINCREF(p);
    return Ref(p);
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
  Ref& operator=(Ref&& o) noexcept {
    if (this != &o) {
      Py_XDECREF(p_);
      p_ = std::exchange(o.p_, nullptr);
    }
    return *this;
  }
  ~Ref() { Py_XDECREF(p_); }
  PyObject* get() const noexcept { return p_; }
  PyObject* release() noexcept { return std::exchange(p_, nullptr); }
  explicit operator bool() const noexcept { return p_ != nullptr; }
  void reset() noexcept { Py_CLEAR(p_); }

 private:
  PyObject* p_ = nullptr;
};

// Takes the pending exception out of the error indicator for the scope's lifetime;
// restores nothing (the caller decides what to do with it).
struct FetchedError {
  Ref type, value, traceback;
  static FetchedError fetch() {
    PyObject *t = nullptr, *v = nullptr, *tb = nullptr;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v && tb) PyException_SetTraceback(v, tb);
    return FetchedError{Ref(t), Ref(v), Ref(tb)};
  }
  explicit operator bool() const noexcept { return static_cast<bool>(type); }
};

// str(obj) as UTF-8, never failing: unprintable objects and errors give a placeholder.
std::string str(PyObject* obj);
// UTF-8 of a str object with lone surrogates escaped; "" on failure (error cleared).
std::string utf8(PyObject* unicode);

}  // namespace spr::embed::py
