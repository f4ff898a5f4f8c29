"""The original package's behaviour (shared/spec/seed-compat.md) through the Python API."""

import math
import subprocess
import sys

import pytest

from safe_py_runner import RunnerPolicy, RunnerResult, run_code

# --- policy: fields and defaults -------------------------------------------------------------


def test_policy_defaults_are_the_originals():
    p = RunnerPolicy()
    assert p.mode == "restrict"
    assert p.timeout_seconds == 5
    assert p.memory_limit_mb == 256
    assert p.max_output_kb == 128
    assert p.blocked_imports == ["os", "subprocess", "socket", "ctypes", "importlib"]
    assert p.allowed_imports == []
    assert p.blocked_builtins == ["eval", "exec", "open", "compile", "breakpoint"]
    assert p.allowed_builtins == []
    assert p.blocked_globals == [] and p.allowed_globals == []
    assert p.extra_globals == {}
    assert p.config_path is None


def test_policy_positional_order_is_the_originals():
    p = RunnerPolicy("allow", 2, 64, 8, ["math"], ["os"], ["len"], ["eval"], ["x"], ["y"], {"k": 1})
    assert (p.mode, p.timeout_seconds, p.memory_limit_mb, p.max_output_kb) == ("allow", 2, 64, 8)
    assert (p.allowed_imports, p.blocked_imports, p.allowed_builtins, p.blocked_builtins) == (
        ["math"], ["os"], ["len"], ["eval"])
    assert (p.allowed_globals, p.blocked_globals, p.extra_globals) == (["x"], ["y"], {"k": 1})


def test_default_lists_are_not_shared():
    a, b = RunnerPolicy(), RunnerPolicy()
    a.blocked_imports.append("json")
    assert "json" not in b.blocked_imports


def test_mode_is_checked_with_the_originals_message():
    with pytest.raises(ValueError, match="mode must be 'allow' or 'restrict'"):
        RunnerPolicy(mode="permissive")


def test_slots_refuse_unknown_attributes():
    with pytest.raises(AttributeError):
        RunnerPolicy().timeout = 3  # a typo must not pass silently


def test_invalid_values_are_a_value_error_naming_the_field():
    with pytest.raises(ValueError, match="memory_limit_mb"):
        run_code("result = 1", policy=RunnerPolicy(memory_limit_mb=0))
    with pytest.raises(ValueError, match="blocked_imports"):
        run_code("result = 1", policy=RunnerPolicy(blocked_imports="os"))
    with pytest.raises(ValueError, match="must contain only strings"):
        run_code("result = 1", policy=RunnerPolicy(blocked_imports=["os", 1]))


# --- a run ------------------------------------------------------------------------------------


def test_input_data_and_result_defaults():
    r = run_code("result = [input_data, type(input_data).__name__]")
    assert r.ok and r.result == [{}, "dict"]
    assert run_code("x = 1").result is None


def test_input_keys_are_variables_with_the_originals_rules():
    data = {"x": 9, "not-valid": 1, "_private": 2, "__dunder__": 3, "input_data": 4, "ok_name": 5}
    code = ("g = globals()\n"
            "result = {k: (k in g) for k in ['x', 'not-valid', '_private', '__dunder__', 'ok_name']}\n"
            "result['input_data'] = input_data['input_data']")
    r = run_code(code, input_data=data)
    assert r.ok, r.error
    assert r.result == {"x": True, "not-valid": False, "_private": False, "__dunder__": False,
                        "ok_name": True, "input_data": 4}


def test_an_input_key_named_result_does_not_preset_result():
    r = run_code("pass", input_data={"result": "malicious"})
    assert r.ok and r.result is None
    assert run_code("result = 'valid'", input_data={"result": "malicious"}).result == "valid"


def test_a_non_object_input_is_input_data_only():
    r = run_code("result = input_data", input_data=[1, 2, 3])
    assert r.ok and r.result == [1, 2, 3]


def test_an_empty_input_is_an_empty_dict_as_in_the_original():
    assert run_code("result = input_data", input_data=[]).result == {}


