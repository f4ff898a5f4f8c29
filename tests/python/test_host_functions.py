"""Host functions through the Python package: run_code, Runner, per-run functions, sessions, async."""

import asyncio
import threading

import pytest

from conftest import MODES
from safe_py_runner import Runner, RunnerPolicy, run_code


def get_price(symbol, currency="USD"):
    if symbol == "NONE":
        raise LookupError(f"no price for {symbol}")
    return {"symbol": symbol, "price": 12.5, "currency": currency}


@pytest.mark.parametrize("mode", MODES)
def test_run_code_calls_a_python_function_in_every_mode(mode):
    r = run_code("result = get_price('ACME', currency='EUR')", policy=RunnerPolicy(isolation=mode),
                 functions={"get_price": get_price})
    assert r.ok, r.error
    assert r.result == {"symbol": "ACME", "price": 12.5, "currency": "EUR"}


def test_exceptions_become_host_function_error():
    code = ("from host import HostFunctionError\n"
            "try:\n    get_price('NONE')\nexcept HostFunctionError as e:\n    result = str(e)\n")
    r = run_code(code, functions={"get_price": get_price})
    assert r.result == "no price for NONE"


def test_runner_functions_and_a_runs_own_are_merged():
    seen = []
    with Runner(workers=1, functions={"get_price": get_price, "note": seen.append}) as runner:
        r = runner.run("note(1)\nresult = [get_price('A')['price'], twice(4)]",
                       functions={"twice": lambda x: 2 * x})
        assert r.ok, r.error
        assert r.result == [12.5, 8]
        assert seen == [1]
        # A name the run did not get is a NameError, as any unknown name.
        assert runner.run("twice(1)").error_kind == "exception"
        with runner.open_session() as s:
            assert s.run("x = get_price('B')['price']").ok
            assert s.run("result = twice(x)", functions={"twice": lambda x: 2 * x}).result == 25.0


def test_non_json_answer_and_argument():
    r = run_code("try:\n    f()\nexcept RuntimeError as e:\n    result = str(e)", functions={"f": lambda: {1, 2}})
    assert "not JSON serializable" in r.result
    r = run_code("try:\n    f({1})\nexcept TypeError as e:\n    result = str(e)", functions={"f": lambda x: x})
    assert "host function 'f'" in r.result


def test_calls_from_threads_are_counted():
    lock = threading.Lock()
    calls = []

    def add(a, b):
        with lock:
            calls.append(1)
        return a + b

    with Runner(workers=2, functions={"add": add}) as runner:
        futures = [runner.submit("t = 0\nfor i in range(100):\n    t = add(t, i)\nresult = t") for _ in range(4)]
        assert [f.result().result for f in futures] == [4950] * 4
    assert len(calls) == 400


def test_async_host_functions_run_on_the_callers_loop():
    async def main():
        loop = asyncio.get_running_loop()
        loops = []

        async def fetch(key):
            loops.append(asyncio.get_running_loop())
            await asyncio.sleep(0.01)
            return key.upper()

        with Runner(workers=1) as runner:
            r = await runner.run_async("result = [fetch('a'), fetch('b')]", functions={"fetch": fetch})
        assert r.ok, r.error
        assert r.result == ["A", "B"]
        assert loops == [loop, loop]

    asyncio.run(main())


def test_limits_are_policy_fields():
    p = RunnerPolicy(max_host_calls=3)
    r = run_code("for i in range(5):\n    f()", policy=p, functions={"f": lambda: 1})
    assert r.error_kind == "host_call_limit"
    p = RunnerPolicy(max_host_call_kb=1)
    r = run_code("f('x' * 5000)", policy=p, functions={"f": lambda s: len(s)})
    assert r.error_kind == "host_call_limit"
    with pytest.raises(ValueError):
        run_code("pass", functions={"bad name": lambda: 1})
    with pytest.raises(TypeError):
        run_code("pass", functions={"f": 3})
