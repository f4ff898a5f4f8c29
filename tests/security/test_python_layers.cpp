// The Python layers under the red team's primitives (issue 17, item 6): a code object built under
// trusted frames, ctypes and cffi reached through any module, numpy's raw-memory helpers, an
// extension module the run wrote, and dir_fd-relative path calls. Each attack runs in the isolation
// mode named by SPR_TEST_ISOLATION; where its goal is a side effect on the host (a file's mode,
// owner or times) that side effect is what is checked, from outside; the clear error is checked too.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include <spr/runner.hpp>

#include "escape_helpers.hpp"

namespace {

using spr::json;
namespace fs = std::filesystem;

spr::Isolation test_mode() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  return spr::RunnerPolicy::from_json({{"isolation", m ? m : "fork"}}).isolation;
}

bool threads_allowed() { return test_mode() == spr::Isolation::fork || test_mode() == spr::Isolation::process; }
bool subinterpreter() { return test_mode() == spr::Isolation::subinterpreter; }

spr::Runner& runner() {
  static spr::Runner r([] {
    spr::RunnerOptions o;
    o.workers = 1;
    o.policy.isolation = test_mode();
    o.policy.timeout_seconds = 60;  // numpy and pandas imports on a loaded machine; no speed is asserted
    return o;
  }());
  return r;
}

spr::RunnerPolicy policy(const json& overrides = json::object()) {
  spr::RunnerPolicy base;
  base.isolation = test_mode();
  base.timeout_seconds = 60;
  return spr::RunnerPolicy::from_json(overrides, base);
}

std::string describe(const spr::RunResult& r) {
  return "ok=" + std::to_string(r.ok) + " kind=" + std::string(spr::to_string(r.error_kind)) +
         " error=" + r.error.value_or("-") + " result=" + r.result.dump() + "\nstderr: " + r.stderr_text.substr(0, 1500);
}

// A host file the sandbox must leave alone: its directory, mode 0600, a fixed mtime and owner.
struct Victim {
  fs::path dir = fs::path("/tmp") / ("spr-pyguard-" + sec::random_hex(6));
  fs::path file = dir / "victim";
  struct stat before {};

  Victim() {
    fs::create_directories(dir);
    std::ofstream(file) << "VICTIM CONTENT\n";
    ::chmod(file.c_str(), 0600);
    const struct timespec times[2] = {{1000000000, 0}, {1000000000, 0}};
    ::utimensat(AT_FDCWD, file.c_str(), times, 0);
    REQUIRE(::stat(file.c_str(), &before) == 0);
  }
  ~Victim() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  // What changed since the constructor, seen from the host ("" when nothing did).
  std::string changed() const {
    struct stat now {};
    if (::stat(file.c_str(), &now) != 0) return "the file is gone";
    std::string out;
    if ((now.st_mode & 07777) != (before.st_mode & 07777)) out += "mode changed; ";
    if (now.st_uid != before.st_uid || now.st_gid != before.st_gid) out += "owner changed; ";
    if (now.st_mtim.tv_sec != before.st_mtim.tv_sec) out += "mtime changed; ";
    std::ifstream in(file);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (content != "VICTIM CONTENT\n") out += "content changed; ";
    return out;
  }
  json input() const { return {{"dir", dir.string()}, {"name", file.filename().string()}, {"path", file.string()}}; }
};

// Every class reachable from object (object.__subclasses__() lists direct subclasses only).
constexpr const char* kWalk =
    "def classes():\n    todo, seen = [object], {}\n    while todo:\n        c = todo.pop()\n"
    "        if id(c) in seen:\n            continue\n        seen[id(c)] = c\n"
    "        todo.extend(type.__subclasses__(c))\n    return list(seen.values())\n";

}  // namespace

