// Byte-capped capture of stdout/stderr into a shared mapping that outlives a killed run.
#include "capture.hpp"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>

#include "common/capture_layout.hpp"
#include "interp_state.hpp"
#include "run_local.hpp"

namespace spr::embed::capture {

using spr::detail::CaptureHeader;
using spr::detail::kCaptureDataOffset;
using spr::detail::kCaptureMagic;

namespace {

// The authoritative state lives here, in private memory. The shared header is only a copy for the
// supervisor's crash recovery: code that escapes the Python layer can write to the shared mapping.
struct Buffer {
  int fd = -1;
  char* map = nullptr;
  std::size_t map_size = 0;
  std::uint64_t cap = 0;
  std::uint64_t len[2] = {0, 0};
  bool truncated[2] = {false, false};
};
// A run and the threads it starts write into one buffer (under the interpreter's lock); each own-GIL
// run thread of a worker captures into its own (its own memfd).
RunLocal<Buffer> g_buffer;
Buffer& buf() { return g_buffer(); }

CaptureHeader* header() { return reinterpret_cast<CaptureHeader*>(buf().map); }
char* area(int stream) { return buf().map + kCaptureDataOffset + (stream == 0 ? 0 : buf().cap); }

bool map_size(std::size_t size) {
  if (size <= buf().map_size) return true;
  if (buf().fd >= 0 && ftruncate(buf().fd, static_cast<off_t>(size)) != 0) return false;
  void* m = buf().fd >= 0 ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, buf().fd, 0)
                      : mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return false;
  if (buf().map) munmap(buf().map, buf().map_size);
  buf().map = static_cast<char*>(m);
  buf().map_size = size;
  return true;
}

struct StreamObject {
  PyObject_HEAD int stream;
};

// Bytes (sys.stdout.buffer.write): kept as UTF-8 text, invalid sequences replaced, so the capture
// always holds valid UTF-8.
PyObject* stream_write_bytes(PyObject* self, PyObject* arg) {
  Py_buffer view;
  if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return nullptr;
  py::Ref text(PyUnicode_DecodeUTF8(static_cast<const char*>(view.buf), view.len, "replace"));
  const Py_ssize_t n = view.len;
  PyBuffer_Release(&view);
  if (!text) return nullptr;
  const std::string t = py::utf8(text.get());
  append(reinterpret_cast<StreamObject*>(self)->stream, t.data(), t.size());
  return PyLong_FromSsize_t(n);
}

PyObject* stream_write(PyObject* self, PyObject* arg) {
  if (!PyUnicode_Check(arg)) {
    if (PyObject_CheckBuffer(arg)) return stream_write_bytes(self, arg);
    PyErr_Format(PyExc_TypeError, "write() argument must be str or bytes, not %.100s", Py_TYPE(arg)->tp_name);
    return nullptr;
  }
  const int s = reinterpret_cast<StreamObject*>(self)->stream;
  Py_ssize_t n = 0;
  if (const char* u = PyUnicode_AsUTF8AndSize(arg, &n)) {
    append(s, u, static_cast<std::size_t>(n));
  } else {
    PyErr_Clear();
    std::string t = py::utf8(arg);
    append(s, t.data(), t.size());
  }
  return PyLong_FromSsize_t(PyUnicode_GetLength(arg));
}

PyObject* stream_writelines(PyObject* self, PyObject* lines) {
  py::Ref it(PyObject_GetIter(lines));
  if (!it) return nullptr;
  while (py::Ref line{PyIter_Next(it.get())}) {
    py::Ref r(stream_write(self, line.get()));
    if (!r) return nullptr;
  }
  if (PyErr_Occurred()) return nullptr;
  Py_RETURN_NONE;
}

PyObject* stream_none(PyObject*, PyObject*) { Py_RETURN_NONE; }
PyObject* stream_false(PyObject*, PyObject*) { Py_RETURN_FALSE; }
PyObject* stream_true(PyObject*, PyObject*) { Py_RETURN_TRUE; }
PyObject* stream_fileno(PyObject*, PyObject*) {
  PyErr_SetString(PyExc_OSError, "captured stream has no file descriptor");
  return nullptr;
}
PyObject* stream_get_encoding(PyObject*, void*) { return PyUnicode_FromString("utf-8"); }
PyObject* stream_get_errors(PyObject*, void*) { return PyUnicode_FromString("strict"); }
PyObject* stream_get_closed(PyObject*, void*) { Py_RETURN_FALSE; }
PyObject* stream_get_name(PyObject* self, void*) {
  return PyUnicode_FromString(reinterpret_cast<StreamObject*>(self)->stream == 0 ? "<stdout>" : "<stderr>");
}
PyObject* stream_get_mode(PyObject*, void*) { return PyUnicode_FromString("wb"); }

PyMethodDef kStreamMethods[] = {
    {"write", stream_write, METH_O, "Write str; bytes past max_output_kb are dropped and flagged."},
    {"writelines", stream_writelines, METH_O, nullptr},
    {"flush", stream_none, METH_NOARGS, nullptr},
    {"close", stream_none, METH_NOARGS, "Does nothing: the capture outlives the run's streams."},
    {"isatty", stream_false, METH_NOARGS, nullptr},
    {"readable", stream_false, METH_NOARGS, nullptr},
    {"seekable", stream_false, METH_NOARGS, nullptr},
    {"writable", stream_true, METH_NOARGS, nullptr},
    {"fileno", stream_fileno, METH_NOARGS, nullptr},
    {nullptr, nullptr, 0, nullptr}};

PyGetSetDef kStreamGetset[] = {{"encoding", stream_get_encoding, nullptr, nullptr, nullptr},
                               {"errors", stream_get_errors, nullptr, nullptr, nullptr},
                               {"closed", stream_get_closed, nullptr, nullptr, nullptr},
                               {"name", stream_get_name, nullptr, nullptr, nullptr},
                               {"mode", stream_get_mode, nullptr, nullptr, nullptr},
                               {nullptr, nullptr, nullptr, nullptr, nullptr}};


// Marks the header as belonging to no run before any byte of the areas is zeroed or cut back: the
// supervisor, streaming the last run's output, reads the header again after the bytes and drops what
// it read once the run is no longer the header's (it never passes on zeros for output).
void retire_header() {
  CaptureHeader* h = header();
  h->magic = 0;
  h->run_id = 0;
  std::atomic_thread_fence(std::memory_order_seq_cst);
}

}  // namespace

