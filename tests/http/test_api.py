"""The HTTP service's own API, its Piston endpoint's shape, health, metrics and bad input, each answer
validated against docs/openapi.yaml."""
import json
import os
import re
import socket
import tempfile
import threading
import time

import pytest

from spr_http import TIME_SCALE, Server, process_alive, wait_for


def call(server, api, method, path, body=None, headers=None):
    status, h, data = server.request(method, path, body, headers)
    return status, h, api.check(method, path, status, h, data)


def test_run_answers_every_result_field(server, api):
    status, _, r = call(server, api, "POST", "/v1/run",
                        {"code": "print('hi')\nresult = input_data['x'] * 2", "input_data": {"x": 21}})
    assert status == 200
    assert r["ok"] is True and r["result"] == 42 and r["stdout"] == "hi\n" and r["error_kind"] == "none"
    assert r["isolation"] == "fork"


@pytest.mark.parametrize("code,policy,kind", [
    ("1/0", {}, "exception"),
    ("def f(:\n", {}, "syntax"),
    ("while True: pass", {"timeout_seconds": 0.5}, "timeout"),
    ("import socket", {}, "blocked_import"),
    ("raise SystemExit(3)", {}, "system_exit"),
    ("b = bytearray(512 * 1024 * 1024)", {"memory_limit_mb": 64}, "memory"),
    ("import signal\nsignal.raise_signal(9)", {}, "worker_crashed"),
])
def test_run_outcomes_are_data(server, api, code, policy, kind):
    status, _, r = call(server, api, "POST", "/v1/run", {"code": code, "policy": policy})
    assert status == 200
    assert r["ok"] is False and r["error_kind"] == kind and r["error"]
    # A run that killed its worker leaves the service ready (readiness has a deadline: on a loaded
    # machine a probe may miss it and the next one answer).
    assert wait_for(lambda: server.request("GET", "/readyz")[0] == 200, 120)


def test_stdin_reaches_the_code(server, api):
    status, _, r = call(server, api, "POST", "/v1/run", {"code": "result = input()", "stdin": "line one\n"})
    assert status == 200 and r["result"] == "line one"


def test_stream_sends_chunks_then_the_result(server, api):
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.05)\nresult = 7"
    status, h, lines = call(server, api, "POST", "/v1/run?stream=1", {"code": code})
    assert status == 200 and h["content-type"].startswith("application/x-ndjson")
    assert h.get("transfer-encoding") == "chunked"
    assert "result" in lines[-1] and lines[-1]["result"]["result"] == 7
    chunks = lines[:-1]
    assert chunks and all(c["stream"] == "stdout" for c in chunks)
    assert "".join(c["data"] for c in chunks) == "0\n1\n2\n" == lines[-1]["result"]["stdout"]


