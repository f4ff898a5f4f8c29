"""Files in and out of a run from Python: files=, collect=, RunnerResult.files, a matplotlib PNG."""

import pytest

from safe_py_runner import Runner, RunnerPolicy, run_code

# `open` is blocked by default; these runs read and write their own directory.
OPEN = RunnerPolicy(blocked_builtins=["eval", "exec", "compile", "breakpoint"])


def test_run_code_round_trip_text_and_bytes():
    r = run_code("data = open('in.bin', 'rb').read()\n"
                 "open('out.bin', 'wb').write(data[::-1])\n"
                 "open('note.txt', 'w').write(open('in.txt').read() + '!')\n",
                 policy=OPEN, files={"in.txt": "hé", "in.bin": b"\x00\xff\x01"}, collect=["out.bin", "*.txt"])
    assert r.ok, r.error
    assert r.files == {"out.bin": b"\x01\xff\x00", "note.txt": "hé!", "in.txt": "hé"}
    assert r.files_left_out == []


def test_a_hundred_files_all_come_back():
    # Past the run's descriptor limit (about 60 matches) the collector used to drop the rest silently.
    r = run_code("for i in range(100):\n    open('out%03d.txt' % i, 'w').write(str(i))\n",
                 policy=OPEN, collect=["*.txt"])
    assert r.ok, r.error
    assert r.files == {"out%03d.txt" % i: str(i) for i in range(100)}
    assert r.files_left_out == [] and r.files_truncated is False


def test_runner_submit_and_the_cap():
    with Runner(OPEN, workers=1) as runner:
        future = runner.submit("open('big.txt', 'w').write('x' * 5000)\nopen('small.txt', 'w').write('s')",
                               policy=RunnerPolicy(blocked_builtins=["eval"], max_files_kb=2), collect=["*.txt"])
        r = future.result()
        assert r.ok, r.error
        assert r.files == {"small.txt": "s"}
        assert r.files_left_out == ["big.txt"]


def test_refused_names_and_types():
    r = run_code("print('ran')", files={"../escape.txt": "x"})
    assert r.error_kind == "bad_input" and "'..' component" in r.error and r.stdout == ""
    r = run_code("print('ran')", files={"/tmp/escape.txt": "x"})
    assert r.error_kind == "bad_input" and "absolute" in r.error
    with pytest.raises(TypeError):
        run_code("pass", files={"a.txt": 3})
    with pytest.raises(TypeError):
        run_code("pass", collect="*.png")


def test_matplotlib_png_comes_back_as_bytes():
    r = run_code("import matplotlib\n"
                 "matplotlib.use('Agg')\n"
                 "import matplotlib.pyplot as plt\n"
                 "plt.plot([1, 2, 3], [1, 4, 9])\n"
                 "plt.savefig('plot.png')\n",
                 policy=RunnerPolicy(isolation="fork", timeout_seconds=60), collect=["*.png"])
    assert r.ok, r.error
    assert r.files["plot.png"][:8] == b"\x89PNG\r\n\x1a\n"
