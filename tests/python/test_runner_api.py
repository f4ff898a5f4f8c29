"""Beyond the original: Runner (pool, context manager, run/submit/run_async), modes, threads."""

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import safe_py_runner
from conftest import MODES
from safe_py_runner import Runner, RunnerPolicy, WorkerError, run_code


def test_package_surface():
    assert set(safe_py_runner.__all__) >= {"RunnerPolicy", "RunnerResult", "run_code", "Runner"}
    assert safe_py_runner.__version__.count(".") == 2
    from safe_py_runner.policy import RunnerPolicy as P, RunnerResult as R  # the original's module paths
    assert P is RunnerPolicy and R is safe_py_runner.RunnerResult


def test_importing_the_package_and_run_code_leave_concurrent_futures_unloaded():
    # It costs a short program ~12 ms at start (logging with it); submit() and RunFuture load it.

    script = ("import sys, safe_py_runner\n"
              "assert safe_py_runner.run_code('result = 1').result == 1\n"
              "assert 'concurrent.futures' not in sys.modules, 'loaded at import or by run_code'\n"
              "from safe_py_runner import RunFuture, Runner\n"
              "import concurrent.futures\n"
              "assert issubclass(RunFuture, concurrent.futures.Future)\n"
              "with Runner(workers=1) as r:\n"
              "    f = r.submit('result = 2')\n"
              "    assert isinstance(f, RunFuture) and f.result().result == 2\n")
    subprocess.run([sys.executable, "-c", script], check=True, env=dict(os.environ))


def test_run_and_default_policy():
    with Runner(RunnerPolicy(blocked_imports=["json"]), workers=1) as r:
        assert r.run("result = x * 2", {"x": 21}).result == 42
        assert "blocked by policy" in r.run("import json").error
        assert r.run("import json\nresult = 1", policy=RunnerPolicy()).ok
        assert r.policy.blocked_imports == ["json"]


def test_runner_from_a_policy_file(tmp_policy):
    with Runner(policy_file=tmp_policy("blocked_imports = ['math']\n"), workers=1) as r:
        assert r.run("import math").error_kind == "blocked_import"
        assert r.run("import os\nresult = os.sep").result == "/"  # the file states the whole policy


def test_runner_argument_checks():
    with pytest.raises(ValueError, match="workers"):
        Runner(workers=0)
    with pytest.raises(ValueError, match="Provide either"):
        Runner(RunnerPolicy(), policy_file="x.toml")
    with pytest.raises(ValueError, match="timeout_seconds"):
        Runner(RunnerPolicy(timeout_seconds=-1))
    with pytest.raises(TypeError):
        run_code(b"result = 1")


def test_a_missing_worker_is_a_worker_error(tmp_path):
    with pytest.raises(WorkerError):
        Runner(worker_path=str(tmp_path / "no-such-worker"))


@pytest.mark.parametrize("isolation", MODES)
def test_every_isolation_mode(isolation, runner):
    p = RunnerPolicy(isolation=isolation)
    r = runner.run("import math\nresult = math.sqrt(input_data['x'])", {"x": 81}, policy=p)
    assert r.ok, r.error
    assert r.result == 9.0
    assert r.isolation == isolation
    assert runner.run("import os", policy=p).error == "ImportError: Import 'os' is blocked by policy"


@pytest.mark.parametrize("isolation", MODES)
def test_input_data_decodes_without_collections(isolation, runner):
    # 200,000 containers decoded with the collector on took ~290 youngest-generation collections (each older
    # generation's pass walks everything decoded so far); the engine turns it off for the decode, and back on.
    p = RunnerPolicy(isolation=isolation)
    code = "import gc\nresult = [gc.isenabled(), gc.get_stats()[0]['collections']]"
    small = runner.run(code, {"rows": []}, policy=p)
    large = runner.run(code, {"rows": [[i] for i in range(200_000)]}, policy=p)
    assert small.ok and large.ok, (small.error, large.error)
    assert small.result[0] and large.result[0]  # on again for the run
    assert large.result[1] - small.result[1] < 50, (small.result, large.result)
    t = runner.run("while True:\n    pass", policy=RunnerPolicy(isolation=isolation, timeout_seconds=0.5))
    assert t.timed_out and t.exit_code == 124