def test_stream_arrives_before_the_run_ends(server):
    # The first chunk is read while the run still sleeps: the server does not hold output back.
    conn = server.connect()
    code = "print('first', flush=True)\nimport time\ntime.sleep(2)\nresult = 1"
    conn.request("POST", "/v1/run?stream=1", body=json.dumps({"code": code, "policy": {"timeout_seconds": 4}}),
                 headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    first = json.loads(_read_chunk_line(res))
    assert first == {"stream": "stdout", "data": "first\n"}
    rest = res.read().decode().splitlines()
    assert json.loads(rest[-1])["result"]["ok"] is True
    conn.close()


def _read_chunk_line(res):
    # http.client de-chunks on read(); read one byte at a time up to the first newline.
    line = b""
    while not line.endswith(b"\n"):
        b = res.read(1)
        assert b, "the stream ended before its first line"
        line += b
    return line.decode()


def test_sessions_keep_state_and_end(server, api):
    status, _, opened = call(server, api, "POST", "/v1/sessions", {})
    assert status == 201
    sid = opened["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", sid)
    status, _, r = call(server, api, "POST", "/v1/sessions/%s/run" % sid, {"code": "x = 40"})
    assert status == 200 and r["ok"]
    status, _, r = call(server, api, "POST", "/v1/sessions/%s/run" % sid, {"code": "x + 2", "repr": True})
    assert status == 200 and r["repr"] == "42"
    status, _, lines = call(server, api, "POST", "/v1/sessions/%s/run?stream=1" % sid, {"code": "print(x)"})
    assert lines[0] == {"stream": "stdout", "data": "40\n"} and lines[-1]["result"]["ok"]
    status, _, v = call(server, api, "GET", "/v1/sessions/%s/variables" % sid)
    assert status == 200 and v["variables"]["x"] == {"type": "int", "value": 40}
    status, _, closed = call(server, api, "DELETE", "/v1/sessions/%s" % sid)
    assert status == 200 and closed == {"closed": True}
    for method, path, body in [("POST", "/v1/sessions/%s/run" % sid, {"code": "x"}),
                               ("GET", "/v1/sessions/%s/variables" % sid, None),
                               ("DELETE", "/v1/sessions/%s" % sid, None)]:
        status, _, e = call(server, api, method, path, body)
        assert status == 404 and e["error_kind"] == "session_lost"


def test_a_session_call_that_times_out_ends_the_session(server, api):
    _, _, opened = call(server, api, "POST", "/v1/sessions", {"policy": {"timeout_seconds": 1}})
    sid = opened["id"]
    status, _, r = call(server, api, "POST", "/v1/sessions/%s/run" % sid, {"code": "while True: pass"})
    assert status == 200 and r["error_kind"] in ("timeout", "session_lost")
    status, _, e = call(server, api, "POST", "/v1/sessions/%s/run" % sid, {"code": "1"})
    assert status == 404 and e["error_kind"] == "session_lost"


def test_cancel_a_run_by_its_id(server, api):
    answer = {}

    def long_run():
        answer["r"] = call(server, api, "POST", "/v1/run",
                           {"code": "import time\ntime.sleep(30)", "id": "job-1", "policy": {"timeout_seconds": 40}})

    t = threading.Thread(target=long_run)
    t.start()
    assert wait_for(lambda: server.request("POST", "/v1/runs/job-1/cancel")[0] == 200, 30)
    t.join(60 * TIME_SCALE)
    status, _, r = answer["r"]
    assert status == 200 and r["error_kind"] == "cancelled"
    status, _, e = call(server, api, "POST", "/v1/runs/job-1/cancel")
    assert status == 404 and e["error_kind"] == "not_found"


def test_a_run_id_in_flight_is_not_reused(server, api):
    t = threading.Thread(target=server.request, args=("POST", "/v1/run", {
        "code": "import time\ntime.sleep(30)", "id": "dup", "policy": {"timeout_seconds": 40}}))
    t.start()
    try:
        assert wait_for(lambda: "spr_runs_in_flight 1" in server.request("GET", "/metrics")[2].decode(), 30)
        status, _, e = call(server, api, "POST", "/v1/run", {"code": "1", "id": "dup"})
        assert status == 409 and e["error_kind"] == "conflict"
    finally:
        server.request("POST", "/v1/runs/dup/cancel")
        t.join(60 * TIME_SCALE)


def test_the_operators_policy_is_a_ceiling(server, api):
    for policy in [{"timeout_seconds": 1000}, {"memory_limit_mb": 100000}, {"isolation": "namespace"},
                   {"blocked_imports": []}, {"allow_network": True}]:
        status, _, e = call(server, api, "POST", "/v1/run", {"code": "result = 1", "policy": policy})
        assert status == 400 and e["error_kind"] == "bad_input", policy
        assert list(policy)[0] in e["error"]
    status, _, e = call(server, api, "POST", "/v1/sessions", {"policy": {"timeout_seconds": 1000}})
    assert status == 400 and "timeout_seconds" in e["error"]


def test_health_ready_metrics_and_playground(server, api):
    call(server, api, "POST", "/v1/run", {"code": "result = 1"})
    call(server, api, "POST", "/v1/run", {"code": "while True: pass", "policy": {"timeout_seconds": 0.2}})
    status, _, h = call(server, api, "GET", "/healthz")
    assert status == 200 and h == {"status": "ok"}
    assert wait_for(lambda: server.request("GET", "/readyz")[0] == 200, 120)
    status, _, r = call(server, api, "GET", "/readyz")
    assert status in (200, 503) and (r["ready"] is True) == (status == 200)
    status, _, page = call(server, api, "GET", "/")
    assert status == 200 and "<script>" in page and "src=" not in page.replace('src="', "")
    status, h, text = call(server, api, "GET", "/metrics")
    assert status == 200 and h["content-type"].startswith("text/plain")
    for needle in ['spr_runs_total{error_kind="none"}', 'spr_runs_total{error_kind="timeout"}',
                   'spr_run_duration_seconds_bucket{isolation="fork",le="+Inf"}',
                   'spr_run_duration_seconds_bucket{isolation="fork",le="0.0025"}', "spr_workers_busy ",
                   "spr_workers_idle ", "spr_sessions_open ", "spr_runs_in_flight 0"]:
        assert needle in text, needle


def test_piston_endpoints_answer_pistons_shapes(server, api):
    status, _, rt = call(server, api, "GET", "/api/v2/runtimes")
    assert status == 200 and rt[0]["language"] == "python" and set(rt[0]["aliases"]) == {"py", "python3"}
    body = {"language": "python", "version": "*", "files": [{"content": "import sys\nprint(sys.argv[1:])\n1/0"}],
            "args": ["a", "b"], "stdin": "", "run_timeout": 3000, "run_memory_limit": -1}
    status, _, r = call(server, api, "POST", "/api/v2/execute", body)
    assert status == 200 and r["run"]["stdout"] == "['a', 'b']\n" and r["run"]["code"] == 1
    assert "ZeroDivisionError" in r["run"]["stderr"] and r["run"]["output"].startswith("['a', 'b']\n")
    for bad in [{"language": "ruby", "version": "*", "files": [{"content": "1"}]},
                {"language": "python", "version": "2.7", "files": [{"content": "1"}]},
                {"language": "python", "version": "*", "files": []},
                {"language": "python", "version": "*", "files": [{"content": 1}]},
                {"language": "python", "version": "*", "files": [{"content": "1"}], "args": [1]},
                {"language": "python", "version": "*", "files": [{"content": "1"}], "run_timeout": 10 ** 9},
                {"language": "python", "version": "*", "files": [{"content": "1"}], "colour": "red"}]:
        status, _, e = call(server, api, "POST", "/api/v2/execute", bad)
        assert status == 400 and e["message"], bad


def raw_exchange(server, data, read_timeout=10):
    """Sends raw bytes, returns what the server answers until it closes (or the timeout)."""
    s = socket.create_connection((server.host, server.port))
    s.settimeout(read_timeout * TIME_SCALE)
    try:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        s.close()


def status_of(raw):
    m = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(m.group(1)) if m else None


def body_of(raw):
    return json.loads(raw.split(b"\r\n\r\n", 1)[1])


def test_bad_input_answers_4xx_with_a_message_and_changes_nothing(server, api):
    before = server.request("GET", "/metrics")[2].decode()
    runs_before = re.search(r'spr_runs_total\{error_kind="none"\} (\d+)', before)
    cases = [
        ("malformed HTTP", b"GARBAGE\x01 / HTTP/9\r\n\r\n", 400, "bad_request"),
        ("huge headers", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n", 431,
         "headers_too_large"),
        ("body over --max-body-mb", b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000\r\n\r\n" +
         b"x" * 1000, 413, "body_too_large"),
    ]
    for name, data, want, kind in cases:
        raw = raw_exchange(server, data)
        assert status_of(raw) == want, (name, raw[:200])
        body = body_of(raw)
        assert body["error_kind"] == kind and body["error"], name
    json_cases = [
        ("bad JSON", b'{"code": "1",', 400),
        ("not an object", b"[1, 2]", 400),
        ("wrong type", json.dumps({"code": 5}).encode(), 400),
        ("wrong input type", json.dumps({"code": "1", "stdin": 5}).encode(), 400),
        ("unknown field", json.dumps({"code": "1", "colour": "red"}).encode(), 400),
        ("unknown policy field", json.dumps({"code": "1", "policy": {"colour": "red"}}).encode(), 400),
        ("policy of the wrong type", json.dumps({"code": "1", "policy": 5}).encode(), 400),
        ("deep nesting", b"[" * 100000 + b"]" * 100000, 400),
        ("lone surrogate", b'{"code": "\\ud800"}', 400),
    ]
    for name, body, want in json_cases:
        status, _, e = call(server, api, "POST", "/v1/run", body)
        assert status == want and e["error_kind"] == "bad_input" and e["error"], name
    status, h, data = server.request("GET", "/v1/nothing")
    e = api.check_error(status, h, data)
    assert status == 404 and e["error_kind"] == "not_found"
    status, h, data = server.request("GET", "/v1/run")
    e = api.check_error(status, h, data)
    assert status == 405 and h["allow"] == "POST" and e["error_kind"] == "method_not_allowed"
    # Nothing changed: no run was made, the service is ready and answers a run as before.
    after = server.request("GET", "/metrics")[2].decode()
    assert re.search(r'spr_runs_total\{error_kind="none"\} (\d+)', after).group(0) == (
        runs_before.group(0) if runs_before else None) or runs_before is None
    assert "spr_runs_in_flight 0" in after
    status, _, r = call(server, api, "POST", "/v1/run", {"code": "result = 5"})
    assert status == 200 and r["result"] == 5


def test_access_log_lines_are_json_without_code(server):
    marker = "MARKER_%d" % os.getpid()
    server.request("POST", "/v1/run", {"code": "x = '%s'" % marker, "input_data": {"m": marker}})
    assert wait_for(lambda: any(e.get("path") == "/v1/run" for e in server.log), 10)
    lines = [e for e in server.log if "method" in e]
    assert lines
    for e in lines:
        assert {"time", "method", "path", "status", "duration_ms", "error_kind"} <= set(e)
    assert not any(marker in json.dumps(e) for e in server.log)


def test_overload_answers_429_with_retry_after(api):
    s = Server("--workers", "1", "--max-concurrent", "1", "--timeout", "60")
    try:
        t = threading.Thread(target=s.request, args=("POST", "/v1/run", {
            "code": "import time\ntime.sleep(30)", "id": "hold", "policy": {"timeout_seconds": 40}}))
        t.start()
        assert wait_for(lambda: "spr_runs_in_flight 1" in s.request("GET", "/metrics")[2].decode(), 30)
        status, h, data = s.request("POST", "/v1/run", {"code": "result = 1"})
        e = api.check("POST", "/v1/run", status, h, data)
        assert status == 429 and h["retry-after"] == "1" and e["error_kind"] == "overloaded"
        status, h, data = s.request("POST", "/api/v2/execute",
                                    {"language": "python", "version": "*", "files": [{"content": "1"}]})
        assert status == 429 and "message" in json.loads(data)
        assert 'spr_requests_refused_total{reason="overloaded"} 2' in s.request("GET", "/metrics")[2].decode()
        s.request("POST", "/v1/runs/hold/cancel")
        t.join(60 * TIME_SCALE)
        status, _, r = call(s, api, "POST", "/v1/run", {"code": "result = 2"})
        assert status == 200 and r["result"] == 2
    finally:
        assert s.stop() == 0


def test_a_request_past_its_deadline_answers_504(api):
    # One worker, two executor threads: of four runs of 1.5 s with a 2 s timeout and no queueing
    # allowance, the last ones wait behind the first ones past timeout + grace.
    s = Server("--workers", "1", "--queue-timeout", "0")
    try:
        answers = []
        body = {"code": "import time\ntime.sleep(1.5)\nresult = 1", "policy": {"timeout_seconds": 2}}
        threads = [threading.Thread(target=lambda: answers.append(s.request("POST", "/v1/run", body)))
                   for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60 * TIME_SCALE)
        statuses = sorted(a[0] for a in answers)
        for status, h, data in answers:
            v = api.check("POST", "/v1/run", status, h, data)
            if status == 504:
                assert v["error_kind"] == "deadline"
            else:
                assert status == 200 and v["ok"], v
        assert 504 in statuses, statuses
        assert wait_for(lambda: "spr_runs_in_flight 0" in s.request("GET", "/metrics")[2].decode(), 30)
    finally:
        assert s.stop() == 0


def test_a_slow_client_is_dropped():
    s = Server("--read-timeout", "1")
    try:
        sock = socket.create_connection((s.host, s.port))
        request = b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n" + b'{"code": "result=1"}'
        sent = 0
        closed = False
        for byte in request:  # one byte every 0.3 s: the whole request would take 25 s
            try:
                sock.sendall(bytes([byte]))
                sent += 1
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            sock.settimeout(0.3)
            try:
                if sock.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:  # closed with a byte of ours unread: a reset instead of an end of file
                closed = True
                break
        sock.close()
        assert closed and sent < len(request), "the server kept a connection that sent one byte each 0.3 s"
        assert wait_for(lambda: 'spr_requests_refused_total{reason="slow_client"} 1' in
                        s.request("GET", "/metrics")[2].decode(), 30)
        assert wait_for(lambda: any(e.get("reason") == "slow_client" for e in s.log), 30)
    finally:
        assert s.stop() == 0


def test_auth_with_a_token_file(api):
    tokens = ["a" * 24, "b" * 24]
    with tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False) as f:
        f.write("# two clients\n%s\n\n%s\n" % tuple(tokens))
    s = Server("--token-file", f.name)
    try:
        auth = {"Authorization": "Bearer " + tokens[0]}
        other = {"Authorization": "Bearer " + tokens[1]}
        for method, path, body in [("POST", "/v1/run", {"code": "1"}), ("GET", "/readyz", None),
                                   ("GET", "/metrics", None), ("GET", "/api/v2/runtimes", None),
                                   ("POST", "/v1/sessions", {})]:
            for headers in [{}, {"Authorization": "Bearer " + "a" * 23}, {"Authorization": "Bearer " + "a" * 25},
                            {"Authorization": "Basic " + tokens[0]}]:
                status, h, data = s.request(method, path, body, headers)
                e = api.check(method, path, status, h, data)
                assert status == 401 and e["error_kind"] == "unauthorized" and h["www-authenticate"] == "Bearer"
        assert s.request("GET", "/healthz")[0] == 200
        assert s.request("GET", "/")[0] == 200
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 3"}, auth)
        assert status == 200 and r["result"] == 3
        status, _, opened = s.json("POST", "/v1/sessions", {}, auth)
        sid = opened["id"]
        # Another client's token does not reach the session.
        status, _, e = s.json("POST", "/v1/sessions/%s/run" % sid, {"code": "1"}, other)
        assert status == 404 and e["error_kind"] == "session_lost"
        status, _, e = s.json("DELETE", "/v1/sessions/%s" % sid, None, other)
        assert status == 404
        status, _, r = s.json("POST", "/v1/sessions/%s/run" % sid, {"code": "result = 4"}, auth)
        assert status == 200 and r["result"] == 4
        assert 'spr_requests_refused_total{reason="unauthorized"} 20' in s.request("GET", "/metrics", None, auth)[2].decode()
    finally:
        assert s.stop() == 0
        os.unlink(f.name)


