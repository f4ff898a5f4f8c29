// The sandbox's own root and identity, judged from the host in the mode under test (SPR_TEST_ISOLATION):
// host files absent from the worker's root, files a run makes owned by an unprivileged id outside, the scratch
// file system's size limit, RLIMIT_NPROC binding, and allowed_read_paths that are links never followed.
// A stopped worker that cleared its parent-death signal is gone once its supervisor is killed (the PID namespace).
// Registered twice per mode: with the supervisor as root and as an unprivileged user (setpriv).
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <spr/runner.hpp>

#include "escape_helpers.hpp"

namespace {

namespace fs = std::filesystem;
using spr::json;

spr::Isolation test_mode() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  return spr::RunnerPolicy::from_json({{"isolation", m ? m : "fork"}}).isolation;
}

spr::RunnerPolicy policy() {
  spr::RunnerPolicy p;
  p.isolation = test_mode();
  p.timeout_seconds = 20;
  p.blocked_imports = {};
  p.blocked_builtins = {};
  return p;
}

spr::Runner& runner() {
  static spr::Runner r([] {
    spr::RunnerOptions o;
    o.workers = 1;
    o.policy = policy();
    return o;
  }());
  return r;
}

// The host directory tests create files in: world-readable, so an unprivileged supervisor can use it too.
fs::path host_dir(const std::string& tag) {
  fs::path d = fs::temp_directory_path() / ("spr-ownroot-" + tag + "-" + sec::random_hex(6));
  fs::create_directories(d);
  fs::permissions(d, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                         fs::perms::others_exec);
  return d;
}

// Worker processes of this test (and their run children), seen in the host's /proc.
std::vector<pid_t> workers() {
  std::vector<pid_t> out;
  for (const auto& p : sec::descendants(::getpid(), {})) out.push_back(p.pid);
  return out;
}

// Whether `path` exists inside the root of process `pid`, looked up from the host through /proc/<pid>/root.
bool exists_in_root_of(pid_t pid, const std::string& path) {
  struct stat st {};
  return ::lstat(("/proc/" + std::to_string(pid) + "/root" + path).c_str(), &st) == 0;
}

}  // namespace