def test_submit_returns_a_future(runner):
    fut = runner.submit("result = sum(input_data)", [1, 2, 3])
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.result(timeout=60).result == 6


def test_run_async(runner):
    async def main():
        results = await asyncio.gather(*(runner.run_async("result = n * n", {"n": n}) for n in range(8)))
        return [r.result for r in results]

    assert asyncio.run(main()) == [n * n for n in range(8)]


def test_many_python_threads_share_one_runner(runner):
    def work(t):
        out = []
        for i in range(10):
            r = runner.run("result = [t, i, t * i]", {"t": t, "i": i})
            out.append(r.result == [t, i, t * i] and r.ok)
        return out

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, range(8)))
    assert all(all(r) for r in results)


def test_many_threads_through_run_code():
    errors = []

    def work(t):
        for i in range(5):
            r = run_code("result = a + b", input_data={"a": t, "b": i})
            if r.result != t + i:
                errors.append((t, i, r))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []


def test_the_gil_is_released_while_waiting(runner):
    # A slow run in one thread must not stop another thread's runs from starting and finishing.
    slow = runner.submit("import time\ntime.sleep(3)\nresult = 'slow'", policy=RunnerPolicy(timeout_seconds=20))
    fast = runner.run("result = 'fast'")
    assert fast.result == "fast"
    assert not slow.done()
    assert slow.result(timeout=60).result == "slow"


def test_close_answers_and_refuses():
    r = Runner(workers=1)
    assert r.run("result = 1").ok
    r.close()
    r.close()  # idempotent
    with pytest.raises(RuntimeError):
        r.run("result = 1")
    with pytest.raises(RuntimeError):
        r.submit("result = 1")


def test_hardening_and_python_version(runner):
    layers = runner.hardening("fork")
    assert layers and all({"name", "active"} <= set(layer) for layer in layers)
    assert runner.python_version().startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")


def test_new_policy_fields(runner):
    r = runner.run("import io\nwith io.open('f.txt', 'w') as f:\n    f.write('x')\nresult = 1",
                   policy=RunnerPolicy(scratch_dir=True, blocked_builtins=[]))
    assert r.ok, r.error
    r = runner.run("while True:\n    pass", policy=RunnerPolicy(cpu_time_seconds=0.3, timeout_seconds=10))
    assert r.error_kind == "cpu_time" and r.resource_exceeded
    with pytest.raises(ValueError, match="allowed_read_paths"):
        runner.run("result = 1", policy=RunnerPolicy(allowed_read_paths=["relative/path"]))


def test_python_executable_of_this_interpreter_is_accepted():
    assert run_code("result = 1", python_executable=sys.executable).result == 1


def test_to_json_is_what_the_engine_receives():
    sent = json.loads(RunnerPolicy(timeout_seconds=2.5, isolation="namespace").to_json())
    assert sent["timeout_seconds"] == 2.5 and sent["isolation"] == "namespace"
    assert "config_path" not in sent


def test_preload_is_passed_to_the_engine():
    with Runner(workers=1, preload=["json"]) as r:
        assert r.run("import json\nresult = json.dumps([1])").result == "[1]"
    with pytest.raises(ValueError, match="preload"):
        Runner(workers=1, preload=[1])


def test_python_executable_runs_with_a_venvs_packages(tmp_path):
    import subprocess

    from safe_py_runner.policy import _ENGINE_FIELDS

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    (Path(purelib) / "spr_marker_pkg.py").write_text("VALUE = 'from the venv'\n")
    code = "import spr_marker_pkg\nresult = spr_marker_pkg.VALUE"
    if "python_executable" in _ENGINE_FIELDS:
        r = run_code(code, python_executable=python)
        assert r.ok, r.error
        assert r.result == "from the venv"
        assert run_code(code).error_kind in {"exception", "blocked_import"}  # not on the default path
    else:
        with pytest.raises(ValueError, match="python_executable"):
            run_code(code, python_executable=python)