bool attach(int fd) {
  buf().fd = fd;
  return map_size(kCaptureDataOffset + std::size_t{2} * 4096);
}

void wipe() {
  // What the last run (or its forked child, which only updated the shared header) wrote, so no
  // run can read another's output from the mapping.
  if (!buf().map || !buf().cap) return;
  retire_header();
  for (int s = 0; s < 2; ++s) {
    std::uint64_t shared = s == 0 ? header()->out_len : header()->err_len;
    std::uint64_t n = std::min(std::max(buf().len[s], shared), buf().cap);
    explicit_bzero(area(s), static_cast<std::size_t>(n));
    buf().len[s] = 0;
  }
  header()->out_len = header()->err_len = 0;
}

std::string_view view(int stream) {
  if (!buf().map) return {};
  return {area(stream), static_cast<std::size_t>(std::min(buf().len[stream], buf().cap))};
}

bool begin(std::uint64_t run_id, std::uint64_t cap) {
  const std::size_t need = kCaptureDataOffset + 2 * cap;
  if (buf().fd >= 0) {
    // A run that owns its process may have cut the file under the mapping (a namespace worker's run; a fork
    // child holds no such file): the header is given its bytes back before it is written, or the write
    // would fault (SIGBUS) and end the worker with the next request (red team round 19).
    struct stat st{};
    if (fstat(buf().fd, &st) != 0) return false;
    const auto header_bytes = static_cast<off_t>(kCaptureDataOffset);
    if (st.st_size < header_bytes && ftruncate(buf().fd, header_bytes) != 0) return false;
    if (buf().map) retire_header();
    // The shared file is cut back to its header and grown again for every run: the kernel hands out
    // zeroed pages, so nothing an earlier run wrote anywhere in it survives (it may have written past
    // its own lengths), and the file is as large as this run needs even after the supervisor trimmed
    // it (a mapping past the file's end would fault with SIGBUS).
    if (ftruncate(buf().fd, static_cast<off_t>(kCaptureDataOffset)) != 0 || ftruncate(buf().fd, static_cast<off_t>(need)) != 0)
      return false;
    buf().len[0] = buf().len[1] = 0;
  } else {
    wipe();
  }
  if (!map_size(need)) return false;
  buf().cap = cap;
  buf().len[0] = buf().len[1] = 0;
  buf().truncated[0] = buf().truncated[1] = false;
  CaptureHeader* h = header();
  h->magic = kCaptureMagic;
  h->run_id = run_id;
  h->cap = cap;
  h->out_len = h->err_len = 0;
  h->out_truncated = h->err_truncated = 0;
  return true;
}

