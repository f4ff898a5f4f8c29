"""Per-run latency from Python: this package's run_code and Runner.run, optionally next to the original's.

Usage: python3 bench/python_latency.py [--runs 200] [--rounds 2] [--first-runs 5] [--original /path/to/orig/src]
Run it with a Python that imports this package (a venv where it is installed, or
PYTHONPATH=build/python). --original is a checkout's src/ folder of the original package (v0.1.6);
each round times the original and this package back to back, in separate processes (both are
called safe_py_runner). "first run, fresh proc" is a whole short-lived program: a fresh python3 that
imports the package, makes one run_code and exits (start, the first worker, the run, the exit).
"""

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time

CODE = "import math\nresult = math.sqrt(input_data['x'])"
VENV = os.path.join(tempfile.gettempdir(), "spr-bench-original-venv")  # the original's LocalEngine venv


def measure(fn, runs):
    fn()  # the first call starts the workers
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        r = fn()
        times.append((time.perf_counter() - start) * 1000)
        if r.result != 9.0:
            raise SystemExit(f"unexpected result: {r}")
    times.sort()
    return times[len(times) // 2], times[max(0, int(len(times) * 0.99) - 1)]


# A short-lived program: import the package, one run_code, exit. The original's later versions take an
# engine; it is given a LocalEngine on a venv made beforehand (its fresh interpreter per run).
FIRST_RUN = """
import inspect, sys
from safe_py_runner import run_code
CODE = "import math\\nresult = math.sqrt(input_data['x'])"
if "engine" in inspect.signature(run_code).parameters:
    from safe_py_runner import LocalEngine
    r = run_code(CODE, LocalEngine(venv_dir=sys.argv[1], venv_manager="python"), {"x": 81})
else:
    r = run_code(CODE, {"x": 81})
assert r.result == 9.0, r
"""


def first_run(env, venv, runs):
    """Median and largest wall time of a whole fresh process that makes one run (ms)."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", FIRST_RUN, venv], env=env, check=True)
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2], times[-1]


def child(which, runs):
    from safe_py_runner import RunnerPolicy, run_code

    if "engine" in inspect.signature(run_code).parameters:  # the original's later versions
        from safe_py_runner import LocalEngine

        engine = LocalEngine(venv_dir=VENV, venv_manager="python")
        rows = [("run_code", measure(lambda: run_code(CODE, engine, {"x": 81}), runs))]
    else:
        rows = [("run_code", measure(lambda: run_code(CODE, {"x": 81}), runs))]
    if which == "ours":
        from safe_py_runner import Runner

        for iso in ("fork", "namespace"):
            p = RunnerPolicy(isolation=iso)
            with Runner(p, workers=2) as r:
                rows.append((f"Runner.run [{iso}]", measure(lambda: r.run(CODE, {"x": 81}, policy=p), runs)))
    for name, (p50, p99) in rows:
        print(f"{which:8} {name:22} p50 {p50:8.3f} ms   p99 {p99:8.3f} ms", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--first-runs", type=int, default=5, help="fresh processes timed per round and package")
    ap.add_argument("--original", help="the original package's src/ folder")
    ap.add_argument("--child", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs)
        return
    me = [sys.executable, os.path.abspath(__file__), "--runs", str(args.runs)]
    if args.original and not os.path.exists(VENV):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", VENV], check=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    for _ in range(args.rounds):
        if args.original:
            env = dict(os.environ, PYTHONPATH=args.original)
            subprocess.run(me + ["--child", "original"], env=env, check=True)
            if args.first_runs > 0:
                p50, top = first_run(env, VENV, args.first_runs)
                print(f"{'original':8} {'first run, fresh proc':22} p50 {p50:8.3f} ms   max {top:8.3f} ms", flush=True)
        subprocess.run(me + ["--child", "ours"], check=True)
        if args.first_runs > 0:
            p50, top = first_run(dict(os.environ), VENV, args.first_runs)
            print(f"{'ours':8} {'first run, fresh proc':22} p50 {p50:8.3f} ms   max {top:8.3f} ms", flush=True)
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)


if __name__ == "__main__":
    main()
