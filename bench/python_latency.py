"""Per-run latency from Python: this package's run_code and Runner.run, optionally next to the original's.

Usage: python3 bench/python_latency.py [--runs 200] [--rounds 2] [--original /path/to/orig/src]
Run it with a Python that imports this package (a venv where it is installed, or
PYTHONPATH=build/python). --original is a checkout's src/ folder of the original package (v0.1.6);
each round times the original and this package back to back, in separate processes (both are
called safe_py_runner).
"""

import argparse
import os
import subprocess
import sys
import time

CODE = "import math\nresult = math.sqrt(input_data['x'])"


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


def child(which, runs):
    from safe_py_runner import RunnerPolicy, run_code

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
    ap.add_argument("--original", help="the original package's src/ folder")
    ap.add_argument("--child", choices=["ours", "original"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.runs)
        return
    me = [sys.executable, os.path.abspath(__file__), "--runs", str(args.runs)]
    for _ in range(args.rounds):
        if args.original:
            env = dict(os.environ, PYTHONPATH=args.original)
            subprocess.run(me + ["--child", "original"], env=env, check=True)
        subprocess.run(me + ["--child", "ours"], check=True)


if __name__ == "__main__":
    main()
