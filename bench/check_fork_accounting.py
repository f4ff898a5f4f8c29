"""Checks that spr-bench's fork rows see the run children: their faults and the warm worker's size.

The workers run under a keeper and a PID namespace's init; accounting read from the keeper shows no faults
for the run children and the keeper's few MB as the worker's size. Usage: check_fork_accounting.py SPR_BENCH
"""
import json
import subprocess
import sys
import tempfile


def main() -> int:
    bench = sys.argv[1]
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        args = [bench, "--quick", "--modes", "fork", "--runs", "30", "--paced-runs", "5", "--seconds", "0.2",
                "--cold-starts", "1", "--no-engine", "--no-floors", "--no-baseline", "--no-serve", "--no-pandas",
                "--no-sessions", "--no-host", "--no-layers", "--json", out.name]
        run = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
        try:
            with open(out.name) as f:
                report = json.load(f)
        except ValueError:
            print(run.stdout)
            print("spr-bench wrote no JSON report")
            return 1
    fork = report["modes"]["fork"]
    if not fork.get("available"):
        print(f"fork mode not available: {fork.get('error')}")
        return 1
    problems = []
    for pattern in ("back_to_back", "paced"):
        faults = fork[pattern]["minor_faults_per_run"]
        # A forked child that runs Python writes to dozens of shared pages at the least.
        if faults is None or faults < 10:
            problems.append(f"{pattern}: {faults} minor faults per run in the run children")
    rss = fork["idle_rss_mb"]
    if rss is None or rss < 8:  # the embedded interpreter with its preload list; the keeper is a few MB
        problems.append(f"the warm worker's size reads {rss} MB")
    for p in problems:
        print(p)
    if not problems:
        print(f"fork rows: {fork['back_to_back']['minor_faults_per_run']:.0f} faults per run, worker {rss:.1f} MB")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