def test_a_large_input_arrives_exact_as_json_loads_gives_it():
    # The run decodes input_data's text itself, as the original's json.loads does: a 100-bit integer
    # stays an integer, text with escapes and non-ASCII stays the same.
    rows = [{"id": i, "name": f'caf\u00e9 "{i}"\n', "v": i / 4} for i in range(2000)]
    r = run_code("result = [big == 2 ** 100, rows == input_data['rows'], len(rows)]",
                 input_data={"big": 2 ** 100, "rows": rows})
    assert r.ok, r.error
    assert r.result == [True, True, 2000]


def test_input_data_that_is_not_json_is_refused_before_any_worker_sees_it():
    # The package checks input_data's text once and the engine then splices it into the request unscanned:
    # NaN, Infinity and lone surrogates (which json.dumps writes) must be refused here, with a ValueError.
    for bad in ({"x": float("nan")}, {"x": float("inf")}, {"s": "\ud800"}):
        with pytest.raises(ValueError, match="invalid JSON in input_data"):
            run_code("result = 1", input_data=bad)
    assert run_code("result = 1").ok  # and the process-wide runner is still there


def test_large_input_arrives_exact_and_the_callers_memory_stays_bounded():
    # About 24 MiB of records in a fresh program: the run's own JSON text of input_data is the caller's,
    # byte for byte (length and CRC-32), and the caller's peak RSS grows during the call by less than
    # three copies of the text plus 64 MiB (json.dumps' string, the engine's copy of it, the request).
    import os
    import subprocess
    import sys

    script = r"""
import json, resource, sys, zlib
from safe_py_runner import RunnerPolicy, run_code
rows = [{"id": i, "name": "caf\u00e9-%d" % i, "price": i * 0.37, "tags": ["a", "b"], "ok": i % 3 == 0}
        for i in range(330000)]
data = {"items": rows, "big": 2 ** 100}
text = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
scale = float(sys.argv[1])
policy = RunnerPolicy(timeout_seconds=120 * scale, memory_limit_mb=4096)
assert run_code("result = 1", {"items": []}, policy).ok
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
r = run_code("import json, zlib\n"
             "t = json.dumps(input_data, separators=(',', ':'), ensure_ascii=False).encode()\n"
             "result = [len(t), zlib.crc32(t)]", data, policy)
grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
assert r.ok, r.error
assert r.result == [len(text), zlib.crc32(text)], (r.result, len(text))
assert grew < 3 * len(text) + (64 << 20), (grew, len(text))
print(len(text) >> 20, grew >> 20)
"""
    scale = max(1.0, float(os.environ.get("SPR_TEST_TIME_SCALE", "1")))
    out = subprocess.run([sys.executable, "-c", script, str(scale)], capture_output=True, text=True,
                         timeout=600 * scale, env=dict(os.environ))
    assert out.returncode == 0, out.stderr[-2000:]


def test_input_that_json_cannot_hold_is_a_type_error():
    with pytest.raises(TypeError):
        run_code("result = 1", input_data={"s": {1, 2}})


def test_result_conversion():
    r = run_code("result = {'t': (1, 2), 's': {3}, 'o': object, 'n': None, 'f': 2.5, 'b': True}")
    assert r.ok
    assert r.result["t"] == [1, 2]
    assert r.result["s"] == "{3}"
    assert r.result["o"] == "<class 'object'>"
    assert r.result["n"] is None and r.result["f"] == 2.5 and r.result["b"] is True


def test_nan_and_big_ints_become_text():
    r = run_code("result = [float('nan'), 2 ** 100]")
    assert r.ok
    assert r.result == ["nan", str(2 ** 100)]


def test_stdout_and_stderr_are_captured():
    r = run_code("import sys\nprint('Hello')\nprint('World')\nprint('oops', file=sys.stderr)")
    assert r.ok
    assert "Hello\nWorld" in r.stdout
    assert "oops" in r.stderr


def test_json_types_round_trip():
    r = run_code("result = {'is_valid': True, 'none_val': None, 'pi': 3.14159, 'l': [1, 2, 3]}")
    assert r.result == {"is_valid": True, "none_val": None, "pi": 3.14159, "l": [1, 2, 3]}


