// JSON <-> Python conversion for input_data, extra_globals and the `result` variable.
#include "codec.hpp"

#include "interp_state.hpp"

#include <algorithm>
#include <utility>
#include <vector>

#include <cmath>

namespace spr::embed::codec {

using nlohmann::json;

// The C scanner of `_json`, configured as json.JSONDecoder() configures it (strict, int and float, NaN and
// the infinities through parse_constant, no hooks), without importing the json package: it imports re,
// which a fork worker's start would otherwise pay for before its first run.
bool make_json_scanner() {
  py::Ref c_json(PyImport_ImportModule("_json"));
  py::Ref make(c_json ? PyObject_GetAttrString(c_json.get(), "make_scanner") : nullptr);
  py::Ref types(make ? PyImport_ImportModule("types") : nullptr);
  py::Ref ns_type(types ? PyObject_GetAttrString(types.get(), "SimpleNamespace") : nullptr);
  py::Ref constants(ns_type ? PyDict_New() : nullptr);
  bool ok = static_cast<bool>(constants);
  for (const auto& [name, value] : {std::pair{"NaN", NAN}, {"Infinity", INFINITY}, {"-Infinity", -INFINITY}}) {
    py::Ref v(ok ? PyFloat_FromDouble(value) : nullptr);
    ok = v && PyDict_SetItemString(constants.get(), name, v.get()) == 0;
  }
  py::Ref lookup(ok ? PyObject_GetAttrString(constants.get(), "__getitem__") : nullptr);
  py::Ref kwargs(lookup ? PyDict_New() : nullptr);
  ok = kwargs && PyDict_SetItemString(kwargs.get(), "strict", Py_True) == 0 &&
       PyDict_SetItemString(kwargs.get(), "object_hook", Py_None) == 0 &&
       PyDict_SetItemString(kwargs.get(), "object_pairs_hook", Py_None) == 0 &&
       PyDict_SetItemString(kwargs.get(), "parse_float", reinterpret_cast<PyObject*>(&PyFloat_Type)) == 0 &&
       PyDict_SetItemString(kwargs.get(), "parse_int", reinterpret_cast<PyObject*>(&PyLong_Type)) == 0 &&
       PyDict_SetItemString(kwargs.get(), "parse_constant", lookup.get()) == 0;
  py::Ref empty(ok ? PyTuple_New(0) : nullptr);
  py::Ref context(empty ? PyObject_Call(ns_type.get(), empty.get(), kwargs.get()) : nullptr);
  py::Ref scanner(context ? PyObject_CallOneArg(make.get(), context.get()) : nullptr);
  if (!scanner) {
    PyErr_Clear();  // no C scanner here: from_json_text takes the slower way
    return false;
  }
  Py_XDECREF(state().json_scanner);
  state().json_scanner = scanner.release();
  return true;
}

PyObject* from_json_text(std::string_view text) {
  PyObject* scanner = state().json_scanner;
  if (!scanner) {
    json tree = json::parse(text.begin(), text.end(), nullptr, false);
    if (tree.is_discarded()) {
      PyErr_SetString(PyExc_ValueError, "input_data is not JSON");
      return nullptr;
    }
    return to_python(tree);
  }
  py::Ref s(PyUnicode_DecodeUTF8(text.data(), static_cast<Py_ssize_t>(text.size()), "strict"));
  if (!s) return nullptr;
  py::Ref zero(PyLong_FromLong(0));
  if (!zero) return nullptr;
  // The collector is off while the scanner builds the value: a decode makes no garbage and no cycle, and a
  // large input (1.5 M records in 100 MB) would otherwise pay a collection every 700 containers, each older
  // generation's walk over everything decoded so far (1.6 of 3.9 s in python3's own json.loads). The
  // allocation accounting is untouched: a decode past the memory limit is still refused.
  const int gc_was_on = PyGC_Disable();
  py::Ref pair(PyObject_CallFunctionObjArgs(scanner, s.get(), zero.get(), nullptr));
  if (gc_was_on) PyGC_Enable();
  if (!pair) {
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
      PyErr_Clear();
      PyErr_SetString(PyExc_ValueError, "input_data is not JSON");
    }
    return nullptr;
  }
  if (!PyTuple_Check(pair.get()) || PyTuple_GET_SIZE(pair.get()) != 2) {
    PyErr_SetString(PyExc_ValueError, "the JSON scanner answered no (value, end) pair");
    return nullptr;
  }
  const Py_ssize_t end = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair.get(), 1));
  if (end != PyUnicode_GET_LENGTH(s.get())) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "input_data has text after its value");
    return nullptr;
  }
  PyObject* value = PyTuple_GET_ITEM(pair.get(), 0);
  Py_INCREF(value);
  return value;
}