TEST_CASE("code objects: none is built for a run, whatever frames lie between (heapq + starmap)") {
  const auto r = runner().run(
      "import heapq, itertools, functools, dis\nco = dis.Bytecode(lambda: 0).codeobj\n"
      "made = heapq.nlargest(1, itertools.starmap(functools.partial(co.replace, co_consts=(None,)), [()]), key=id)\n"
      "result = 'ESCAPED' if made else 'none'\n",
      json::object(), policy());
  INFO(describe(r));
  CHECK_FALSE(sec::contains(sec::all_output(r), "ESCAPED"));
  CHECK(r.error_kind == spr::ErrorKind::denied);
  CHECK(sec::contains(r.error.value_or(""), "building code objects is never allowed"));

  SUBCASE("nor by a thread whose every frame is the standard library's") {
    if (!threads_allowed()) return;
    const auto t = runner().run(
        "import threading, itertools, functools, dis\nco = dis.Bytecode(lambda: 0).codeobj\nbox = []\n"
        "job = functools.partial(box.extend, itertools.starmap(functools.partial(co.replace, co_consts=(None,)), [()]))\n"
        "th = threading.Thread(target=job)\nth.start()\nth.join()\nresult = 'ESCAPED' if box else 'none'\n",
        json::object(), policy());
    INFO(describe(t));
    CHECK_FALSE(sec::contains(sec::all_output(t), "ESCAPED"));
  }
  SUBCASE("renaming copies pass: types.coroutine marks a generator awaitable, asyncio and numpy import") {
    const auto c = runner().run(
        "import types, asyncio, inspect\n@types.coroutine\ndef g():\n    yield\nresult = inspect.isawaitable(g())\n",
        json::object(), policy());
    INFO(describe(c));
    CHECK(c.ok);
    CHECK(c.result == json(true));
    if (subinterpreter()) return;
    const auto n = runner().run("import numpy\nresult = int(numpy.arange(4).sum())\n", json::object(), policy());
    INFO(describe(n));
    CHECK(n.ok);
    CHECK(n.result == json(6));
  }
}

TEST_CASE("ctypes: not loaded in the worker, so no module's attributes reach it") {
  // The red team's route (inspect.sys.modules['ctypes']) and every other: the real sys, numpy and
  // pandas' references, the import machinery with the policy's finder removed, the extension
  // loader, and any _ctypes class reachable from object.
  const std::string code =
      std::string(kWalk) +
      "import inspect\nfound = []\nrsys = inspect.sys\n"
      "if 'ctypes' in rsys.modules or '_ctypes' in rsys.modules:\n    found.append('sys.modules')\n"
      "for pkg in ('numpy', 'pandas'):\n    try:\n        __import__(pkg)\n    except ImportError:\n        pass\n"
      "np = rsys.modules.get('numpy')\n"
      "if np is not None and getattr(np.ctypeslib, 'ctypes', None) is not None:\n    found.append('numpy.ctypeslib')\n"
      "finder = [m for m in rsys.meta_path if 'Policy' in repr(m)]\nsaved = list(rsys.meta_path)\n"
      "rsys.meta_path[:] = [m for m in saved if m not in finder]\n"
      "try:\n    inspect.importlib.import_module('ctypes')\n    found.append('import_module')\nexcept ImportError:\n    pass\n"
      "finally:\n    rsys.meta_path[:] = saved\n"
      "EFL = [c for c in classes() if c.__name__ == 'ExtensionFileLoader'][0]\n"
      "dyn = [p for p in rsys.path if p.endswith('lib-dynload')][0]\n"
      "import os\nfor f in os.listdir(dyn):\n    if f.startswith('_ctypes.'):\n"
      "        try:\n            EFL('_ctypes', dyn + '/' + f).load_module()\n            found.append('loader')\n"
      "        except ImportError:\n            pass\n"
      "if any(getattr(c, '__module__', '') == '_ctypes' for c in classes()):\n    found.append('subclasses')\n"
      "result = 'ESCAPED ' + ','.join(found) if found else 'absent'\n";
  const auto r = runner().run(code, json::object(), policy({{"blocked_imports", json::array()}}));
  INFO(describe(r));
  CHECK_FALSE(sec::contains(sec::all_output(r), "ESCAPED"));
  CHECK(r.ok);
  SUBCASE("import ctypes says why, even under a policy that blocks nothing") {
    const auto c = runner().run("import ctypes\n", json::object(), policy({{"blocked_imports", json::array()}}));
    INFO(describe(c));
    CHECK(c.error_kind == spr::ErrorKind::blocked_import);
    CHECK(sec::contains(c.error.value_or(""), "raw memory"));
  }
}