def test_without_a_token_file_only_loopback_is_served():
    import subprocess
    from spr_http import CLI
    for address in ["0.0.0.0:0", "[::]:0", "192.0.2.1:0"]:
        p = subprocess.run([CLI, "http", "--listen", address], capture_output=True, text=True, timeout=60 * TIME_SCALE)
        assert p.returncode == 64, (address, p.stderr)
        assert "loopback" in p.stderr and "listening" not in p.stderr


def descendants(pid):
    children = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open("/proc/%s/stat" % d) as f:
                    ppid = int(f.read().split(")")[-1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def test_sigterm_drains_finishes_runs_closes_sessions_and_exits_0(api):
    s = Server("--workers", "1", "--grace", "20")
    status, _, opened = s.json("POST", "/v1/sessions", {})
    assert status == 201
    answer = {}
    t = threading.Thread(target=lambda: answer.update(r=s.json("POST", "/v1/run", {
        "code": "import time\ntime.sleep(1.5)\nresult = 'finished'", "id": "inflight"})))
    t.start()
    assert wait_for(lambda: "spr_runs_in_flight 1" in s.request("GET", "/metrics")[2].decode(), 30)
    kids = descendants(s.pid)
    assert kids  # workers and the session's process
    code = s.stop()
    t.join(60 * TIME_SCALE)
    assert code == 0
    status, _, r = answer["r"]
    assert status == 200 and r["result"] == "finished"
    assert not any(process_alive(k) for k in kids)
    assert any(e.get("event") == "draining" for e in s.log)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((s.host, s.port))


def test_a_finished_batch_does_not_hold_a_drain_until_its_grace_ends(api):
    # The grace is far longer than the stop's own limit: a server that waits it out fails the stop.
    s = Server("--workers", "1", "--grace", "3600")
    status, _, lines = call(s, api, "POST", "/v1/batch", batch_body([{"id": "a", "code": "result = 1"}]),
                            {"Content-Type": "application/x-ndjson"})
    assert status == 200 and lines[-1]["summary"]["passed"] == 1
    assert s.stop(timeout=60) == 0


def batch_body(cases):
    return "".join((c if isinstance(c, str) else json.dumps(c)) + "\n" for c in cases)


def test_batch_answers_each_case_in_input_order_then_a_summary(server, api):
    # The slow case comes first: its line still comes first, whatever finishes before it.
    body = batch_body([
        {"id": "slow", "code": "import time\ntime.sleep(0.5)\nprint(2)", "expect_stdout": "2"},
        {"id": "right", "code": "print(input_data['x'] + 1)", "input_data": {"x": 1}, "expect_stdout": "2\n"},
        {"id": "wrong", "code": "print(3)", "expect_stdout": "4"},
        {"id": "loop", "code": "while True: pass", "policy": {"timeout_seconds": 0.5}},
        {"id": "stdin", "code": "print(input()[::-1])", "stdin": "abc\n", "expect_stdout": "cba"},
        "this line is not JSON",
    ])
    status, h, lines = call(server, api, "POST", "/v1/batch", body, {"Content-Type": "application/x-ndjson"})
    assert status == 200 and h["content-type"].startswith("application/x-ndjson")
    *cases, last = lines
    assert [c["id"] for c in cases] == ["slow", "right", "wrong", "loop", "stdin", None]
    assert [c["index"] for c in cases] == list(range(6))
    assert [c["passed"] for c in cases] == [True, True, False, False, True, False]
    assert cases[3]["error_kind"] == "timeout" and cases[5]["error_kind"] == "bad_input"
    assert "line 6" in cases[5]["error"]
    summary = last["summary"]
    assert summary["cases"] == 6 and summary["passed"] == 3 and summary["failed"] == 3
    assert summary["timeouts"] == 1 and summary["wrong_output"] == 1 and summary["bad_input"] == 1


def test_batch_refuses_a_repeated_id_or_a_looser_policy(server, api):
    status, _, r = call(server, api, "POST", "/v1/batch",
                        batch_body([{"id": 1, "code": "result = 1"}, {"id": 1, "code": "result = 2"}]))
    assert status == 400 and r["error_kind"] == "bad_input" and "refused before running" in r["error"]
    status, _, r = call(server, api, "POST", "/v1/batch", "\n\n")
    assert status == 400 and r["error_kind"] == "bad_input"
    status, _, r = call(server, api, "POST", "/v1/batch?repeat=0", batch_body([{"id": 1, "code": "pass"}]))
    assert status == 400 and "repeat" in r["error"]
    # A case may tighten the operator's policy, never loosen it: answered in its place, not run.
    status, _, lines = call(server, api, "POST", "/v1/batch",
                            batch_body([{"id": "net", "code": "result = 1", "policy": {"allow_network": True}}]))
    assert status == 200 and lines[0]["error_kind"] == "bad_input" and lines[0]["passed"] is False


def test_batch_repeat_reports_each_runs_duration(server, api):
    status, _, lines = call(server, api, "POST", "/v1/batch?repeat=3", batch_body([{"id": "a", "code": "result = 1"}]))
    assert status == 200
    assert lines[0]["passed"] is True and len(lines[0]["durations_ms"]) == 3
    assert lines[-1]["summary"]["runs"] == 3


def runs_by_kind(server, kind):
    text = server.request("GET", "/metrics")[2].decode()
    m = re.search(r'^spr_runs_total\{error_kind="%s"\} (\d+)' % kind, text, re.M)
    return int(m.group(1)) if m else 0


def test_batch_stops_when_its_client_goes(api):
    # 40 cases of 0.5 s on one worker; the client reads one line and hangs up. The server stops the batch:
    # the cases not yet run are cancelled, not run (all 40 would end ok otherwise), and it keeps serving.
    s = Server("--workers", "1")
    try:
        body = batch_body([{"id": i, "code": "import time\ntime.sleep(0.5)\nresult = %d" % i} for i in range(40)])
        conn = s.connect()
        conn.request("POST", "/v1/batch", body=body, headers={"Content-Type": "application/x-ndjson"})
        res = conn.getresponse()
        assert res.status == 200
        assert json.loads(res.readline())["id"] == 0
        conn.sock.shutdown(socket.SHUT_RDWR)
        conn.close()
        assert wait_for(lambda: runs_by_kind(s, "cancelled") > 0 and
                        "spr_runs_in_flight 0" in s.request("GET", "/metrics")[2].decode(), 120)
        assert runs_by_kind(s, "none") < 40
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 5"})
        assert status == 200 and r["result"] == 5
    finally:
        s.stop()


def test_a_body_dense_once_parsed_is_refused_and_memory_stays_bounded(api):
    # 8 MiB of `{},` as input_data would take ~1 GB parsed (the server held 1.8 GB for 16 MiB before); it is
    # answered 400 from a pass that builds nothing. The Piston endpoint's body is bounded the same way.
    s = Server("--workers", "1")
    try:
        before = s.rss_kb("VmHWM")
        n = (8 << 20) // 3
        body = b'{"code": "result = len(input_data)", "input_data": [' + b"{}," * (n - 1) + b"{}]}"
        status, h, data = s.request("POST", "/v1/run", body)
        r = api.check("POST", "/v1/run", status, h, data)
        assert status == 400 and r["error_kind"] == "bad_input" and "once parsed" in r["error"]
        status, _, data = s.request("POST", "/api/v2/execute", body)
        assert status == 400 and "once parsed" in json.loads(data)["message"]
        grew_mb = (s.rss_kb("VmHWM") - before) / 1024
        assert grew_mb < 120, "the server's peak grew by %d MiB" % grew_mb
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 5"})
        assert status == 200 and r["result"] == 5
    finally:
        s.stop()


def two_token_server(*args):
    tokens = ["c" * 24, "d" * 24]
    f = tempfile.NamedTemporaryFile("w", suffix=".tokens", delete=False)
    f.write("%s\n%s\n" % tuple(tokens))
    f.close()
    return Server("--token-file", f.name, *args), f.name, [{"Authorization": "Bearer " + t} for t in tokens]


def test_a_request_without_a_token_is_answered_before_its_body_is_read(api):
    # A client without a token announces 16 MB and sends none of it: it gets its 401 at once (the server held
    # such bodies whole before checking the token: 16 MB per connection, unauthenticated).
    s, path, _ = two_token_server()
    try:
        sock = socket.create_connection((s.host, s.port), timeout=30 * TIME_SCALE)
        sock.sendall(b"POST /v1/run HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 16000000\r\n\r\n")
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        sock.close()
        assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    finally:
        s.stop()
        os.unlink(path)


def test_one_token_cannot_take_every_session_or_run_slot(api):
    # --max-sessions 4: each token may hold 2 (half); --max-concurrent 2: each may have 1 run in flight.
    s, path, (a, b) = two_token_server("--workers", "2", "--max-sessions", "4", "--max-concurrent", "2",
                                      "--timeout", "600")
    try:
        opened = []
        for _ in range(4):
            status, h, data = s.request("POST", "/v1/sessions", {}, a)
            api.check("POST", "/v1/sessions", status, h, data)
            if status != 201:
                break
            opened.append(json.loads(data)["id"])
        assert len(opened) == 2, opened
        e = json.loads(data)
        assert status == 429 and e["error_kind"] == "session_limit", (status, e)
        assert e["error"] == "this token's open sessions are its share (2 of the server's 4); close one first"
        # Token B still finds a session slot, and its session runs code.
        status, _, mine = s.json("POST", "/v1/sessions", {}, b)
        assert status == 201, mine
        status, _, r = s.json("POST", "/v1/sessions/%s/run" % mine["id"], {"code": "result = 6 * 7"}, b)
        assert status == 200 and r["result"] == 42, r
        # A's own session closing frees its share.
        assert s.request("DELETE", "/v1/sessions/%s" % opened.pop(), None, a)[0] == 200
        status, _, again = s.json("POST", "/v1/sessions", {}, a)
        assert status == 201, again

        # Runs: A's one run in flight is its share; B still runs.
        held = {}

        def long_run():
            held["answer"] = s.json("POST", "/v1/run", {"id": "long", "code": "import time\ntime.sleep(3600)"}, a,
                                    timeout=600)

        t = threading.Thread(target=long_run, daemon=True)
        t.start()

        def in_flight():
            text = s.request("GET", "/metrics", None, a)[2].decode()
            return "spr_runs_in_flight 1" in text

        assert wait_for(in_flight, 60)
        status, h, data = s.request("POST", "/v1/run", {"code": "result = 1"}, a)
        api.check("POST", "/v1/run", status, h, data)
        e = json.loads(data)
        assert status == 429 and e["error_kind"] == "overloaded", (status, e)
        assert e["error"] == "this token's runs in flight are its share (1 of the server's 2); retry later"
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 5"}, b)
        assert status == 200 and r["result"] == 5, r
        status = s.request("POST", "/v1/runs/long/cancel", None, a)[0]
        assert status == 200, (status, held)
        t.join(120 * TIME_SCALE)
        assert held["answer"][0] == 200 and held["answer"][2]["error_kind"] == "cancelled"
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 2"}, a)
        assert status == 200 and r["result"] == 2, r
    finally:
        s.stop()
        os.unlink(path)


def test_a_batch_runs_no_more_cases_at_once_than_its_token_share(api):
    # --runs-per-token 1 with 2 workers: token A's batch of long cases keeps one worker, so token B's run is
    # served at once; a batch that ran on every worker left B queued until its queue timeout (504).
    s, path, (a, b) = two_token_server("--workers", "2", "--max-concurrent", "4", "--runs-per-token", "1",
                                      "--queue-timeout", str(int(10 * TIME_SCALE)), "--grace", "1",
                                      "--timeout", "600")
    try:
        cases = "".join(json.dumps({"id": "c%d" % i, "code": "import time\ntime.sleep(3600)"}) + "\n"
                        for i in range(4))

        def batch():
            try:
                s.request("POST", "/v1/batch", cases, dict(a, **{"Content-Type": "application/x-ndjson"}),
                          timeout=600)
            except Exception:
                pass  # the server stops under it

        def metric(name):
            text = s.request("GET", "/metrics", None, a)[2].decode()
            return next((float(l.split()[1]) for l in text.splitlines() if l.startswith(name + " ")), 0)

        # Both workers up and idle first (a pool starts one, then the rest in the background).
        assert wait_for(lambda: metric("spr_workers_idle") >= 2, 60)
        threading.Thread(target=batch, daemon=True).start()
        assert wait_for(lambda: metric("spr_workers_busy") >= 1, 60)
        # A settle for the batch to start what it would start at once (too short a one can only hide the bug).
        time.sleep(1 * TIME_SCALE)
        assert metric("spr_workers_busy") == 1
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 5"}, b)
        assert status == 200 and r["result"] == 5, (status, r)
    finally:
        s.stop()
        os.unlink(path)


@pytest.mark.parametrize("flood", ["runs", "batch"])
def test_one_token_flooding_its_runs_cannot_starve_another_token(api, flood):
    # One worker, and token A's share lets it have 8 slow runs (or a batch of 8 slow cases) waiting for it: the
    # worker goes to the tokens in turn, so token B's one run waits for at most A's run in progress and the next.
    # First come, first served, B waited behind all of A's and its request ran out of time (504).
    slow = 4 * TIME_SCALE
    s, path, (a, b) = two_token_server("--workers", "1", "--max-concurrent", "16", "--runs-per-token", "8",
                                      "--queue-timeout", str(int(16 * TIME_SCALE)), "--grace", "1",
                                      "--timeout", "600")
    code = "import time\ntime.sleep(%r)\nresult = 'A'" % slow
    try:
        def metric(name):
            text = s.request("GET", "/metrics", None, b)[2].decode()
            return next((float(l.split()[1]) for l in text.splitlines() if l.startswith(name + " ")), 0)

        def one_run():
            try:
                s.request("POST", "/v1/run", {"code": code}, a, timeout=600)
            except Exception:
                pass  # the server stops under it

        def batch():
            cases = "".join(json.dumps({"id": "c%d" % i, "code": code}) + "\n" for i in range(8))
            try:
                s.request("POST", "/v1/batch", cases, dict(a, **{"Content-Type": "application/x-ndjson"}),
                          timeout=600)
            except Exception:
                pass

        if flood == "runs":
            for _ in range(8):
                threading.Thread(target=one_run, daemon=True).start()
            assert wait_for(lambda: metric("spr_runs_in_flight") >= 8, 60)
        else:
            threading.Thread(target=batch, daemon=True).start()
            assert wait_for(lambda: metric("spr_workers_busy") >= 1, 60)
            # A settle for the batch to queue what its share lets it (too short a one can only hide the bug).
            time.sleep(1 * TIME_SCALE)
        status, _, r = s.json("POST", "/v1/run", {"code": "result = 'B'", "policy": {"timeout_seconds": 2}}, b,
                              timeout=600)
        assert status == 200 and r["result"] == "B", (status, r)
    finally:
        s.stop()
        os.unlink(path)


def test_runs_of_two_tokens_never_share_a_worker(api):
    # In namespace mode a worker runs one party's runs one after another; two tokens are two parties. Token B's
    # run must not see what token A's run left in the worker, even when B names A's trust_domain.
    s, path, (a, b) = two_token_server("--workers", "1", "--isolation", "namespace")
    try:
        status, _, r = s.json("POST", "/v1/run", {"code": "import json\njson.seen = 'A-SECRET'\nresult = 1"}, a)
        assert status == 200 and r["ok"], r
        for policy in ({}, {"trust_domain": "tenant-a"}):
            status, _, r = s.json("POST", "/v1/run", {"code": "import json\nresult = getattr(json, 'seen', None)",
                                                      "policy": policy}, b)
            assert status == 200 and r["ok"], r
            assert r["result"] is None
        # The control: token A's next run on its own worker sees its own state (the check above can fail).
        status, _, r = s.json("POST", "/v1/run", {"code": "import json\nresult = getattr(json, 'seen', None)"}, a)
        assert status == 200 and r["result"] == "A-SECRET"
    finally:
        s.stop()
        os.unlink(path)


def test_batch_lines_and_repeats_are_bounded_before_they_cost_memory(api):
    s = Server("--workers", "1")
    try:
        before = s.rss_kb("VmHWM")
        n = (4 << 20) // 3
        dense = '{"id": "dense", "code": "result = 1", "input_data": [' + "{}," * (n - 1) + "{}]}"
        big = json.dumps({"id": "big", "code": "#" * (2 << 20) + "\nresult = 1"})
        headers = {"Content-Type": "application/x-ndjson"}
        status, _, data = s.request("POST", "/v1/batch", batch_body([dense, {"id": "ok", "code": "pass"}]), headers)
        assert status == 200
        lines = [json.loads(x) for x in data.decode().splitlines() if x]
        # The dense line's id cannot be read without building it: answered in its place with no id.
        assert [x.get("id") for x in lines[:2]] == [None, "ok"]
        assert lines[0]["error_kind"] == "bad_input" and "once parsed" in lines[0]["error"]
        assert lines[1]["passed"] is True
        status, _, data = s.request("POST", "/v1/batch?repeat=40", batch_body([big, {"id": "ok", "code": "pass"}]),
                                    headers)
        assert status == 200
        lines = [json.loads(x) for x in data.decode().splitlines() if x]
        assert lines[0]["id"] == "big" and lines[0]["error_kind"] == "bad_input" and "repeats" in lines[0]["error"]
        assert lines[1]["passed"] is True
        grew_mb = (s.rss_kb("VmHWM") - before) / 1024
        assert grew_mb < 120, "the server's peak grew by %d MiB" % grew_mb
    finally:
        s.stop()


def test_a_body_of_small_numbers_is_counted_with_its_arrays_growth(api):
    # 8 MiB of `1,` is 4 M array elements: 64 MB of values in a vector that grows by doubling (628 MB seen for
    # 16 MiB when each was counted once). It is refused unparsed.
    s = Server("--workers", "1")
    try:
        before = s.rss_kb("VmHWM")
        n = (8 << 20) // 2
        body = b'{"code": "result = len(input_data)", "input_data": [' + b"1," * (n - 1) + b"1]}"
        status, _, data = s.request("POST", "/v1/run", body)
        assert status == 400 and "once parsed" in json.loads(data)["error"]
        grew_mb = (s.rss_kb("VmHWM") - before) / 1024
        assert grew_mb < 120, "the server's peak grew by %d MiB" % grew_mb
    finally:
        s.stop()


def test_every_documented_operation_was_checked(api):
    missing = api.operations() - api.checked
    assert not missing, missing


def test_files_in_and_out_of_a_run(server, api):
    # The shared server's policy has no scratch_dir: files are refused, not dropped.
    status, _, e = call(server, api, "POST", "/v1/run", {"code": "1", "files": {"a.txt": "x"}})
    assert status == 400 and e["error_kind"] == "bad_input" and "scratch_dir" in e["error"]
    s = Server("--workers", "1", "--scratch-dir", "--timeout", "60")
    try:
        status, _, r = call(s, api, "POST", "/v1/run", {
            "code": "import pathlib\nd = pathlib.Path('in.bin').read_bytes()\npathlib.Path('out.bin').write_bytes(d[::-1])",
            "files": {"in.bin": {"base64": "AP8="}}, "collect": ["*.bin"]})
        assert status == 200 and r["ok"], r
        assert r["files"] == {"in.bin": {"base64": "AP8="}, "out.bin": {"base64": "/wA="}}
        status, _, e = call(s, api, "POST", "/v1/run", {"code": "1", "files": {"../a": "x"}})
        assert status == 400 and "'..' component" in e["error"]
        # Piston: the files after the first go into the run directory beside it.
        status, _, p = call(s, api, "POST", "/api/v2/execute", {
            "language": "python", "version": "*",
            "files": [{"content": "import pathlib\nprint(pathlib.Path('data.txt').read_text())"},
                      {"name": "data.txt", "content": "aGk=", "encoding": "base64"}]})
        assert status == 200 and p["run"]["stdout"] == "hi\n", p
    finally:
        assert s.stop() == 0


def test_max_connections_the_descriptor_limit_cannot_hold_is_refused_at_start():
    # Found by a red team: with more connections allowed than descriptors, accepts failed with EMFILE and
    # the accept loop spun on both CPUs. The server now refuses such a setting before it listens.
    import resource
    import subprocess
    from spr_http import CLI

    def low_limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))

    p = subprocess.run([CLI, "http", "--listen", "127.0.0.1:0", "--max-connections", "5000"], capture_output=True,
                       text=True, timeout=60 * TIME_SCALE, preexec_fn=low_limit)
    assert p.returncode != 0, p.stderr
    assert "descriptors" in p.stderr and "listening" not in p.stderr