PyObject* to_python(const json& v) {
  switch (v.type()) {
    case json::value_t::null: Py_RETURN_NONE;
    case json::value_t::boolean: return PyBool_FromLong(v.get<bool>());
    case json::value_t::number_integer: return PyLong_FromLongLong(v.get<long long>());
    case json::value_t::number_unsigned: return PyLong_FromUnsignedLongLong(v.get<unsigned long long>());
    case json::value_t::number_float: return PyFloat_FromDouble(v.get<double>());
    case json::value_t::string: {
      const auto& s = v.get_ref<const std::string&>();
      return PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "replace");
    }
    case json::value_t::array: {
      py::Ref list(PyList_New(static_cast<Py_ssize_t>(v.size())));
      if (!list) return nullptr;
      Py_ssize_t i = 0;
      for (const auto& e : v) {
        PyObject* item = to_python(e);
        if (!item) return nullptr;
        PyList_SET_ITEM(list.get(), i++, item);
      }
      return list.release();
    }
    case json::value_t::object: {
      py::Ref dict(PyDict_New());
      if (!dict) return nullptr;
      for (auto it = v.begin(); it != v.end(); ++it) {
        py::Ref key(PyUnicode_DecodeUTF8(it.key().data(), static_cast<Py_ssize_t>(it.key().size()), "replace"));
        py::Ref item(to_python(it.value()));
        if (!key || !item || PyDict_SetItem(dict.get(), key.get(), item.get()) < 0) return nullptr;
      }
      return dict.release();
    }
    default: Py_RETURN_NONE;
  }
}

namespace {

struct Encoder {
  std::uint64_t budget;
  int max_depth;
  Status status = Status::ok;
  std::vector<PyObject*> open;  // containers being encoded: meeting one again is a cycle

  bool enter(PyObject* o) {
    if (std::find(open.begin(), open.end(), o) != open.end()) {
      status = Status::cyclic;
      return false;
    }
    open.push_back(o);
    return true;
  }

  bool spend(std::uint64_t n) {
    if (n > budget) {
      status = Status::too_large;
      return false;
    }
    budget -= n;
    return true;
  }

  bool text(PyObject* s, json& out) {
    std::string u = py::utf8(s);
    if (!spend(u.size() + 2)) return false;
    out = std::move(u);
    return true;
  }

  bool fallback_str(PyObject* o, json& out) {
    py::Ref s(PyObject_Str(o));
    if (!s) {
      PyErr_Clear();
      out = std::string("<unprintable ") + Py_TYPE(o)->tp_name + " object>";
      return spend(out.get_ref<std::string&>().size() + 2);  // as text(): the quotes count
    }
    return text(s.get(), out);
  }

  bool key_text(PyObject* k, std::string& out) {
    json tmp;
    if (PyUnicode_Check(k)) {
      out = py::utf8(k);
    } else if (k == Py_None) {
      out = "null";
    } else if (PyBool_Check(k)) {
      out = k == Py_True ? "true" : "false";
    } else if (PyLong_Check(k) || PyFloat_Check(k)) {
      py::Ref r(PyObject_Repr(k));
      out = r ? py::utf8(r.get()) : "?";
      if (!r) PyErr_Clear();
    } else {
      if (!fallback_str(k, tmp)) return false;
      out = tmp.get<std::string>();
    }
    return spend(out.size() + 3);
  }

  bool encode(PyObject* o, json& out, int depth) {
    if (depth > max_depth) {
      status = Status::too_deep;
      return false;
    }
    if (o == Py_None) {
      out = nullptr;
      return spend(4);
    }
    if (PyBool_Check(o)) {
      out = (o == Py_True);
      return spend(5);
    }
    if (PyLong_Check(o)) {
      int overflow = 0;
      long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
      if (!overflow && !(v == -1 && PyErr_Occurred())) {
        out = v;
        return spend(20);
      }
      PyErr_Clear();
      if (overflow > 0) {
        unsigned long long u = PyLong_AsUnsignedLongLong(o);
        if (!PyErr_Occurred()) {
          out = u;
          return spend(20);
        }
        PyErr_Clear();
      }
      return fallback_str(o, out);  // beyond 64 bits: its decimal text
    }
    if (PyFloat_Check(o)) {
      double d = PyFloat_AS_DOUBLE(o);
      if (!std::isfinite(d)) return fallback_str(o, out);  // "nan", "inf": JSON has no spelling for them
      out = d;
      return spend(24);
    }
    if (PyUnicode_Check(o)) return text(o, out);
    if (PyList_Check(o) || PyTuple_Check(o)) {
      py::Ref seq(PySequence_Fast(o, "not a sequence"));
      if (!seq) {
        PyErr_Clear();
        return fallback_str(o, out);
      }
      out = json::array();
      const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq.get());
      if (!spend(2) || !enter(o)) return false;
      for (Py_ssize_t i = 0; i < n; ++i) {
        json item;
        if (!encode(PySequence_Fast_GET_ITEM(seq.get(), i), item, depth + 1)) return false;
        out.push_back(std::move(item));
        if (!spend(1)) return false;
      }
      open.pop_back();
      return true;
    }
    if (PyDict_Check(o)) {
      out = json::object();
      if (!spend(2) || !enter(o)) return false;
      PyObject *k, *v;
      Py_ssize_t pos = 0;
      while (PyDict_Next(o, &pos, &k, &v)) {
        py::Ref kk = py::Ref::borrow(k), vv = py::Ref::borrow(v);  // user __str__ may mutate the dict
        std::string key;
        if (!key_text(kk.get(), key)) return false;
        json item;
        if (!encode(vv.get(), item, depth + 1)) return false;
        out[key] = std::move(item);
      }
      open.pop_back();
      return true;
    }
    return fallback_str(o, out);
  }
};

}  // namespace

Encoded from_python(PyObject* obj, std::uint64_t max_bytes, int max_depth) {
  Encoder e{max_bytes, max_depth, Status::ok, {}};
  Encoded r;
  if (!e.encode(obj, r.value, 0)) {
    r.value = nullptr;
    // A failure that set no status is a budget check's (spend() is the only other way out).
    r.status = e.status == Status::ok ? Status::too_large : e.status;
  }
  return r;
}

}  // namespace spr::embed::codec