TEST_CASE("cffi: refused like ctypes; a host file's mode is unchanged") {
  Victim v;
  const auto r = runner().run(
      "import cffi\nffi = cffi.FFI()\nffi.cdef('int chmod(const char *, unsigned int);')\n"
      "C = ffi.dlopen(None)\nC.chmod(input_data['path'].encode(), 0o4777)\nresult = 'ESCAPED'\n",
      v.input(), policy({{"blocked_imports", json::array()}}));
  INFO(describe(r));
  CHECK(v.changed() == "");
  CHECK_FALSE(sec::contains(sec::all_output(r), "ESCAPED"));
  CHECK(r.error_kind == spr::ErrorKind::blocked_import);
  CHECK(sec::contains(r.error.value_or(""), "raw memory"));
  SUBCASE("its backend through the extension loader") {
    const auto b = runner().run(
        std::string(kWalk) +
            "import sys\nEFL = [c for c in classes() if c.__name__ == 'ExtensionFileLoader'][0]\n"
            "import os\nfor d in sys.path:\n    try:\n        names = os.listdir(d)\n    except OSError:\n        continue\n"
            "    for f in names:\n        if f.startswith('_cffi_backend.'):\n"
            "            m = EFL('_cffi_backend', d + '/' + f).load_module()\n"
            "            lib = m.load_library(None)\n            result = 'ESCAPED'\n",
        v.input(), policy({{"blocked_imports", json::array()}}));
    INFO(describe(b));
    CHECK_FALSE(sec::contains(sec::all_output(b), "ESCAPED"));
    CHECK(v.changed() == "");
  }
}

TEST_CASE("numpy: as_strided outside its array and numpy.ctypeslib are refused") {
  const auto r = runner().run(
      "import numpy as np\na = np.zeros(1)\n"
      "v = np.lib.stride_tricks.as_strided(a, shape=(1 << 16,), strides=(8,))\nresult = 'ESCAPED'\n",
      json::object(), policy());
  INFO(describe(r));
  CHECK_FALSE(sec::contains(sec::all_output(r), "ESCAPED"));
  CHECK_FALSE(r.ok);
  if (!subinterpreter()) CHECK(sec::contains(r.error.value_or(""), "as_strided"));

  SUBCASE("a subclass hook never sees the view") {
    const auto s = runner().run(
        "import numpy as np\nbox = []\nclass S(np.ndarray):\n    def __array_finalize__(self, obj):\n"
        "        box.append(self)\n"
        "try:\n    np.lib.stride_tricks.as_strided(np.zeros(1).view(S), shape=(1 << 16,), strides=(8,), subok=True)\n"
        "except PermissionError:\n    pass\n"
        "result = 'ESCAPED' if any(b.shape == (1 << 16,) for b in box) else 'none'\n",
        json::object(), policy());
    INFO(describe(s));
    CHECK_FALSE(sec::contains(sec::all_output(s), "ESCAPED"));
  }
  SUBCASE("views within the array still work, numpy's own included") {
    if (subinterpreter()) return;
    const auto ok = runner().run(
        "import numpy as np\nw = np.lib.stride_tricks.sliding_window_view(np.arange(5), 3)\n"
        "s = np.lib.stride_tricks.as_strided(np.arange(6), shape=(3, 2), strides=(16, 8))\n"
        "f = np.vectorize(lambda x: x + 1, signature='()->()')\n"
        "result = [int(w.sum()), int(s.sum()), int(f(np.arange(3)).sum()), list(np.ndindex(2, 2))[-1]]\n",
        json::object(), policy());
    INFO(describe(ok));
    CHECK(ok.ok);
    CHECK(ok.result == json::array({18, 15, 6, json::array({1, 1})}));
  }
  SUBCASE("numpy.ctypeslib has no ctypes to hand out") {
    const auto c = runner().run(
        "import numpy as np\nresult = 'ESCAPED' if getattr(np.ctypeslib, 'ctypes', None) is not None else 'none'\n",
        json::object(), policy());
    INFO(describe(c));
    CHECK_FALSE(sec::contains(sec::all_output(c), "ESCAPED"));
  }
}

