// Small RAII helpers around CPython references and the error indicator.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string>
#include <utility>

namespace spr::embed::py {

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
