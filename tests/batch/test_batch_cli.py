"""Black-box tests of `safe-py-runner batch` and `batch-merge`: order, bad lines, ids, interruption, resume, shards."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

CLI = os.environ["SPR_TEST_CLI"]
SCALE = float(os.environ.get("SPR_TEST_TIME_SCALE", "1"))


def write_cases(path, cases):
    with open(path, "w", encoding="utf-8") as f:
        for c in cases:
            f.write(c if isinstance(c, str) else json.dumps(c))
            f.write("\n")
    return str(path)


def batch(*args, stdin=None, timeout=300):
    p = subprocess.run([CLI, "batch", *map(str, args)], input=stdin, capture_output=True, text=True,
                       timeout=timeout * SCALE)
    return p


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def square_cases(n, sleep_ms=None):
    """Case i computes i*i; odd ids fail an assert (a known verdict per id)."""
    rng = random.Random(1234)
    out = []
    for i in range(n):
        ms = rng.randint(0, sleep_ms) if sleep_ms else 0
        code = f"import time\ntime.sleep({ms / 1000})\nresult = {i} * {i}\nassert {i} % 2 == 0"
        out.append({"id": f"c{i}", "code": code})
    return out


def check_square_lines(lines, ids):
    assert [l["id"] for l in lines] == ids
    for l in lines:
        i = int(l["id"][1:])
        assert l["passed"] == (i % 2 == 0), l
        if i % 2 == 0:
            assert l["result"] == i * i


def test_ordered_under_random_durations(tmp_path):
    cases = write_cases(tmp_path / "cases.jsonl", square_cases(120, sleep_ms=60))
    out = tmp_path / "out.jsonl"
    p = batch(cases, "-o", out, "--workers", 3, "--isolation", "namespace", "--summary-json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    check_square_lines(lines_of(out), [f"c{i}" for i in range(120)])
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["cases"] == 120 and summary["passed"] == 60 and summary["failed"] == 60
    assert summary["error_kinds"] == {"exception": 60}
    assert "batch: 120 of 120 cases written" in p.stderr


def test_stdin_to_stdout():
    text = "\n".join(json.dumps(c) for c in square_cases(10)) + "\n"
    p = batch("-", "--quiet", "--isolation", "namespace", stdin=text)
    assert p.returncode == 0, p.stderr
    check_square_lines([json.loads(l) for l in p.stdout.splitlines()], [f"c{i}" for i in range(10)])
    assert p.stderr == ""


def test_bad_lines_mid_file_are_answered_and_the_batch_goes_on(tmp_path):
    cases = square_cases(6)
    raw = [cases[0], cases[1], "{not json", cases[2], {"id": "nocode"}, "", {"id": "badstdin", "code": "1",
                                                                             "stdin": 5},
           {"id": "loose", "code": "1", "policy": {"timeout_seconds": 999}}, [1, 2], cases[3]]
    path = write_cases(tmp_path / "cases.jsonl", raw)
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out, "--isolation", "namespace")
    assert p.returncode == 0, p.stderr
    lines = lines_of(out)
    assert [l["id"] for l in lines] == ["c0", "c1", None, "c2", "nocode", "badstdin", "loose", None, "c3"]
    bad = {i: l for i, l in enumerate(lines) if l["error_kind"] == "bad_input"}
    assert sorted(bad) == [2, 4, 5, 6, 7]
    assert bad[2]["error"].startswith("line 3: malformed request line")
    assert bad[4]["error"] == "line 5: 'code' must be a string"
    assert bad[5]["error"].startswith("line 7: 'stdin'")  # line 6 is blank and skipped
    assert "timeout_seconds" in bad[6]["error"] and bad[6]["error"].startswith("line 8: policy loosens")
    assert bad[7]["error"].startswith("line 9: malformed request line: expected a JSON object")
    assert all(not l["passed"] for l in bad.values())
    assert lines[8]["passed"] is False and lines[3]["result"] == 4


def test_duplicate_ids_are_refused_before_anything_runs(tmp_path):
    cases = square_cases(5)
    cases.append({"id": "c2", "code": "result = 'again'"})
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out)
    assert p.returncode == 65
    assert "duplicate id: lines 3 and 6" in p.stderr
    assert not out.exists()  # nothing ran, nothing was opened for writing


def test_ids_that_would_not_come_back_as_sent_are_refused(tmp_path):
    # JSON integers past 64 bits are read as doubles: these two would be one id (red team round 18, F2).
    path = tmp_path / "cases.jsonl"
    path.write_text('{"id": 18446744073709551617, "code": "result = 1"}\n'
                    '{"id": 18446744073709551618, "code": "result = 2"}\n'
                    '{"id": 9007199254740991, "code": "result = 3"}\n')
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out, "--isolation", "namespace")
    assert p.returncode == 0, p.stderr
    lines = lines_of(out)
    assert [l["id"] for l in lines] == [None, None, 9007199254740991]
    for l in lines[:2]:
        assert l["error_kind"] == "bad_input" and "send it as a string" in l["error"], l
    assert lines[2]["result"] == 3


def test_bad_arguments_exit_65(tmp_path):
    path = write_cases(tmp_path / "cases.jsonl", square_cases(2))
    for args in (["--shard", "3/3"], ["--shard", "x"], ["--repeat", "0"], ["--timeout", "-1"], ["--resume"]):
        p = batch(path, *args)
        assert p.returncode == 65, (args, p.stderr)
    assert batch(tmp_path / "missing.jsonl").returncode == 65


def test_no_worker_exits_69(tmp_path):
    path = write_cases(tmp_path / "cases.jsonl", square_cases(2))
    env = dict(os.environ, SPR_WORKER=str(tmp_path / "no-such-worker"))
    p = subprocess.run([CLI, "batch", path], env=env, capture_output=True, text=True, timeout=120 * SCALE)
    assert p.returncode == 69, p.stderr
    # An earlier output file is left as it was: no worker, nothing truncated, nothing created.
    earlier = tmp_path / "results.jsonl"
    earlier.write_text('{"earlier": true}\n')
    p = subprocess.run([CLI, "batch", path, "-o", str(earlier)], env=env, capture_output=True, text=True,
                       timeout=120 * SCALE)
    assert p.returncode == 69, p.stderr
    assert earlier.read_text() == '{"earlier": true}\n'
    p = subprocess.run([CLI, "batch", path, "-o", str(tmp_path / "new.jsonl")], env=env, capture_output=True,
                       text=True, timeout=120 * SCALE)
    assert p.returncode == 69 and not (tmp_path / "new.jsonl").exists()


def test_expect_stdout_ignores_trailing_whitespace(tmp_path):
    cases = [
        {"id": 1, "code": "print('1 ')\nprint('2\\t')\nprint()\nprint()", "expect_stdout": "1\n2"},
        {"id": 2, "code": "print(input())", "stdin": "hello\n", "expect_stdout": "hello\n\n\n"},
        {"id": 3, "code": "print('1')\nprint('3')", "expect_stdout": "1\n2\n"},
        {"id": 4, "code": "print(' 1')", "expect_stdout": "1"},  # leading whitespace counts
        {"id": 5, "code": "print('a')\nprint()\nprint('b')", "expect_stdout": "a\nb"},  # inner blank lines count
    ]
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out, "--isolation", "namespace", "--summary-json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    assert [(l["id"], l["passed"], l["ok"]) for l in lines_of(out)] == [
        (1, True, True), (2, True, True), (3, False, True), (4, False, True), (5, False, True)]
    assert json.loads((tmp_path / "s.json").read_text())["wrong_output"] == 3


def test_repeat_runs_each_case_k_times(tmp_path):
    cases = [{"id": "ok", "code": "result = 1"}, {"id": "bad", "code": "raise ValueError('x')"}]
    cases += [{"id": f"coin{i}", "code": "import random\nassert random.random() < 0.5"} for i in range(20)]
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out, "--repeat", 3, "--isolation", "namespace", "--summary-json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    lines = lines_of(out)
    assert [l["id"] for l in lines] == [c["id"] for c in cases]
    assert all(len(l["durations_ms"]) == 3 for l in lines)
    assert lines[0]["passed"] is True and lines[1]["passed"] is False
    assert lines[1]["error_kind"] == "exception"
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["runs"] == 3 * len(cases)
    # A coin case passes all three runs with probability 1/8 and fails all three with 1/8: among 20,
    # at least one is flaky with probability 1 - (1/4)^20.
    assert s["flaky"] >= 1
    assert s["flaky"] + sum(l["passed"] for l in lines[2:]) <= 20


def test_a_timeout_next_to_fast_cases(tmp_path):
    cases = [{"id": "slow", "code": "while True: pass", "policy": {"timeout_seconds": 2}}]
    cases += [{"id": f"f{i}", "code": f"result = {i}"} for i in range(40)]
    cases.insert(20, {"id": "slow2", "code": "while True: pass", "policy": {"timeout_seconds": 1}})
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    p = batch(path, "-o", out, "--workers", 2, "--isolation", "fork", "--summary-json", tmp_path / "s.json")
    assert p.returncode == 0, p.stderr
    lines = lines_of(out)
    assert [l["id"] for l in lines] == [c["id"] for c in cases]
    by_id = {l["id"]: l for l in lines}
    assert by_id["slow"]["timed_out"] and by_id["slow"]["error_kind"] == "timeout"
    assert by_id["slow2"]["timed_out"]
    assert all(by_id[f"f{i}"]["passed"] and by_id[f"f{i}"]["result"] == i for i in range(40))
    assert json.loads((tmp_path / "s.json").read_text())["timeouts"] == 2


def interrupt_then_resume(tmp_path, delay, sig):
    cases = square_cases(80, sleep_ms=40)
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    proc = subprocess.Popen([CLI, "batch", path, "-o", str(out), "--workers", "2", "--isolation", "namespace"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt once some lines are out (or after `delay` when the batch is slow to start).
    deadline = time.monotonic() + 60 * SCALE
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.stat().st_size > 0:
            break
        time.sleep(0.01)
    time.sleep(delay)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120 * SCALE)
    assert proc.returncode in (130, 0), err  # 0: it had finished before the signal
    first = lines_of(out)  # every line parses
    ids = [l["id"] for l in first]
    assert len(ids) == len(set(ids))
    if proc.returncode == 130:
        assert "(interrupted)" in err
    p = batch(path, "-o", out, "--resume", "--workers", "2", "--isolation", "namespace")
    assert p.returncode == 0, p.stderr
    final = lines_of(out)
    check_square_lines(final, [c["id"] for c in cases])
    # The lines written before the interruption are kept as they were.
    kept = {l["id"]: l for l in final}
    assert all(kept[l["id"]] == l for l in first)
    return len(first)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_interrupt_at_random_points_then_resume(tmp_path, seed):
    rng = random.Random(seed)
    sig = signal.SIGINT if seed % 2 else signal.SIGTERM
    interrupt_then_resume(tmp_path, rng.uniform(0, 0.4), sig)


def test_resume_mends_a_cut_last_line(tmp_path):
    cases = square_cases(10)
    path = write_cases(tmp_path / "cases.jsonl", cases)
    out = tmp_path / "out.jsonl"
    assert batch(path, "-o", out, "--isolation", "namespace").returncode == 0
    text = out.read_text().splitlines(keepends=True)
    # Keep lines 5..0 in reverse order and half of another: what a crash and a hand edit could leave.
    out.write_text("".join(reversed(text[:5])) + text[7][: len(text[7]) // 2])
    p = batch(path, "-o", out, "--resume", "--isolation", "namespace")
    assert p.returncode == 0, p.stderr
    check_square_lines(lines_of(out), [c["id"] for c in cases])
    assert "not a result line (dropped)" in p.stderr


def test_shards_cover_every_id_once_and_merge_restores_order(tmp_path):
    cases = square_cases(50)
    cases.insert(7, "{broken")
    path = write_cases(tmp_path / "cases.jsonl", cases)
    shards = []
    for i in range(3):
        out = tmp_path / f"shard{i}.jsonl"
        p = batch(path, "-o", out, "--shard", f"{i}/3", "--isolation", "namespace")
        assert p.returncode == 0, p.stderr
        got = lines_of(out)
        assert [l["index"] for l in got] == list(range(i, 51, 3))
        shards.append(str(out))
    merged = tmp_path / "merged.jsonl"
    m = subprocess.run([CLI, "batch-merge", str(merged), *reversed(shards), "--cases", path], capture_output=True,
                       text=True, timeout=60)
    assert m.returncode == 0, m.stderr
    lines = lines_of(merged)
    assert [l["index"] for l in lines] == list(range(51))
    good = [l for l in lines if l["id"] is not None]
    check_square_lines(good, [f"c{i}" for i in range(50)])
    assert lines[7]["error_kind"] == "bad_input"
    # Without the cases file, the "index" field orders them.
    merged2 = tmp_path / "merged2.jsonl"
    m = subprocess.run([CLI, "batch-merge", str(merged2), *shards], capture_output=True, text=True, timeout=60)
    assert m.returncode == 0, m.stderr
    assert merged2.read_text() == merged.read_text()
    # A missing shard, a shard given twice: refused, nothing written.
    for bad in ([shards[0], shards[1]], [shards[0], shards[1], shards[2], shards[1]]):
        target = tmp_path / "refused.jsonl"
        m = subprocess.run([CLI, "batch-merge", str(target), *bad, "--cases", path], capture_output=True, text=True,
                           timeout=60)
        assert m.returncode == 65, m.stderr
        assert not target.exists()
    m = subprocess.run([CLI, "batch-merge", str(tmp_path / "r.jsonl"), shards[0], shards[1]], capture_output=True,
                       text=True, timeout=60)
    assert m.returncode == 65 and "missing cases" in m.stderr


def test_flat_memory_over_10000_cases(tmp_path):
    """Peak RSS of the batch process (its own, not its workers') at 1,000 and 10,000 cases."""

    def peak_kb(n):
        path = tmp_path / f"cases{n}.jsonl"
        with open(path, "w") as f:
            for i in range(n):
                f.write(json.dumps({"id": i, "code": "result = input_data['x'] * 2 + 1", "input_data": {"x": i},
                                    "expect_stdout": ""}) + "\n")
        out = tmp_path / f"out{n}.jsonl"
        s = tmp_path / f"s{n}.json"
        p = batch(path, "-o", out, "--workers", 2, "--isolation", "namespace", "--quiet", "--summary-json", s,
                  timeout=1200)
        assert p.returncode == 0, p.stderr
        summary = json.loads(s.read_text())
        assert summary["cases"] == n and summary["passed"] == n
        with open(out) as f:
            count = sum(1 for _ in f)
        assert count == n
        return summary["peak_rss_kb"]

    small, large = peak_kb(1000), peak_kb(10000)
    print(f"peak RSS of the batch process: {small} KiB at 1,000 cases, {large} KiB at 10,000", file=sys.stderr)
    # Ten times the cases may add the 16-byte id digests and little else: well under 25% more.
    assert large <= small * 1.25, (small, large)