# --- imports and builtins ---------------------------------------------------------------------


@pytest.mark.parametrize("code", ["import os", "import os as my_os", "from os import path",
                                  "os = __import__('os')", "import os.path"])
def test_blocked_import_restrict_mode(code):
    r = run_code(code)
    assert not r.ok
    assert "blocked by policy" in r.error
    assert r.error_kind == "blocked_import"
    assert r.exit_code == 1


def test_blocked_import_message_is_exact():
    assert run_code("import subprocess").error == "ImportError: Import 'subprocess' is blocked by policy"


def test_importlib_is_blocked_in_every_mode():
    r = run_code("import importlib\nos = importlib.import_module('os')",
                 policy=RunnerPolicy(blocked_imports=[]))
    assert not r.ok and "blocked by policy" in r.error
    allow = RunnerPolicy(mode="allow", allowed_imports=["importlib", "math"])
    assert run_code("import importlib", policy=allow).error_kind == "blocked_import"


def test_allow_mode_only_allowed_lists_decide():
    p = RunnerPolicy(mode="allow", allowed_imports=["math", "os"], allowed_builtins=["eval", "len"])
    r = run_code("import os\nresult = [eval('6 * 7'), len(os.sep)]", policy=p)
    assert r.ok, r.error
    assert r.result == [42, 1]
    assert run_code("import json", policy=p).error == "ImportError: Import 'json' is not allowed by policy"
    assert run_code("result = abs(-1)", policy=p).error == "NameError: name 'abs' is not defined"


def test_allow_mode_filters_globals_and_extra_globals():
    p = RunnerPolicy(mode="allow", allowed_imports=["math"], allowed_builtins=["len", "sum", "range"],
                     allowed_globals=["x", "helper"], extra_globals={"helper": 9, "blocked_helper": 99})
    r = run_code("import math\nresult = math.sqrt(x) + helper", input_data={"x": 16}, policy=p)
    assert r.ok and r.result == 13.0
    assert "name 'blocked_helper' is not defined" in run_code("result = blocked_helper", policy=p).error


@pytest.mark.parametrize("name,code", [("eval", "x = eval('1 + 1')"), ("exec", "exec('x = 1')"),
                                       ("open", "f = open('test.txt', 'w')")])
def test_blocked_builtins_are_absent(name, code):
    r = run_code(code)
    assert not r.ok
    assert r.error == f"NameError: name '{name}' is not defined"


def test_a_builtin_the_policy_does_not_block_is_there():
    p = RunnerPolicy(blocked_builtins=["len"])
    assert run_code("result = eval('6 * 7')", policy=p).result == 42
    assert run_code("result = len([1])", policy=p).error == "NameError: name 'len' is not defined"


def test_stdlib_internal_imports_proceed():
    # pathlib and json load os and more themselves; the policy applies to the snippet's own imports.
    r = run_code("import pathlib, json\nresult = pathlib.PurePosixPath('a/b').name")
    assert r.ok, r.error
    assert r.result == "b"


# --- extra_globals ----------------------------------------------------------------------------


def test_extra_globals_are_variables_and_win_over_input_keys():
    p = RunnerPolicy(extra_globals={"rate": 0.2, "cfg": {"a": [1, 2]}})
    r = run_code("result = [rate, cfg['a'], input_data['rate']]", input_data={"rate": 0.9}, policy=p)
    assert r.ok
    assert r.result == [0.2, [1, 2], 0.9]


def test_extra_globals_may_start_with_an_underscore():
    r = run_code("result = _rate", policy=RunnerPolicy(extra_globals={"_rate": 0.2}))
    assert r.ok and r.result == 0.2


def test_blocked_globals_filter_input_keys_and_extra_globals():
    p = RunnerPolicy(blocked_globals=["secret", "hidden"], extra_globals={"hidden": 1})
    r = run_code("g = globals()\nresult = ['secret' in g, 'hidden' in g, x]", input_data={"secret": 1, "x": 2},
                 policy=p)
    assert r.result == [False, False, 2]


# --- policy files -----------------------------------------------------------------------------


