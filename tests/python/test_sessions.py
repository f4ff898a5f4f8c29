"""Sessions, streamed output, cancellation and async iteration through the Python package."""

import asyncio
import os
import threading
import time

import pytest

from conftest import MODES
from safe_py_runner import Runner, RunnerPolicy, SessionLimitError


def test_session_state_persists_and_survives_a_raise(runner):
    with runner.open_session() as s:
        assert s.run("import math\nn = 0").ok
        for i in range(1, 101):
            r = s.run("n += 1\nresult = n")
            assert r.ok and r.result == i
        bad = s.run("raise KeyError('k')")
        assert bad.error_kind == "exception"
        again = s.run("result = math.floor(n / 2)")
        assert again.ok and again.result == 50
        shown = s.run("n * 2", repr=True)
        assert shown.repr == "200"
        v = s.variables()
        assert v["n"] == {"type": "int", "value": 100}
        assert v["math"]["repr"] == "<module 'math'>"


def test_sessions_are_separate_and_a_timeout_ends_one_without_a_process_left(runner):
    with runner.open_session() as a, runner.open_session() as b:
        assert a.run("secret = 1").ok
        assert b.run("result = 'secret' in globals()").result is False
        pid = a.pid
        assert os.path.exists(f"/proc/{pid}")
        r = a.run("while True: pass", timeout_seconds=0.3)
        assert r.error_kind == "session_lost" and r.timed_out
        assert a.run("result = secret").error_kind == "session_lost"
        assert not a.alive
        assert not os.path.exists(f"/proc/{pid}")
        assert b.run("result = 2").result == 2


def test_closed_and_expired_sessions_leave_no_process():
    with Runner(workers=1, session_idle_seconds=0.3) as r:
        s = r.open_session()
        assert s.run("x = 1").ok
        pid = s.pid
        s.close()
        assert not os.path.exists(f"/proc/{pid}")
        idle = r.open_session()
        assert idle.run("x = 1").ok
        pid = idle.pid
        end = time.monotonic() + 10
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < end:
            time.sleep(0.02)
        assert not os.path.exists(f"/proc/{pid}")
        assert idle.run("result = x").error_kind == "session_lost"


def test_session_limit():
    with Runner(workers=1, max_sessions=1) as r:
        with r.open_session():
            with pytest.raises(SessionLimitError):
                r.open_session()
        with r.open_session() as s:
            assert s.run("result = 1").ok


@pytest.mark.parametrize("mode", MODES)
def test_streamed_chunks_add_up_to_the_output(runner, mode):
    chunks = []
    code = "import time\nfor i in range(4):\n    print('line', i)\n    time.sleep(0.02)\nresult = 1"
    r = runner.run(code, policy=RunnerPolicy(isolation=mode),
                   on_output=lambda stream, data: chunks.append((stream, data)))
    assert r.ok
    assert "".join(d for s, d in chunks if s == "stdout") == r.stdout == "".join(f"line {i}\n" for i in range(4))


@pytest.mark.parametrize("mode", MODES)
def test_future_cancel_stops_a_running_run_and_the_pool_recovers(mode):
    with Runner(RunnerPolicy(isolation=mode, timeout_seconds=60), workers=1) as r:
        started = threading.Event()
        f = r.submit("print('go', flush=True)\nwhile True: pass", on_output=lambda s, d: started.set())
        assert started.wait(30)
        assert f.cancel()
        assert f.cancelled()
        queued = [r.submit("while True: pass") for _ in range(3)]
        assert queued[-1].cancel()
        for q in queued:
            q.cancel()
        assert r.run("result = 5").result == 5


def test_async_iteration_and_task_cancel(runner):
    async def main():
        it = runner.stream("import time\nfor i in range(3):\n    print(i)\n    time.sleep(0.02)\nresult = 'ok'")
        got = [data async for stream, data in it]
        result = await it.result()
        assert "".join(got) == result.stdout == "0\n1\n2\n"
        assert result.result == "ok"
        with runner.open_session() as s:
            assert (await s.run_async("x = 3")).ok
            parts = [d async for _, d in s.stream("print(x * 2)")]
            assert parts == ["6\n"]
            started = threading.Event()
            task = asyncio.ensure_future(s.run_async("print('go', flush=True)\nwhile True: pass", timeout_seconds=60,
                                                     on_output=lambda _s, _d: started.set()))
            end = time.monotonic() + 30
            while not started.is_set() and time.monotonic() < end:
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            end = time.monotonic() + 10
            while s.alive and time.monotonic() < end:
                await asyncio.sleep(0.02)
            assert not s.alive  # the running call was stopped, which ends the session

    asyncio.run(main())


def test_close_cancels_queued_futures():
    r = Runner(RunnerPolicy(timeout_seconds=60), workers=1)
    futures = [r.submit("while True: pass") for _ in range(4)]
    r.close()
    for f in futures:
        assert f.done()
        assert f.cancelled() or f.result().error_kind in ("worker_unavailable", "cancelled")