def test_stdin_reaches_every_entry_point(runner):
    """stdin is what input() and sys.stdin read, whichever call starts the run (issue 20, item 8)."""
    code = "import sys\nresult = [input(), sys.stdin.read()]"
    want = ["first", "rest\n"]
    text = "first\nrest\n"
    assert run_code(code, stdin=text).result == want
    assert runner.run(code, stdin=text).result == want
    assert runner.submit(code, stdin=text).result(timeout=60).result == want

    async def main():
        awaited = await runner.run_async(code, stdin=text)
        it = runner.stream("print(input())", stdin="streamed\n")
        chunks = [data async for _, data in it]
        return awaited.result, "".join(chunks), (await it.result()).stdout

    assert asyncio.run(main()) == (want, "streamed\n", "streamed\n")
    with runner.open_session() as s:
        assert s.run(code, stdin=text).result == want
        assert s.submit(code, stdin=text).result(timeout=60).result == want
        assert asyncio.run(s.run_async(code, stdin=text)).result == want
    assert run_code(code).error == "EOFError: EOF when reading a line"


def test_stdin_has_its_own_cap(runner):
    """max_stdin_kb, not max_output_kb, bounds stdin; past it the run answers bad_input and never starts."""
    read = "import sys\nresult = len(sys.stdin.read())"
    assert RunnerPolicy().max_stdin_kb == 1024
    assert runner.run(read, policy=RunnerPolicy(max_output_kb=1), stdin="x" * 4096).result == 4096
    big = runner.run("result = 1", policy=RunnerPolicy(max_stdin_kb=2), stdin="x" * 3000)
    assert big.error_kind == "bad_input" and "max_stdin_kb" in big.error and big.result is None
    with pytest.raises(ValueError, match="max_stdin_kb"):
        RunnerPolicy(max_stdin_kb=-1).validate()


def test_duration_is_the_runs_own_time_and_queueing_is_apart():
    """A run that waits for the one busy worker reports the wait as queued_ms, not as duration_ms."""
    holding = threading.Event()
    with Runner(workers=1) as r:
        # The first run says when it holds the only worker (an event, not a guess), then sleeps.
        first = r.submit("import time\nprint('holding', flush=True)\ntime.sleep(2)",
                         on_output=lambda stream, data: holding.set())
        assert holding.wait(timeout=120)
        asked = time.monotonic()
        b = r.submit("result = 1").result(timeout=120)
        waited_ms = (time.monotonic() - asked) * 1000
        a = first.result(timeout=120)
    assert a.ok and b.ok, (a, b)
    assert a.duration_ms >= 2000  # the sleep is the first run's own time
    # The second waited for the first to end: that wait is queued_ms, not its duration_ms.
    assert b.queued_ms > b.duration_ms
    assert b.queued_ms + b.duration_ms <= waited_ms


def test_configure_preloads_modules_for_run_code():
    with pytest.raises(ValueError):
        safe_py_runner.configure(preload="logging")  # a string, not a list
    with pytest.raises(ValueError):
        safe_py_runner.configure(workers=0)
    code = "import logging\nresult = logging._startTime"  # set when logging is imported
    try:
        safe_py_runner.configure(preload=["logging"], workers=1)
        first, second = run_code(code), run_code(code)
        assert first.ok and second.ok, (first.error, second.error)
        # Both fork children found the module their worker imported before any run: it was not
        # imported again, so its import-time clock reading is the same.
        assert first.result == second.result
    finally:
        safe_py_runner.configure()  # the next run_code gets the default pool again