def test_policy_file_blocks_imports_builtins_and_globals(tmp_policy):
    path = tmp_policy('[policy]\nmode = "restrict"\nblocked_imports = ["math"]\n'
                      'blocked_builtins = ["len"]\nblocked_globals = ["x"]\n')
    assert "blocked by policy" in run_code("import math", policy_file=path).error
    assert "name 'len' is not defined" in run_code("result = len([1])", policy_file=path).error
    r = run_code("result = x if 'x' in globals() else 'missing'", input_data={"x": 7}, policy_file=path)
    assert r.ok and r.result == "missing"


def test_policy_file_top_level_keys(tmp_policy):
    p = RunnerPolicy.from_file(tmp_policy("timeout_seconds = 2.5\nblocked_imports = ['json']\n"))
    assert p.timeout_seconds == 2.5 and p.blocked_imports == ["json"]


def test_policy_file_lists_left_out_are_empty(tmp_policy):
    p = RunnerPolicy.from_file(tmp_policy("[policy]\nmode = 'restrict'\n"))
    assert p.blocked_imports == [] and p.blocked_builtins == []
    assert run_code("import os\nresult = os.sep", policy=p).result == "/"


def test_policy_file_error_messages(tmp_policy):
    with pytest.raises(ValueError, match="'blocked_imports' must be a list of strings"):
        RunnerPolicy.from_file(tmp_policy("blocked_imports = 'os'\n"))
    with pytest.raises(ValueError, match="'blocked_builtins' must contain only strings"):
        RunnerPolicy.from_file(tmp_policy("blocked_builtins = ['eval', 1]\n"))
    with pytest.raises(ValueError, match="'extra_globals' must be a TOML table"):
        RunnerPolicy.from_file(tmp_policy("extra_globals = 3\n"))
    with pytest.raises(ValueError, match="mode must be 'allow' or 'restrict'"):
        RunnerPolicy.from_file(tmp_policy("mode = 'loose'\n"))


def test_config_path_is_read_when_the_policy_is_used(tmp_policy):
    path = tmp_policy("[policy]\nblocked_imports = ['json']\n[policy.extra_globals]\nk = 5\n")
    p = RunnerPolicy(config_path=path)
    r = run_code("result = k", policy=p)
    assert r.ok and r.result == 5
    assert "blocked by policy" in run_code("import json", policy=p).error
    assert RunnerPolicy.from_file(path).config_path == path


def test_policy_and_policy_file_together_is_an_error(tmp_policy):
    path = tmp_policy('[policy]\nmode = "restrict"\n')
    with pytest.raises(ValueError, match="Provide either 'policy' or 'policy_file', not both"):
        run_code("result = 1", policy=RunnerPolicy(), policy_file=path)


# --- the result -------------------------------------------------------------------------------


def test_result_has_the_originals_attributes_first():
    r = run_code("result = 1")
    assert isinstance(r, RunnerResult)
    assert (r.ok, r.result, r.stdout, r.stderr, r.timed_out, r.resource_exceeded, r.error, r.exit_code) == (
        True, 1, "", "", False, False, None, 0)
    assert r.error_kind == "none" and r.isolation == "fork" and r.duration_ms > 0


def test_syntax_error():
    r = run_code("def incomplete_function(")
    assert not r.ok and r.error.startswith("SyntaxError: ") and r.exit_code == 1
    assert r.error_kind == "syntax"


def test_exception_with_traceback_in_stderr():
    r = run_code("x = 1 / 0")
    assert not r.ok
    assert r.error == "ZeroDivisionError: division by zero"
    assert r.exit_code == 1
    assert "Traceback" in r.stderr and "ZeroDivisionError" in r.stderr


