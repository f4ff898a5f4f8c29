// RAII and conversion helpers for CPython objects.
#include "py.hpp"

namespace spr::embed::py {

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