TEST_CASE("own root: the host's files are absent, looked up by the run and from the host") {
  const fs::path dir = host_dir("canary");
  const std::string canary = (dir / "canary.txt").string();
  std::ofstream(canary) << "host-canary";
  const std::string code =
      "import os\n"
      "out = {}\n"
      "for p in input_data['paths']:\n"
      "    try:\n"
      "        os.stat(p)\n"
      "        out[p] = 'present'\n"
      "    except FileNotFoundError:\n"
      "        out[p] = 'absent'\n"
      "    except OSError as e:\n"
      "        out[p] = type(e).__name__\n"
      "result = out\n";
  const std::vector<std::string> paths = {"/etc/shadow", "/etc/passwd", "/home", "/root", "/var", canary,
                                          dir.string()};
  // The run says when it runs (streamed output): the worker's set-up is over by then.
  std::atomic<bool> running{false};
  spr::RunOptions ro;
  ro.on_output = [&](spr::OutputStream, const std::string&) { running = true; };
  spr::RunHandle h = runner().submit(code + "print('running', flush=True)\nimport time\ntime.sleep(2)\n",
                                     {{"paths", paths}}, policy(), ro);
  for (int i = 0; i < 6000 && !running; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  // While the run is alive: the roots of the processes that run code, from the host. The keeper and init of a
  // PID namespace stay in the host's mount namespace and never run user code; every process that does has a
  // root of its own (waited for: the worker may still be starting).
  std::error_code ec;
  const fs::path host_mnt = fs::read_symlink("/proc/self/ns/mnt", ec);
  int own_roots = 0;
  for (int i = 0; i < 6000 && own_roots == 0; ++i) {
    for (pid_t pid : workers()) {
      CAPTURE(pid);
      const fs::path mnt = fs::read_symlink("/proc/" + std::to_string(pid) + "/ns/mnt", ec);
      if (ec || mnt == host_mnt || !exists_in_root_of(pid, "/usr")) continue;  // not sandboxed, or gone already
      ++own_roots;
      CHECK_FALSE(exists_in_root_of(pid, "/etc/shadow"));
      CHECK_FALSE(exists_in_root_of(pid, canary));
      CHECK_FALSE(exists_in_root_of(pid, "/home"));
    }
    if (own_roots == 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  CHECK(own_roots > 0);
  const spr::RunResult r = h.get();
  INFO(r.error.value_or(""));
  REQUIRE(r.ok);
  for (const auto& p : paths) {
    CAPTURE(p);
    CHECK(r.result[p] == "absent");
  }
  fs::remove_all(dir);
}

TEST_CASE("identity: a file a run writes is owned by an unprivileged id outside, and never on the host") {
  spr::RunnerPolicy p = policy();
  p.scratch_dir = true;
  const std::string marker = "spr-owner-" + sec::random_hex(6);
  spr::RunHandle h = runner().submit(
      "import time\nwith open(input_data['name'], 'w') as f:\n    f.write('x')\ntime.sleep(3)\nresult = 1\n",
      {{"name", marker}}, p);
  // The run's working directory, seen from the host, holds the file: its owner as the host sees it.
  long owner = -1;
  for (int i = 0; i < 400 && owner < 0; ++i) {
    for (pid_t pid : workers()) {
      struct stat st {};
      if (::stat(("/proc/" + std::to_string(pid) + "/cwd/" + marker).c_str(), &st) == 0) owner = st.st_uid;
    }
    if (owner < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const spr::RunResult r = h.get();
  INFO(r.error.value_or(""));
  CHECK(r.ok);
  REQUIRE(owner >= 0);
  // Root's runs are nobody's; an unprivileged supervisor's are its own (already unprivileged).
  CHECK(owner == (::getuid() == 0 ? 65534 : static_cast<long>(::getuid())));
  CHECK(owner != 0);
  // The host's scratch directories never saw it.
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path())) {
    if (entry.path().filename().string().rfind("spr-", 0) != 0 || !entry.is_directory()) continue;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(entry.path(), ec); !ec && it != fs::recursive_directory_iterator();
         it.increment(ec))
      CHECK(it->path().filename().string() != marker);
  }
}

TEST_CASE("scratch_limit_mb: a run cannot hold more in files than its worker's scratch file system") {
  spr::RunnerPolicy p = policy();
  p.scratch_dir = true;
  p.scratch_limit_mb = 4;
  const spr::RunResult r = runner().run(
      "import errno\nwritten = 0\ncode = None\n"
      "try:\n"
      "    with open('big', 'wb') as f:\n"
      "        for _ in range(64):\n"
      "            f.write(b'x' * (1 << 20))\n"
      "            f.flush()\n"
      "            written += 1 << 20\n"
      "except OSError as e:\n"
      "    code = e.errno\n"
      "result = {'written': written, 'errno': code}\n",
      json::object(), p);
  INFO(r.error.value_or(""));
  REQUIRE(r.ok);
  CHECK(r.result["written"].get<long>() <= 4L << 20);
  CHECK(r.result["errno"] == 28);  // ENOSPC: the tmpfs is full, nothing spilled elsewhere
}

TEST_CASE("scratch wipe: nothing a run leaves in its scratch, however deep or unreadable, reaches the next run") {
  // A later run on the same worker may be another party's: a file 70 directories deep (the wipe stopped at 64)
  // or in a directory made with mode 0300 (an unprivileged supervisor could not list it) outlived the run. The
  // reader uses raw system calls (the test worker's _spr_raw), as a run that owns its process would.
  spr::RunnerOptions o;
  o.worker_path = std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-faulty";
  o.workers = 1;
  o.policy = policy();
  o.policy.scratch_dir = true;
  spr::Runner faulty(o);
  const std::string secret = "SECRET-" + sec::random_hex(8);
  const spr::RunResult a = faulty.run(
      "import os\ndeep = '/'.join(['d'] * 70)\nos.makedirs(deep)\n"
      "with open(deep + '/secret.txt', 'w') as f:\n    f.write(input_data['secret'])\n"
      "os.mkdir('h', 0o300)\nwith open('h/secret.txt', 'w') as f:\n    f.write(input_data['secret'])\n"
      "result = os.getcwd()\n",
      {{"secret", secret}}, o.policy);
  INFO(a.error.value_or(""));
  REQUIRE(a.ok);
  const spr::RunResult b = faulty.run(
      "import _spr_raw as R\nseen = []\n"
      "for name in ['/'.join(['d'] * 70) + '/secret.txt', 'h/secret.txt']:\n"
      "    fd, err = R.call('openat', -100, input_data['cwd'] + '/' + name, 0, 0)\n"
      "    buf = bytearray(64)\n"
      "    n = R.call('read', fd, buf, 64)[0] if fd >= 0 else -1\n"
      "    seen.append(bytes(buf[:max(n, 0)]).decode() if n > 0 else err)\n"
      "result = seen\n",
      {{"cwd", a.result}}, o.policy);
  INFO(b.error.value_or(""));
  REQUIRE(b.ok);
  CHECK(b.result.dump().find(secret) == std::string::npos);
  CHECK(b.stdout_text.find(secret) == std::string::npos);
}

TEST_CASE("RLIMIT_NPROC binds: a run cannot start hundreds of threads") {
  const spr::RunResult r = runner().run(
      "import threading\nstop = threading.Event()\nstarted = 0\n"
      "try:\n"
      "    for _ in range(300):\n"
      "        threading.Thread(target=stop.wait, daemon=True).start()\n"
      "        started += 1\n"
      "except RuntimeError:\n"
      "    pass\n"
      "peak = threading.active_count()\nstop.set()\nresult = {'started': started, 'peak': peak}\n",
      json::object(), policy());
  INFO(r.error.value_or(""));
  INFO(r.result.dump());
  // namespace and subinterpreter workers allow no threads at all (the run may then fail); the others stop at
  // RLIMIT_NPROC (64 tasks of the sandbox's id).
  if (r.ok) CHECK(r.result["started"].get<int>() < 100);
}

TEST_CASE("allowed_read_paths: a path that is a link is not followed, whatever it points to") {
  const fs::path dir = host_dir("links");
  const fs::path secret_dir = host_dir("secret");
  const std::string token = "spr-secret-" + sec::random_hex(8);
  std::ofstream(secret_dir / "secret.txt") << token;
  fs::permissions(secret_dir / "secret.txt", fs::perms::owner_read | fs::perms::owner_write |
                                                 fs::perms::group_read | fs::perms::others_read);
  fs::create_directory_symlink(secret_dir, dir / "link");
  spr::RunnerPolicy p = policy();
  p.allowed_read_paths = {(dir / "link").string()};
  const spr::RunResult r = runner().run(
      "try:\n    result = open(input_data['path']).read()\nexcept OSError as e:\n    result = type(e).__name__\n",
      {{"path", (dir / "link" / "secret.txt").string()}}, p);
  INFO(r.error.value_or(""));
  CHECK_FALSE(sec::contains(sec::all_output(r), token));
  fs::remove_all(dir);
  fs::remove_all(secret_dir);
}

namespace {

// State letter of a process ('T' stopped, 'Z' zombie), or 0 when it is gone.
char state_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  const auto rp = stat.rfind(')');
  return rp == std::string::npos || rp + 2 >= stat.size() ? 0 : stat[rp + 2];
}

}  // namespace

TEST_CASE("a stopped worker that cleared its parent-death signal does not outlive a killed supervisor") {
  const std::string faulty = std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-faulty";
  const pid_t supervisor = ::fork();
  REQUIRE(supervisor >= 0);
  if (supervisor == 0) {
    // The supervisor, a CLI of its own: starts a worker whose run stops itself, and waits for it.
    ::setenv("SPR_WORKER", faulty.c_str(), 1);
    const char* mode = std::getenv("SPR_TEST_ISOLATION");
    ::execl(SPR_TEST_CLI, "safe-py-runner", "run", "-c", "#spr-fault: orphan\nresult = 1\n", "--timeout", "60",
            "--isolation", mode ? mode : "fork", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  // Wait until one of its processes is stopped, and note them all.
  std::vector<pid_t> procs;
  bool stopped = false;
  for (int i = 0; i < 3000 && !stopped; ++i) {
    procs.clear();
    for (const auto& p : sec::descendants(supervisor, {})) {
      procs.push_back(p.pid);
      if (state_of(p.pid) == 'T') stopped = true;
    }
    if (!stopped) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ::kill(supervisor, SIGKILL);
  ::waitpid(supervisor, nullptr, 0);
  REQUIRE(stopped);
  // Every process it had ends (a zombie is an ended process not yet reaped by the host's init).
  std::vector<pid_t> left;
  for (int i = 0; i < 1000; ++i) {
    left.clear();
    for (pid_t p : procs) {
      const char s = state_of(p);
      if (s != 0 && s != 'Z') left.push_back(p);
    }
    if (left.empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  for (pid_t p : left) ::kill(p, SIGKILL);  // not to leave them behind for the rest of the suite
  CHECK(left.empty());
}

TEST_CASE("a kernel that refuses the mount namespace: the root is reported off, Landlock still fences the host") {
  spr::RunnerOptions o;
  o.worker_path = std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-fail-mountns";
  o.workers = 1;
  o.policy = policy();
  spr::Runner r(o);
  bool reported = false;
  for (const auto& layer : r.hardening(test_mode())) {
    if (layer.value("name", "") != "root") continue;
    reported = true;
    CHECK(layer.value("active", true) == false);
    CHECK(sec::contains(layer.value("detail", ""), "EPERM"));
  }
  CHECK(reported);
  const spr::RunResult res = r.run(
      "try:\n    result = open('/etc/shadow').read()[:4]\nexcept OSError as e:\n    result = type(e).__name__\n",
      json::object(), policy());
  INFO(res.error.value_or(""));
  const bool read_it = res.ok && res.result.is_string() && res.result != "PermissionError";
  CHECK_FALSE(read_it);
  CHECK_FALSE(sec::contains(sec::all_output(res), "root:"));
}