# What python3 itself prints for an uncaught exception (the original's stderr is a python3's): the same
# interpreter runs each snippet under a driver whose own frame is left out, and prints with the default hook.
_PRINTS_LIKE_PYTHON3 = {
    "in-a-function": "def f(x):\n    return 1 / x\nf(0)\n",
    "indentation": "if True:\npass\n",
    "unclosed": "x = (1,\n",
    "chained": "try:\n    {}['k']\nexcept KeyError as e:\n    raise ValueError('bad') from e\n",
    "during-handling": "try:\n    1 / 0\nexcept ZeroDivisionError:\n    undefined_name\n",
    "library-source-lines": "import json\njson.loads('{x')\n",
    "group": "raise ExceptionGroup('eg', [ValueError(1), TypeError(2)])\n",
    "unprintable": "class E(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise E()\n",
}
_PYTHON3_DRIVER = """
import sys
source = sys.stdin.read()
try:
    code = compile(source, '<string>', 'exec')
except SyntaxError as e:
    sys.__excepthook__(type(e), e.with_traceback(None), None)
else:
    try:
        exec(code, {'__name__': '__main__'})
    except BaseException as e:
        sys.__excepthook__(type(e), e.with_traceback(e.__traceback__.tb_next), e.__traceback__.tb_next)
"""


@pytest.mark.parametrize("code", list(_PRINTS_LIKE_PYTHON3.values()), ids=list(_PRINTS_LIKE_PYTHON3))
def test_a_failed_run_prints_what_python3_prints(code):
    expected = subprocess.run([sys.executable, "-I", "-c", _PYTHON3_DRIVER], input=code, capture_output=True,
                              text=True).stderr
    assert expected
    r = run_code(code, python_executable=sys.executable)
    assert not r.ok
    assert r.stderr == expected


@pytest.mark.parametrize("code,ok,exit_code,error", [
    ("import sys\nsys.exit(0)", True, 0, None),
    ("raise SystemExit", True, 0, None),
    ("import sys\nsys.exit(1)", False, 1, "SystemExit: 1"),
    ("raise SystemExit(3)", False, 3, "SystemExit: 3"),
    ("import sys\nsys.exit('stop now')", False, 1, "SystemExit: stop now"),
])
def test_system_exit(code, ok, exit_code, error):
    r = run_code(code)
    assert (r.ok, r.exit_code, r.error) == (ok, exit_code, error)
    if isinstance(error, str) and "stop now" in error:
        assert "stop now" in r.stderr


def test_timeout_with_the_originals_message():
    r = run_code("while True:\n    pass", policy=RunnerPolicy(timeout_seconds=1))
    assert not r.ok and r.timed_out
    assert r.exit_code == 124
    assert r.error == "Execution timed out after 1s"


def test_timeout_zero_is_the_originals_floor_of_one_second():
    p = RunnerPolicy(timeout_seconds=0)
    assert run_code("result = 3", policy=p).result == 3
    r = run_code("while True:\n    pass", policy=p)
    assert r.timed_out and r.error == "Execution timed out after 1s"


def test_memory_limit():
    r = run_code("x = [i for i in range(100_000_000)]", policy=RunnerPolicy(memory_limit_mb=50))
    assert not r.ok
    assert r.resource_exceeded
    assert r.error == "Memory limit exceeded"
    assert r.exit_code == 2


def test_output_cap():
    r = run_code("print('a' * (20 * 1024))", policy=RunnerPolicy(max_output_kb=10))
    assert r.ok
    assert 9 * 1024 <= len(r.stdout) <= 10 * 1024
    assert r.stdout_truncated


def test_code_that_is_not_valid_utf8_cannot_reach_the_engine():
    # A str holding a lone surrogate is not UTF-8; it is refused like CPython refuses the bytes.
    r = run_code("x = 1\nresult = '\udcff'")
    assert not r.ok
    assert r.error_kind == "syntax" and r.exit_code == 1
    assert r.error.startswith("SyntaxError: Non-UTF-8 code starting with '\\xed' on line 2")


# --- where the original is wrong, and this engine is not ----------------------------------------


@pytest.mark.parametrize("code", [
    "import sys\nresult = sys.modules['os'].getcwd()",
    "import posix\nresult = posix.getcwd()",
    "import builtins\nresult = builtins.open('/etc/hostname').read()",
    "result = print.__self__.__import__('os').getcwd()",
])
def test_import_bypasses_fail(code):
    r = run_code(code)
    assert not r.ok
    assert r.result is None