TEST_CASE("extension modules: one the run wrote is never loaded, nor CPython's test modules") {
  const auto r = runner().run(
      std::string(kWalk) +
          "import sys, os\nEFL = [c for c in classes() if c.__name__ == 'ExtensionFileLoader'][0]\n"
          "class Spec:\n    pass\n"
          "def load(name, path):\n    spec = Spec()\n    spec.name, spec.origin = name, path\n"
          "    return EFL(name, path).create_module(spec)\n"
          "dyn = [p for p in sys.path if p.endswith('lib-dynload')][0]\nloaded = []\n"
          "for f in sorted(os.listdir(dyn)):\n    if not f.startswith(('_json.', '_bz2.', '_lzma.', '_md5.')):\n"
          "        continue\n    os.makedirs('lib', exist_ok=True)\n"
          "    with open(dyn + '/' + f, 'rb') as src, open('lib/' + f, 'wb') as dst:\n        dst.write(src.read())\n"
          "    try:\n        load(f.split('.')[0], os.path.abspath('lib/' + f))\n        loaded.append(f)\n"
          "    except ImportError as e:\n        print(e)\n    break\n"
          "for f in os.listdir(dyn):\n    if f.startswith(('_testcapi.', '_testinternalcapi.')):\n"
          "        try:\n            load(f.split('.')[0], dyn + '/' + f)\n            loaded.append(f)\n"
          "        except ImportError:\n            pass\n"
          "result = 'ESCAPED ' + ','.join(loaded) if loaded else 'none'\n",
      json::object(), policy({{"blocked_imports", json::array()}, {"blocked_builtins", json::array()}, {"scratch_dir", true}}));
  INFO(describe(r));
  CHECK_FALSE(sec::contains(sec::all_output(r), "ESCAPED"));
  CHECK(r.ok);
  CHECK(sec::contains(r.stdout_text, "outside the Python runtime's directories"));
}

TEST_CASE("dir_fd: path calls are checked against the directory they touch; a host file is unchanged") {
  Victim v;
  const json open_policy = {{"blocked_imports", json::array()}, {"scratch_dir", true},
                            {"allowed_read_paths", json::array({v.dir.string()})}};
  SUBCASE("a descriptor of a readable host directory") {
    const auto r = runner().run(
        "import os\nfd = os.open(input_data['dir'], os.O_RDONLY)\n"
        "for call in (lambda: os.chmod(input_data['name'], 0o4777, dir_fd=fd),\n"
        "             lambda: os.utime(input_data['name'], (0, 0), dir_fd=fd),\n"
        "             lambda: os.chown(input_data['name'], 65534, 65534, dir_fd=fd)):\n"
        "    try:\n        call()\n    except OSError as e:\n        print(type(e).__name__, e)\n",
        v.input(), policy(open_policy));
    INFO(describe(r));
    CHECK(v.changed() == "");
  }
  SUBCASE("a descriptor of the run's own directory and a name that climbs out of it") {
    // The working directory is deeper than the descriptor's: checked against the working
    // directory, the name stays in the run directory; from the descriptor it reaches the host file.
    const auto r = runner().run(
        "import os\nhere = os.getcwd()\ndepth = here.count('/')\nfd = os.open(here, os.O_RDONLY)\n"
        "os.makedirs(input_data['dir'].lstrip('/'))\ndeep = '/'.join(['d'] * depth)\nos.makedirs(deep)\nos.chdir(deep)\n"
        "name = '../' * depth + input_data['dir'].lstrip('/') + '/' + input_data['name']\n"
        "for call in (lambda: os.chmod(name, 0o4777, dir_fd=fd),\n"
        "             lambda: os.utime(name, (0, 0), dir_fd=fd),\n"
        "             lambda: os.write(os.open(name, os.O_WRONLY | os.O_TRUNC, dir_fd=fd), b'PWNED')):\n"
        "    try:\n        call()\n    except OSError as e:\n        print(type(e).__name__, e)\n",
        v.input(), policy({{"blocked_imports", json::array()}, {"scratch_dir", true}}));
    INFO(describe(r));
    CHECK(v.changed() == "");
  }
  SUBCASE("the refusals are clear, and dir_fd inside the run directory still works") {
    const auto r = runner().run(
        "import os\nfd = os.open('.', os.O_RDONLY)\nos.mkdir('sub', dir_fd=fd)\n"
        "os.close(os.open('sub/e', os.O_CREAT | os.O_WRONLY, dir_fd=fd))\nos.rename('sub/e', 'sub/f', src_dir_fd=fd, dst_dir_fd=fd)\n"
        "try:\n    os.open(input_data['dir'], os.O_RDONLY)\n    opened = 'opened'\nexcept PermissionError as e:\n"
        "    opened = str(e)\nresult = [sorted(os.listdir('sub')), opened]\n",
        v.input(), policy(open_policy));
    INFO(describe(r));
    REQUIRE(r.ok);
    CHECK(r.result[0] == json::array({"f"}));
    CHECK(sec::contains(r.result[1].get<std::string>(), "opening a directory is allowed only inside the run directory"));
  }
}