int keep_mapping_only() {
  if (buf().fd < 0) return 0;
  const int r = close(buf().fd);
  buf().fd = -1;  // released even on EINTR
  return r == 0 || errno == EINTR ? 0 : errno;
}

void adopt_shared() {
  if (!buf().map) return;
  const CaptureHeader* h = header();
  buf().len[0] = std::min<std::uint64_t>(h->out_len, buf().cap);
  buf().len[1] = std::min<std::uint64_t>(h->err_len, buf().cap);
  buf().truncated[0] = h->out_truncated != 0;
  buf().truncated[1] = h->err_truncated != 0;
}

void append(int stream, const char* data, std::size_t len) {
  if (!buf().map) return;
  std::uint64_t& used = buf().len[stream];
  const std::uint64_t room = buf().cap > used ? buf().cap - used : 0;
  std::size_t n = len;
  if (n > room) {
    n = static_cast<std::size_t>(room);
    // Cut at a character boundary: never leave half a UTF-8 sequence at the end.
    while (n > 0 && (static_cast<unsigned char>(data[n]) & 0xC0) == 0x80) --n;
    buf().truncated[stream] = true;
    (stream == 0 ? header()->out_truncated : header()->err_truncated) = 1;
  }
  std::memcpy(area(stream) + used, data, n);
  used += n;
  (stream == 0 ? header()->out_len : header()->err_len) = used;
}

std::string text(int stream) {
  if (!buf().map) return {};
  return std::string(area(stream), static_cast<std::size_t>(std::min(buf().len[stream], buf().cap)));
}

bool truncated(int stream) { return buf().truncated[stream]; }

int add_type(PyObject* m) {
  static PyType_Slot slots[] = {{Py_tp_methods, kStreamMethods},
                                {Py_tp_getset, kStreamGetset},
                                {Py_tp_doc, const_cast<char*>("Captured output stream of a run.")},
                                {0, nullptr}};
  static PyType_Spec spec = {"_spr.Stream", sizeof(StreamObject), 0, Py_TPFLAGS_DEFAULT, slots};
  PyObject* t = PyType_FromSpec(&spec);
  if (!t) return -1;
  state().stream_type = reinterpret_cast<PyTypeObject*>(t);
  Py_INCREF(t);
  return PyModule_AddObject(m, "Stream", t);
}

PyObject* make_stream(int stream) {
  if (!state().stream_type) {
    PyErr_SetString(PyExc_RuntimeError, "_spr is not initialised in this interpreter");
    return nullptr;
  }
  PyObject* o = PyType_GenericAlloc(state().stream_type, 0);
  if (o) reinterpret_cast<StreamObject*>(o)->stream = stream;
  return o;
}

}  // namespace spr::embed::capture