def test_subclass_walk_cannot_run_a_command(tmp_path):
    marker = tmp_path / "walked"
    code = ("for c in ().__class__.__base__.__subclasses__():\n"
            "    g = getattr(getattr(c, '__init__', None), '__globals__', None)\n"
            "    if isinstance(g, dict) and 'system' in g:\n"
            f"        g['system']('touch {marker}')\n")
    run_code(code)
    assert not marker.exists()


def test_pathlib_cannot_read_or_write_host_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET")
    r = run_code(f"import pathlib\nresult = pathlib.Path({str(secret)!r}).read_text()")
    assert r.result != "TOP-SECRET" and "TOP-SECRET" not in r.stdout + r.stderr
    target = tmp_path / "written.txt"
    run_code(f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')")
    assert not target.exists()


def _accepted(listener):
    """Connections waiting in a non-blocking listener's queue (a connect() that returned is queued)."""
    n = 0
    while True:
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return n
        n += 1


def test_urllib_cannot_reach_a_host_listener():
    import socket
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        port = listener.getsockname()[1]
        r = run_code("import urllib.request\n"
                     f"result = urllib.request.urlopen('http://127.0.0.1:{port}/', timeout=2).read()")
        assert not r.ok and r.result is None
        assert _accepted(listener) == 0
        # Every import allowed: only the OS layers stand between the run and the port.
        r = run_code(f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                     "result = 'connected'", policy=RunnerPolicy(blocked_imports=[]))
        assert r.result != "connected"
        assert _accepted(listener) == 0
        # The control: a connection from the host is seen, so the checks above can fail.
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert _accepted(listener) == 1


def test_the_callers_environment_never_reaches_a_run():
    from conftest import SECRET
    r = run_code("import sys\nresult = repr(sys.modules.get('posix') and sys.modules['posix'].environ)")
    assert SECRET not in str(r.result) + r.stdout + r.stderr
    r2 = run_code("result = 1", policy=RunnerPolicy(blocked_imports=[]))
    assert r2.ok
    r3 = run_code("import os\nresult = dict(os.environ)", policy=RunnerPolicy(blocked_imports=[]))
    assert SECRET not in str(r3.result)


def test_code_cannot_forge_the_result():
    code = ("import sys\n"
            "sys.__stdout__.write('{\"ok\": true, \"result\": \"FORGED\"}')\n"
            "raise SystemExit(5)")
    r = run_code(code)
    assert r.result != "FORGED"
    assert r.exit_code == 5


def test_fractional_timeouts_and_partial_output_are_kept():
    r = run_code("print('partial', flush=True)\nwhile True:\n    pass", policy=RunnerPolicy(timeout_seconds=0.3))
    assert r.timed_out
    assert r.error == "Execution timed out after 0.3s"
    assert "partial" in r.stdout


def test_output_caps_count_bytes():
    r = run_code("print('é' * 4096)", policy=RunnerPolicy(max_output_kb=1))
    assert len(r.stdout.encode()) <= 1024


def test_result_has_a_size_cap():
    r = run_code("result = 'x' * 4096", policy=RunnerPolicy(max_result_kb=1))
    assert not r.ok
    assert r.error_kind == "result_too_large"


def test_a_crash_has_an_error():
    r = run_code("import sys\nsys.setrecursionlimit(10**6)\ndef f(n): return f(n + 1)\nf(0)",
                 policy=RunnerPolicy(timeout_seconds=10))
    assert not r.ok
    assert r.error
    assert math.isfinite(r.duration_ms)


def test_a_policy_file_that_cannot_be_read_is_an_error(tmp_path):
    # The original silently ran with its defaults; a typo in the path must be seen.
    missing = tmp_path / "no-such-policy.toml"
    with pytest.raises(ValueError, match="cannot read policy file"):
        run_code("result = 1", policy_file=missing)
    with pytest.raises(ValueError, match="cannot read policy file"):
        run_code("result = 1", policy=RunnerPolicy(config_path=str(missing)))


def test_policy_file_accepts_a_path_object(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[policy]\nblocked_imports = ['json']\n", encoding="utf-8")
    assert run_code("import json", policy_file=path).error_kind == "blocked_import"