def _session_members(sid: int) -> list:
    """Processes whose session is `sid` (field 6 of /proc/PID/stat), this test's own excluded."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[3]) == sid:
            found.append((int(entry.name), fields[0]))
    return found


def test_a_program_that_runs_once_and_exits_leaves_no_process():
    # A short-lived program: its first run_code starts one worker, and the rest of the pool (here 3 more)
    # comes up in the background afterwards; at exit, every one of them (started, starting or never
    # used) is killed and reaped. The program runs in a session of its own, so anything it leaves
    # behind (an orphan, a worker's keeper, a run's child) is still found by its session id.
    import os
    import subprocess

    script = ("import safe_py_runner\n"
              "safe_py_runner.configure(workers=4)\n"
              "r = safe_py_runner.run_code('result = 6 * 7')\n"
              "assert r.result == 42, r\n")
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, env=dict(os.environ))
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    assert proc.wait(timeout=120 * scale) == 0
    # A hang guard, not a timing: a process killed at exit may take a moment to leave the process table.
    deadline = time.monotonic() + 10 * scale
    while _session_members(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _session_members(proc.pid) == []


# Written into the scripts below: the children of the calling process (its threads' included), as pids.
_CHILDREN = ("def children():\n"
             "    out = []\n"
             "    for t in os.listdir('/proc/self/task'):\n"
             "        out += [int(p) for p in open('/proc/self/task/%s/children' % t).read().split()]\n"
             "    return out\n"
             "def wait_for_child(scale):\n"
             "    deadline = time.monotonic() + 30 * scale  # a hang guard, not a timing\n"
             "    while not children():\n"
             "        assert time.monotonic() < deadline, 'no worker started at import'\n"
             "        time.sleep(0.01)\n"
             "    return children()\n"
             "def worker_argv(worker, scale):\n"
             "    # The child is the worker once it has exec'd (before, its command line is this program's).\n"
             "    deadline = time.monotonic() + 30 * scale  # a hang guard, not a timing\n"
             "    while True:\n"
             "        argv = open('/proc/%d/cmdline' % worker).read().split('\\0')\n"
             "        if argv[0].endswith('spr-worker'):\n"
             "            return argv\n"
             "        assert time.monotonic() < deadline, argv\n"
             "        time.sleep(0.01)\n")


def _run_script(script: str, **env) -> subprocess.CompletedProcess:
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    full = "import os, sys, time\nscale = %r\n" % scale + _CHILDREN + script
    environ = {k: v for k, v in os.environ.items() if k != "SAFE_PY_RUNNER_PRESTART"}
    environ.update(env)
    proc = subprocess.run([sys.executable, "-c", full], env=environ, capture_output=True, text=True,
                          timeout=120 * scale, start_new_session=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_importing_the_package_starts_the_worker_the_first_run_takes_over():
    # The default Runner's first worker starts at import, while the rest of the program loads; the first
    # run_code takes that Runner over (none is pending afterwards) rather than starting a second pool.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "assert _core.prestart_pending()\n"
                "(worker,) = wait_for_child(scale)\n"
                "assert worker_argv(worker, scale)[0].endswith('spr-worker')\n"
                "assert safe_py_runner.run_code('result = 6 * 7').result == 42\n"
                "assert not _core.prestart_pending()\n"
                "assert worker in children(), 'the first run did not use the worker started at import'\n")


def test_a_program_that_only_imports_the_package_leaves_no_process_or_directory():
    proc = _run_script("import safe_py_runner\n"
                       "(worker,) = wait_for_child(scale)\n"
                       "argv = worker_argv(worker, scale)\n"
                       "print(worker, argv[argv.index('--scratch') + 1])\n")
    worker, scratch = proc.stdout.split()
    assert scratch.startswith("/tmp/spr-")
    assert not os.path.exists(scratch)  # removed at exit, before the program ended
    assert not os.path.exists("/proc/%s" % worker) or "spr-worker" not in open("/proc/%s/cmdline" % worker).read()


def test_prestart_off_configure_and_fork_children():
    # SAFE_PY_RUNNER_PRESTART=0: nothing starts at import.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "assert not _core.prestart_pending()\n"
                "time.sleep(0.5)\n"
                "assert children() == [], children()\n"
                "assert safe_py_runner.run_code('result = 1').result == 1\n", SAFE_PY_RUNNER_PRESTART="0")
    # configure() with options other than the defaults stops the worker started at import, at once.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "wait_for_child(scale)\n"
                "safe_py_runner.configure(workers=1)\n"
                "assert not _core.prestart_pending() and children() == [], children()\n"
                "assert safe_py_runner.run_code('result = 2').result == 2\n")
    # The first Runner built with other arguments stops it too (a program of its own Runners keeps no idle
    # worker for the defaults), and runs on its own workers.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "(early,) = wait_for_child(scale)\n"
                "with safe_py_runner.Runner(workers=1) as r:\n"
                "    assert not _core.prestart_pending() and early not in children()\n"
                "    assert r.run('result = 5').result == 5\n")
    # A child forked after the import does not take over its parent's Runner (its threads are not in the
    # child): its run_code starts a pool of its own, and the parent's still serves the parent.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "wait_for_child(scale)\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    ok = safe_py_runner.run_code('result = 3').result == 3\n"
                "    own = children() != []  # its run went to a worker of its own, not to the parent's\n"
                "    os._exit(0 if ok and own else 1)\n"
                "_, status = os.waitpid(pid, 0)\n"
                "assert status == 0, status\n"
                "assert _core.prestart_pending()\n"
                "assert safe_py_runner.run_code('result = 4').result == 4\n")


def test_a_program_changed_since_the_import_gets_a_worker_started_with_its_new_state():
    # Red team round 16: a worker takes the program's environment (PYTHONPATH decides what it mounts),
    # priority and limits when it starts; the one started at import is not used once they changed.
    for change in ("os.environ['PYTHONPATH'] = '/nonexistent'", "os.nice(1)",
                   "os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))",
                   "import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))"):
        _run_script("import safe_py_runner\n"
                    "from safe_py_runner import _core\n"
                    "(early,) = wait_for_child(scale)\n"
                    + change + "\n"
                    "assert safe_py_runner.run_code('result = 7').result == 7\n"
                    "assert not _core.prestart_pending()\n"
                    "assert early not in children(), %r\n" % change)


def test_a_child_forked_after_the_import_has_no_prestarted_worker_of_its_own():
    # Any generation of child (a pid can come back to a grandchild) sees its parent's Runner as not its own.
    _run_script("import safe_py_runner\n"
                "from safe_py_runner import _core\n"
                "wait_for_child(scale)\n"
                "pid = os.fork()\n"
                "if pid == 0:\n"
                "    os._exit(1 if _core.prestart_pending() else 0)\n"
                "_, status = os.waitpid(pid, 0)\n"
                "assert status == 0, 'the child took its parent\\'s prestarted Runner for its own'\n"
                "assert _core.prestart_pending()\n")


def test_an_import_that_fails_after_the_worker_started_leaves_nothing_at_exit():
    proc = _run_script("sys.modules['safe_py_runner.batch'] = None  # the rest of the package's import fails\n"
                       "try:\n"
                       "    import safe_py_runner\n"
                       "except ImportError:\n"
                       "    pass\n"
                       "else:\n"
                       "    raise AssertionError('the import did not fail')\n"
                       "(worker,) = wait_for_child(scale)\n"
                       "argv = worker_argv(worker, scale)\n"
                       "print(worker, argv[argv.index('--scratch') + 1])\n")
    worker, scratch = proc.stdout.split()
    assert scratch.startswith("/tmp/spr-")
    assert not os.path.exists(scratch)
    assert not os.path.exists("/proc/%s" % worker) or "spr-worker" not in open("/proc/%s/cmdline" % worker).read()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its user (the case under test)")
def test_a_program_that_drops_root_after_the_import_exits_and_leaves_no_worker():
    # Red team round 16: the worker started at import runs as root; a program that then drops root may not
    # signal it. Its first run gets a worker of the new user, and its exit neither hangs nor leaves the old one.
    proc = _run_script("import safe_py_runner\n"
                       "(early,) = wait_for_child(scale)\n"
                       "print(early, flush=True)\n"
                       "os.setgroups([]); os.setgid(65533); os.setuid(65533)  # not 65534: root's workers run as that\n"
                       "assert safe_py_runner.run_code('result = 8').result == 8\n"
                       "assert early not in children()\n")
    early = proc.stdout.split()[0]
    deadline = time.monotonic() + 30 * max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))  # hang guard
    while os.path.exists("/proc/%s" % early) and time.monotonic() < deadline:
        try:
            if "spr-worker" not in open("/proc/%s/cmdline" % early).read():
                break
        except OSError:
            break
        time.sleep(0.05)
    alive = os.path.exists("/proc/%s" % early) and "spr-worker" in open("/proc/%s/cmdline" % early).read()
    assert not alive, "the worker started at import outlived the program"


_DESCENDANTS = ("def descendants(pid):\n"
                "    out, todo = [], [pid]\n"
                "    while todo:\n"
                "        p = todo.pop()\n"
                "        for t in os.listdir('/proc/%d/task' % p):\n"
                "            kids = [int(k) for k in open('/proc/%d/task/%s/children' % (p, t)).read().split()]\n"
                "            out += kids\n"
                "            todo += kids\n"
                "    return out\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can change its user (the case under test)")
@pytest.mark.parametrize("isolation", ["namespace", "subinterpreter"])
def test_a_worker_the_program_may_no_longer_signal_still_ends_with_its_run(isolation):
    # Red team round 17: after the program dropped root, its kill of a run past its deadline fails (EPERM), and a
    # run that keeps catching its soft timeout went on spinning after the program exited. The worker's keeper
    # (outside the sandbox) ends the worker when the program closes its end of the socket.
    proc = _run_script(_DESCENDANTS +
                       "from safe_py_runner import Runner, RunnerPolicy\n"
                       "r = Runner(RunnerPolicy(isolation=%r, timeout_seconds=1), workers=1)\n"
                       "assert r.run('result = 1').result == 1\n"
                       "print(' '.join(str(p) for p in descendants(os.getpid())), flush=True)\n"
                       "os.setgroups([]); os.setgid(65533); os.setuid(65533)  # not 65534: its workers run as that\n"
                       "res = r.run('while True:\\n    try:\\n        while True: pass\\n    except BaseException: pass')\n"
                       "assert not res.ok, res\n" % isolation, SAFE_PY_RUNNER_PRESTART="0")
    pids = proc.stdout.split()
    assert pids
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))

    def left():
        out = []
        for p in pids:
            try:
                if "spr-worker" in open("/proc/%s/cmdline" % p).read():
                    out.append(p)
            except OSError:
                pass
        return out

    deadline = time.monotonic() + 30 * scale  # a hang guard, not a timing
    while left() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert left() == [], "the worker's processes outlived the program"


def test_a_fork_workers_first_run_and_later_ones_use_the_warm_modules():
    # A fork-mode worker imports its [warm] modules (bootstrap_py/preload.txt) after its hello, once idle:
    # the first run may come from a parent without them, later ones from the warm parent. Both kinds of run
    # use them as any run does (code those imports generate at import time, such as a dataclass's or a
    # named tuple's methods, included), and the output is the same.
    code = ("import collections, dataclasses, datetime, inspect, json, re, textwrap, typing\n"
            "@dataclasses.dataclass\nclass P:\n    x: int\n    tags: typing.List[str]\n"
            "Point = collections.namedtuple('Point', 'a b')\n"
            "result = [json.dumps(dataclasses.asdict(P(3, ['a']))), str(inspect.signature(P)),\n"
            "          textwrap.dedent('  x'), re.sub('a', 'b', 'aa'), Point(1, 2)._asdict()['b'],\n"
            "          datetime.date(2020, 1, 2).isoformat()]")
    expected = ['{"x": 3, "tags": ["a"]}', "(x: int, tags: List[str]) -> None", "x", "bb", 2, "2020-01-02"]
    with Runner(workers=1) as r:
        first = r.run(code)
        assert first.ok, first.error
        assert first.result == expected
        # Requests right behind it stop the deferred imports between two modules: runs from a parent with
        # only some of them imported (and marked as the runtime's) work the same.
        for _ in range(5):
            soon = r.run(code)
            assert soon.ok, soon.error
            assert soon.result == expected
        for _ in range(3):
            time.sleep(0.3)  # idle: the worker imports what it deferred (not a timing: each run must pass anyway)
            later = r.run(code)
            assert later.ok, later.error
            assert later.result == expected


@pytest.mark.parametrize("isolation", ["fork", "process"])
def test_cpu_of_a_runs_threads_counts_for_that_run_and_not_the_next(isolation):
    # Red team, round 9: in fork mode a run whose thread burned 1.65 s of CPU under cpu_time_seconds=0.5 succeeded
    # (the engine's timer counts the run's main thread, the backstop is the limit rounded up + 1 s), and the run
    # after it was answered cpu_time (its child was reaped, and counted, in the next run's window).
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    spin = ("import threading, time\n"
            "def spin():\n"
            "    end = time.process_time() + 1.2\n"
            "    while time.process_time() < end:\n"
            "        pass\n"
            "t = threading.Thread(target=spin)\nt.start()\nt.join()\nresult = 'done'")
    with Runner(workers=1) as r:
        for _ in range(2):
            hog = r.run(spin, policy=RunnerPolicy(isolation=isolation, cpu_time_seconds=0.5,
                                                  timeout_seconds=20 * scale))
            assert hog.error_kind == "cpu_time", (hog.error_kind, hog.error, hog.result)
            assert hog.resource_exceeded
            after = r.run("result = 1", policy=RunnerPolicy(isolation=isolation, cpu_time_seconds=0.3,
                                                            timeout_seconds=20 * scale))
            assert after.ok, (after.error_kind, after.error)


def test_a_submitted_run_waits_its_turn_behind_a_long_run_and_runs():
    # One worker, busy with a run longer than twice start_timeout_seconds: the next submitted run waits for
    # that worker (its wait shows in queued_ms) instead of failing with worker_unavailable, and runs after it.
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    with Runner(RunnerPolicy(timeout_seconds=30 * scale), workers=1, start_timeout_seconds=1 * scale) as r:
        assert r.run("result = 0").ok  # the worker is up: no start is waited for below
        long_run = r.submit(f"import time\ntime.sleep({3 * scale})\nresult = 1")
        time.sleep(0.2)
        short_run = r.submit("result = 2")
        first, second = long_run.result(timeout=60 * scale), short_run.result(timeout=60 * scale)
        assert first.ok and first.result == 1, first.error
        assert second.ok and second.result == 2, second.error
        assert second.queued_ms > 1000  # it waited for the long run's worker


def test_long_runs_on_two_pools_do_not_hold_back_a_run_of_a_third():
    # Runs whose policies need different workers (here: scratch sizes) wait in their own pools; two long ones
    # must not take every thread that runs submitted work while a third pool's worker is idle.
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    hold = 4 * scale
    with Runner(workers=1) as r:
        assert r.run("result = 0").ok
        long_runs = [r.submit("import time\ntime.sleep(input_data)\nresult = 'long'", hold,
                              policy=RunnerPolicy(scratch_limit_mb=mb, timeout_seconds=3 * hold)) for mb in (40, 48)]
        time.sleep(0.3)
        quick = r.submit("result = 'quick'").result(timeout=60 * scale)
        assert quick.ok and quick.result == "quick", quick.error
        assert not any(f.done() for f in long_runs)  # answered while both long runs still hold their workers
        assert all(f.result(timeout=60 * scale).ok for f in long_runs)
